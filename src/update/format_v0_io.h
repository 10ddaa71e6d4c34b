// Format v0 over a device: the I/O around the pure code of format_v0.h.
#pragma once

#include <span>
#include <vector>

#include "device/block_device.h"
#include "update/format_v0.h"

namespace udm::update {

// Read and validate superblock + directory from a diff device. Every field
// is checked; errors name the field. Nothing is written.
Result<DiffIndex> load_diff(BlockDevice& diff);
// Read chunk `c` and decompress it into `out` (size >= chunk_bytes()); checks
// it covers every block the directory uses.
Status read_chunk(BlockDevice& diff, const DiffIndex& idx, size_t c, std::vector<uint8_t>& scratch,
                  std::span<uint8_t> out);
// Persist progress into the superblock's pad2 (one sector written with FUA).
Status write_progress(BlockDevice& diff, const DiffIndex& idx, uint64_t entries_done);

}  // namespace udm::update
