// libFuzzer: the v3 COW parser (fixed regions, resume points, units), view and merge.
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { return udm::acow::fuzz_cow(data, size, 3); }
