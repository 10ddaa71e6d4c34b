// Internal to the update target: one maker per diff format, called by the
// factory in target.cpp (the one place that chooses between them) once the
// table line is read, both devices are open and the format version is known.
#pragma once

#include <string>
#include <vector>

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

// The copy-back job's messages and report, the same for both formats: job
// messages go to `job` (refused when there is no copy-back), anything else to
// the read-only base (`base` is ReadOnlyTarget::message of the caller).
template <class BaseMessage>
Result<std::string> copy_back_message(BackgroundJob& job, bool enabled, const std::vector<std::string>& args,
                                      BaseMessage base) {
  if (!BackgroundJob::is_job_message(args)) return base(args);
  if (!enabled) return Invalid("update: no background copy-back to control (no_bg_update)");
  return job.message(args, "update");
}
inline std::vector<JobInfo> copy_back_jobs(const BackgroundJob& job, bool enabled) {
  if (!enabled) return {};
  return {job.info()};
}

// Format v0 (format_v0.h), target_v0.cpp.
Result<TargetPtr> make_update_target_v0(UpdateDevices d);
// Format v1 (format_v1.h), target_v1.cpp.
Result<TargetPtr> make_update_target_v1(UpdateDevices d);

}  // namespace udm::update
