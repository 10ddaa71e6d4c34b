// linear, zero and error (core_targets.cpp).
#pragma once

#include "device/target.h"

namespace udm {
void register_core_targets(TargetRegistry& r);
}  // namespace udm
