// Fuzzes the verity superblock parser: an accepted superblock re-encodes to
// the same bytes and has a valid geometry.
#include <cstdint>
#include <cstring>

#include "verity/format.h"

using namespace udm::verity;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto sb = decode_superblock(std::span(data, size));
  if (!sb.ok()) return 0;
  auto again = encode_superblock(*sb);
  if (memcmp(again.data(), data, kSuperblockSize) != 0) __builtin_trap();
  if (!compute_geometry(params_of(*sb)).ok()) __builtin_trap();
  return 0;
}
