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
  Params p;
  p.hash_type = sb->hash_type;
  p.algorithm = sb->algorithm;
  p.data_block_size = sb->data_block_size;
  p.hash_block_size = sb->hash_block_size;
  p.data_blocks = sb->data_blocks;
  p.salt = sb->salt;
  if (!compute_geometry(p).ok()) __builtin_trap();
  return 0;
}
