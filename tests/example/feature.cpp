// Feature "example" (test-only): registers the example-xor target.
#include "device/feature.h"
#include "example/xor_target.h"

namespace udm {
void register_feature_example(Features& f) {
  f.targets.add("example-xor", example::make_xor, "example-xor <device> <offset_sectors> <key_hex_byte>");
}
}  // namespace udm
