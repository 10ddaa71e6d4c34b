#include "cli/cli_common.h"
#include "device/target.h"
#include "update/target.h"

namespace udm {
void register_update_targets(TargetRegistry& r) {
  r.add("update", make_update_target, "update <system_dev> <diff_dev> <#opt_args> [no_bg_update]");
}
}  // namespace udm
