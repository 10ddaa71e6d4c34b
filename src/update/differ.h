// update-diff: compare two images block by block and write a v0 diff of the
// changed blocks. Streams both images (never holds one in memory) and
// compresses chunks on both cores.
#pragma once

#include <string>

#include "update/format.h"

namespace udm::update {

struct DiffOptions {
  std::string algorithm = "zstd";
  int level = 0;               // 0 = algorithm default
  uint32_t block_size = 4096;  // power of two, 512..2^31
  uint32_t chunk_blocks = 16;
  unsigned threads = 2;
  bool progress = true;        // progress bar on a terminal
};

struct DiffStats {
  uint64_t image_bytes = 0;
  uint64_t blocks = 0;
  uint64_t changed_blocks = 0;
  uint64_t chunks = 0;
  uint64_t diff_bytes = 0;
  double seconds = 0;
};

Result<DiffStats> make_diff(const std::string& old_path, const std::string& new_path,
                            const std::string& out_path, const DiffOptions& opts);

}  // namespace udm::update
