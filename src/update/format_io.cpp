#include "update/format_io.h"

#include <fmt/format.h>

namespace udm::update {

Result<int> diff_version(BlockDevice& diff) {
  if (diff.size() < kMinDiffBytes)
    return Corrupt(fmt::format("diff is {} bytes, shorter than a superblock", diff.size()));
  uint8_t b[kVersionProbeBytes];
  UDM_TRY(diff.read(0, std::span<uint8_t>(b, sizeof(b))));
  return probe_diff_version(b, diff.size());
}

}  // namespace udm::update
