// Writes Android COW files (v2 or v3) that turn OLD into NEW: COPY for
// moved blocks (exact content match), XOR for similar ones (the same place
// or next to a COPY's source, when it compresses better than REPLACE),
// REPLACE and ZERO; sequence data holding a merge order that is safe in
// place (COPY/XOR cycles are broken by turning one op into REPLACE).
// An XOR that reads its own block needs the scratch area (udm's merge stashes
// its old bytes there), so such a COW gets Android's 2 MiB scratch area.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "android_cow/acow_format.h"

namespace udm::acow {

struct WriterOptions {
  int version = 3;              // 2 or 3
  Comp compression = Comp::Zstd;
  uint32_t block_size = 4096;
  uint32_t unit = 4096;         // v3: largest compression unit (block_size << 0..6)
  uint32_t cluster_ops = 1024;  // v2: ops per cluster (>= 2)
  bool xor_ops = true;
  int zstd_level = 0;           // 0: Android's default (3)
};

struct WriterStats {
  uint64_t blocks = 0, changed = 0, copy = 0, xor_ops = 0, replace_ops = 0, replace_blocks = 0, zero = 0;
  uint64_t cycles_broken = 0, self_xor = 0, sequence = 0, cow_bytes = 0;
  uint64_t xor_payload = 0, replace_payload = 0, scratch = 0;  // bytes in the file
};

// The COW's bytes. Both images must be the same size, a multiple of the block
// size (the format has no notion of a resized image).
Result<std::vector<uint8_t>> make_cow(std::span<const uint8_t> old_img, std::span<const uint8_t> new_img,
                                      const WriterOptions& opts, WriterStats* stats = nullptr);
// The same from and to files (written to OUT.tmp, synced, renamed).
Result<WriterStats> make_cow_file(const std::string& old_path, const std::string& new_path, const std::string& out_path,
                                  const WriterOptions& opts);

}  // namespace udm::acow
