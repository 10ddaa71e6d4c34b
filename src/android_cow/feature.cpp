// Feature "android_cow": Android's Virtual A/B COW format (v2, v3): the view
// and merge targets (targets.cpp), the tools (cli.cpp) and the writer behind
// `udm update-diff --format android-cow-v2|v3` (writer.cpp).
#include "android_cow/targets.h"
#include "device/feature.h"

namespace udm {
void register_feature_android_cow(Features& f) {
  f.targets.add("android-cow", acow::make_view_target, "android-cow <base_dev> <cow_dev> [<#opt_args> [label=N]]");
  f.targets.add("android-cow-merge", acow::make_merge_target,
                "android-cow-merge <base_dev> <cow_dev> [<#opt_args> [label=N] [paused] [throttle=<MiB/s>|auto|off]]");
}
}  // namespace udm
