// example-xor (xor_target.cpp): a test-only target.
#pragma once

#include "device/target.h"

namespace udm::example {
Result<TargetPtr> make_xor(const TargetParams& p);
}  // namespace udm::example
