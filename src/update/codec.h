// Compression as the kernel crypto API names it, with its exact stream
// formats: "none", "zstd" (zstd frames), "lz4" (one raw LZ4 block),
// "deflate" (raw deflate, no zlib header), so diffs interoperate with dm-update.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm::update {

enum class Algo { None, Zstd, Lz4, Deflate };

Result<Algo> algo_from_name(const std::string& name);
const char* algo_name(Algo a);

// level: 0 = the algorithm's default.
Result<std::vector<uint8_t>> compress(Algo a, std::span<const uint8_t> in, int level);
// Decompress into out (capacity = out.size()); returns the decompressed length.
Result<size_t> decompress(Algo a, std::span<const uint8_t> in, std::span<uint8_t> out);

}  // namespace udm::update
