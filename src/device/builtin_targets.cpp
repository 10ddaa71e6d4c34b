// The registry of every target udm ships. Kept apart from udm_device because
// it links every feature library (which themselves depend on udm_device).
#include "device/target.h"

namespace udm {

TargetRegistry& TargetRegistry::builtin() {
  static TargetRegistry* r = [] {
    auto* reg = new TargetRegistry();
    register_core_targets(*reg);
    register_update_targets(*reg);
    register_snapshot_targets(*reg);
    register_bow_targets(*reg);
    register_overlaybd_targets(*reg);
    return reg;
  }();
  return *r;
}

}  // namespace udm
