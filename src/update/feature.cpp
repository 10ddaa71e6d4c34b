// Feature "update": the update target (seed 000) and its verbs (cli.cpp).
#include "device/feature.h"
#include "update/target.h"

namespace udm {
void register_feature_update(Features& f) {
  f.targets.add("update", make_update_target, "update <system_dev> <diff_dev> <#opt_args> [no_bg_update] [paused] [throttle=<MiB/s>|auto|off]");
}
}  // namespace udm
