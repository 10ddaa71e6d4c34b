// The `update` target (seed 000): presents the new image at once. Reads of
// blocks the diff changes are served from the diff (chunks decompressed once
// into a cache shared by concurrent readers), other reads pass to the system
// device; writes are refused. A background thread copies the changed blocks
// onto the system device; status is "<copied> <total>" (directory entries).
//
// Table: update <system_dev> <diff_dev> <#opt_args> [no_bg_update]
#pragma once

#include "device/target.h"

namespace udm {
Result<TargetPtr> make_update_target(const TargetParams& p);
// The same over a v1 diff (target_v1.cpp); make_update_target dispatches by version.
Result<TargetPtr> make_update_target_v1(DevicePtr sys, DevicePtr diff, const std::string& diff_name, uint64_t length,
                                        bool bg);
}  // namespace udm
