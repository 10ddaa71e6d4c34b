// The two targets, in the shape of dm-snapshot's pair (docs/android-cow.md):
//
//   android-cow <base_dev> <cow_dev> [<#opt_args> [label=N]]
//     read-only view of the new image; status "<ops> <replace> <copy> <xor> <zero>"
//   android-cow-merge <base_dev> <cow_dev> [<#opt_args> [label=N] [paused] [throttle=<MiB/s>|auto|off]]
//     the same view while a background thread merges the COW into the base
//     in Android's merge order (crash-safe, resumable); status "<merged> <total>";
//     the merge is a background job (device/background_job.h): messages
//     pause, resume, throttle <MiB/s>|auto|off
#pragma once

#include "device/target.h"

namespace udm::acow {
Result<TargetPtr> make_view_target(const TargetParams& p);
Result<TargetPtr> make_merge_target(const TargetParams& p);
}  // namespace udm::acow
