// Feature "targets": device-mapper's core targets linear, zero and error.
#include "device/feature.h"
#include "targets/core_targets.h"

namespace udm {
void register_feature_targets(Features& f) { register_core_targets(f.targets); }
}  // namespace udm
