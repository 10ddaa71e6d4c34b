// Format v1 over devices: the I/O around the pure code of format_v1.h —
// loading a diff, reading and decoding its payloads (DELTA frames read their
// references from the device holding the old blocks), computing one
// operation's new block, and the copy-back's checkpoint and stash writes.
#pragma once

#include <array>
#include <functional>
#include <span>

#include "device/block_device.h"
#include "update/format_v1.h"

namespace udm::update {

Result<V1Index> load_v1(BlockDevice& diff);

// The bytes of new-image block `block` (one block into out) as the caller's
// device shows them now: for a chunk reference to a COPY's block (flag
// CHUNK_NEW_REFS), the applied block, or the COPY computed before it is.
using V1NewBlockReader = std::function<Status(uint64_t block, std::span<uint8_t> out)>;
// Decoded REPLACE chunk i (or XOR chunk i with xor=true) into out (>= chunk_blocks blocks).
// A REPLACE chunk with reference blocks (flag CHUNK_REFS) reads them from
// `old` (the intact old blocks; required then), and its references to the
// new image (flag CHUNK_NEW_REFS) through `new_block` (required then).
Status v1_read_chunk(BlockDevice& diff, const V1Index& idx, size_t ci, std::span<uint8_t> out, bool xor_chunk = false,
                     BlockDevice* old = nullptr, const V1NewBlockReader* new_block = nullptr);
// The reader for v1_compute's view: `done` operations applied on `old`.
V1NewBlockReader v1_new_block_reader(BlockDevice& diff, BlockDevice& old, const V1Index& idx, uint64_t done);
// Decode one DELTA frame (frames[fi].blocks blocks) reading its refs from
// `old` (the intact old blocks).
Status v1_read_delta(BlockDevice& diff, BlockDevice& old, const V1Index& idx, size_t fi, std::span<uint8_t> out);
// Compute the new content of op `i` from the diff and the still-intact old
// blocks (REPLACE decodes its whole chunk; callers with a cache do better).
// `done`: operations applied on `old` so far (a COPY of a parked block reads
// the parking block once its SAVE is applied, the original before).
Status v1_compute(BlockDevice& diff, BlockDevice& old, const V1Index& idx, size_t i, std::span<uint8_t> out,
                  uint64_t done = 0);

// Persist the checkpoint (one 512-byte header write with FUA). With a
// stash block, it is written and flushed first and the record names it as
// the new content of operation `done` (used when that operation reads the
// block it overwrites).
Status v1_write_checkpoint(BlockDevice& diff, uint32_t state, uint64_t done, std::span<const uint8_t> stash = {});
// Persist the record of a logged batch (state 2, FUA): operations [done,
// end) have their new blocks (CRC `crc`) in the batch's scratch blocks.
Status v1_write_batch_checkpoint(BlockDevice& diff, uint64_t done, uint64_t end, uint32_t crc);
// Finish a logged batch a power cut interrupted (the diff's record is state
// 2): read its blocks back from the scratch blocks, check them against the
// record's CRC, write them to their destinations, flush, record "end done"
// (state 1). idx's checkpoint fields are updated. Nothing is written when
// the check fails.
Status v1_finish_logged_batch(BlockDevice& diff, BlockDevice& sys, V1Index& idx);
// True (and the block in out) if the checkpoint holds a valid stash for op ckpt_done.
Result<bool> v1_read_stash(BlockDevice& diff, const V1Index& idx, std::span<uint8_t> out);

// Flag VERITY_TREE: the tree regenerated from the new image's data blocks,
// read from `new_image` (the update device itself, or the system device
// once every operation is applied), its root checked against the record's
// (a mismatch is an error naming both roots); the region's bytes
// (v1_verity_region). Reads data blocks only, never the region.
Result<std::vector<uint8_t>> v1_regenerate_verity(const V1Index& idx, BlockDevice& new_image, unsigned threads = 2);

// SHA-256 of the first `bytes` bytes of a device.
Result<std::array<uint8_t, 32>> sha256_device(BlockDevice& d, uint64_t bytes);

}  // namespace udm::update
