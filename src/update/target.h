// The `update` target (seed 000): presents the new image at once. Reads of
// blocks the diff changes are served from the diff, other reads pass to the
// system device; writes are refused. A background thread copies the changed
// blocks onto the system device; status is "<copied> <total>".
//
// Table: update <system_dev> <diff_dev> <#opt_args> [no_bg_update] [paused] [throttle=<MiB/s>|auto|off]
//
// The copy-back is a background job (device/background_job.h): messages
// pause, resume, throttle <MiB/s>|auto|off; `paused` and `throttle=` in the
// table set the same policy from the start.
//
// The factory reads the table line and opens the devices, then hands over to
// the target of the diff's format (target_versions.h): v0 (target_v0.cpp) or
// v1 (target_v1.cpp).
#pragma once

#include "device/target.h"

namespace udm {
Result<TargetPtr> make_update_target(const TargetParams& p);
}  // namespace udm
