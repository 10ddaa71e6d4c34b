// Internal to the update target: one maker per diff format, called by the
// factory in target.cpp (the one place that chooses between them) once the
// table line is read, both devices are open and the format version is known.
#pragma once

#include <string>

#include "device/background_job.h"
#include "device/target.h"

namespace udm::update {

struct UpdateDevices {
  DevicePtr sys, diff;
  std::string diff_name;  // as in the table line, for messages
  uint64_t length = 0;    // the segment
  bool bg = true;         // background copy-back (no no_bg_update)
  JobPolicy policy;       // paused, throttle=... (device/background_job.h)
};

// Format v0 (format_v0.h), target_v0.cpp.
Result<TargetPtr> make_update_target_v0(UpdateDevices d);
// Format v1 (format_v1.h), target_v1.cpp.
Result<TargetPtr> make_update_target_v1(UpdateDevices d);

}  // namespace udm::update
