// update-diff: compare two images block by block and write a v0 diff of the
// changed blocks. Streams both images (never holds one in memory) and
// compresses chunks on both cores.
#pragma once

#include <cstdint>
#include <string>

#include "util/status.h"

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

// Format v1 (format_v1.h): ZERO / COPY / REPLACE / DELTA operations in a
// conflict-free order. Both images are mapped (the page cache holds them).
struct DiffV1Options {
  int level = 19;
  uint32_t block_size = 4096;
  uint32_t chunk_blocks = 256;  // REPLACE blocks per chunk (decoded whole on a read)
  unsigned threads = 2;
  bool progress = true;
  bool delta = true;      // try DELTA against similar old blocks
  uint32_t neighbourhood = 8;  // new blocks each side searched for COPY anchors
  uint32_t anchor_blocks = 6;  // old blocks sharing content anchors used as references
  uint32_t delta_group = 16;   // DELTA blocks compressed together in one frame (1..32)
  bool zero_parking = true;    // SAVE may park a block in zero free space (restored by a ZERO operation)
};

struct DiffV1Stats {
  uint64_t image_bytes = 0, blocks = 0, changed_blocks = 0;  // the new image's bytes and blocks
  uint64_t old_blocks = 0;                                   // the old image's blocks
  uint64_t zero = 0, copy = 0, replace = 0, delta = 0, delta_frames = 0, xor_ops = 0, xchunks = 0;
  uint64_t converted = 0;  // COPY/DELTA turned into REPLACE to break cycles
  uint64_t trimmed = 0;    // DELTA that dropped the references closing a cycle
  uint64_t saves = 0, save_ops = 0;  // COPY cycles broken by saving the block (SAVE operations)
  uint64_t zero_parks = 0;  // of those, parked in free zero blocks (each adds a ZERO operation)
  uint64_t ops = 0;        // operations in the diff (changed blocks + SAVE)
  uint64_t barriers = 0;   // checkpoints the copy-back needs for the order (at least)
  uint64_t stash_ops = 0;  // DELTA/XOR operations that read their own block
  uint64_t chunks = 0, diff_bytes = 0, meta_bytes = 0;
  double seconds = 0;
};

Result<DiffV1Stats> make_diff_v1(const std::string& old_path, const std::string& new_path,
                                 const std::string& out_path, const DiffV1Options& opts);

}  // namespace udm::update
