#include "update/format.h"

#include <fmt/format.h>

#include <cstring>

namespace udm::update {

bool has_diff_magic(std::span<const uint8_t> head) {
  return head.size() >= sizeof(kDiffMagic) && std::memcmp(head.data(), kDiffMagic, sizeof(kDiffMagic)) == 0;
}

Result<int> probe_diff_version(std::span<const uint8_t> head, uint64_t file_size) {
  if (file_size < kMinDiffBytes) return Corrupt(fmt::format("diff is {} bytes, shorter than a superblock", file_size));
  if (head.size() < kVersionProbeBytes) return Invalid("probe_diff_version: fewer than 16 bytes given");
  if (!has_diff_magic(head)) return Corrupt("superblock magic: not an update diff (want \"update\\0\")");
  if (head[8] == 0) return 0;
  if (head[8] == 1) return 1;
  return Corrupt(fmt::format("superblock version: {} is not supported (this reader knows 0 and 1)", head[8]));
}

}  // namespace udm::update
