// Feature "bow": backup-on-write (seeds 001, 002) and bow-restore (cli.cpp).
#include "bow/bow_target.h"
#include "device/feature.h"

namespace udm {
void register_feature_bow(Features& f) {
  f.targets.add("bow", bow::make_bow_target, "bow <dev> [<#opt_args> on_full=fail|drop block_size=N]");
}
}  // namespace udm
