// update-diff: the two generators.
//
//  * make_diff (format v0, diff_v0.cpp) compares two images block by block
//    and writes the changed blocks; it streams both images (never holds one
//    in memory) and compresses chunks on both cores.
//  * make_diff_v1 (format v1, diff_v1*.cpp) describes every changed block by
//    an operation (moves, similar blocks) in an order safe to apply in place.
//
// Both write through a GrowFile (io/grow_file.h) in diff_output.h's order: a
// power cut while a diff is written leaves a file that no loader accepts, or
// the whole diff. The path versions open the output only once the diff is
// known to be valid (v1) or the images are (v0).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "device/block_device.h"
#include "io/grow_file.h"
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
// The same over devices holding the images, into `out`.
Result<DiffStats> make_diff(BlockDevice& old_img, BlockDevice& new_img, GrowFile& out, const DiffOptions& opts);

// Format v1 (format_v1.h): ZERO / COPY / REPLACE / XOR / DELTA / SAVE
// operations in a conflict-free order. Both images are mapped (the page
// cache holds them).
struct DiffV1Options {
  int level = 19;
  uint32_t block_size = 4096;
  uint32_t chunk_blocks = 256;  // REPLACE blocks per chunk (decoded whole on a read)
  unsigned threads = 2;
  bool progress = true;
  bool delta = true;      // try DELTA against similar old blocks
  uint32_t neighbourhood = 8;  // new blocks each side searched for COPY anchors
  uint32_t anchor_blocks = 6;  // old blocks sharing content anchors used as references
  uint32_t delta_group = 32;   // DELTA blocks compressed together in one frame (1..32)
  bool zero_parking = true;    // SAVE may park a block in zero free space (restored by a ZERO operation)
  bool chunk_refs = true;      // REPLACE chunks compressed against old reference blocks (flag CHUNK_REFS)
  bool chunk_new_refs = true;  // ... and moved old blocks at their new places (flag CHUNK_NEW_REFS)
  // Carry the stash block whenever an operation reads its own block; by
  // default only when one of them finds no scratch block (kV1SelfScratchScan).
  bool stash_always = false;
  // NEW carries a dm-verity superblock and tree at this byte offset
  // (veritysetup --hash-offset): the diff leaves the hash area out and
  // records how the device regenerates it (flag VERITY_TREE). UINT64_MAX: no.
  uint64_t verity_hash_offset = UINT64_MAX;
  std::vector<uint8_t> verity_root;  // if set: the root the regenerated tree must have (the signed one)
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
  uint64_t stash_blocks = 0;  // the diff's stash (0 or 1 block): only if one of them finds no scratch block
  uint64_t chunks = 0, diff_bytes = 0, meta_bytes = 0;
  uint64_t chunk_ref_blocks = 0;  // reference blocks listed by REPLACE chunks (all chunks)
  uint64_t chunk_new_ref_blocks = 0;  // ... of them, COPY blocks of the new image (flag CHUNK_NEW_REFS)
  uint64_t verity_blocks = 0;     // blocks of the hash area the device regenerates (flag VERITY_TREE)
  double seconds = 0;
};

Result<DiffV1Stats> make_diff_v1(const std::string& old_path, const std::string& new_path,
                                 const std::string& out_path, const DiffV1Options& opts);
// The same over images in memory, into `out`.
Result<DiffV1Stats> make_diff_v1(std::span<const uint8_t> old_img, std::span<const uint8_t> new_img, GrowFile& out,
                                 const DiffV1Options& opts);

}  // namespace udm::update
