// The five compressions of Android's COW format, with its exact stream
// formats (README §6.1): gz = a zlib stream (RFC 1950), brotli = a raw
// brotli stream, lz4 = one raw LZ4 block, zstd = a zstd frame.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "android_cow/acow_format.h"

namespace udm::acow {

// Decodes `in` into exactly out.size() bytes; anything else is an error.
Status decompress(Comp c, std::span<const uint8_t> in, std::span<uint8_t> out);
// Compresses with Android's default levels (gz 9, brotli 11, zstd 3), or
// zstd at `zstd_level` (> 0; any level decodes with Android's reader).
Result<std::vector<uint8_t>> compress(Comp c, std::span<const uint8_t> in, int zstd_level = 0);

}  // namespace udm::acow
