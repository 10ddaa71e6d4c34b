// Format v1 parser (header, checkpoint, metadata, order check) from bytes,
// which its device wrapper must agree with, then every operation computed
// against a fixed old image: any file is either refused with a message or
// yields an index whose payload lies inside the file and whose order never
// reads a block after it was overwritten (REPLACE chunk references included).
#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <cstring>

#include "io/memory_device.h"
#include "update/format.h"
#include "update/format_v1_io.h"

using namespace udm::update;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> file(data, size);
  if (size >= kVersionProbeBytes) (void)probe_diff_version(file, size);
  udm::MemoryDevice dev(std::vector<uint8_t>(data, data + size), true);
  auto idx = load_v1_bytes(file);
  auto via_dev = load_v1(dev);
  if (idx.ok() != via_dev.ok()) std::abort();
  if (!idx.ok()) {
    if (idx.status().message().empty() || idx.status().message() != via_dev.status().message()) std::abort();
    return 0;
  }
  if (idx->ops.size() != via_dev->ops.size() || idx->frames.size() != via_dev->frames.size()) std::abort();
  for (const auto& c : idx->chunks)
    if (c.offset < idx->h.data_offset || c.offset + c.length > size) std::abort();
  for (const auto& c : idx->xchunks)
    if (c.offset < idx->h.data_offset || c.offset + c.length > size) std::abort();
  for (const auto& f : idx->frames)
    if (f.offset < idx->h.data_offset || f.offset + f.length > size || f.refs.empty()) std::abort();
  for (size_t i = 0; i < idx->ops.size(); i++) {
    bool save = idx->ops[i].type == OpType::Save;
    if (!save && idx->find(idx->ops[i].dest) != static_cast<int64_t>(i)) std::abort();
    if (save && idx->find(idx->ops[i].dest) <= static_cast<int64_t>(i)) std::abort();
    if (idx->last_reader[i] >= static_cast<int64_t>(i)) std::abort();
    // Old content is read only inside the old image; new blocks past its end all have an operation.
    if (idx->ops[i].type == OpType::Xor && idx->ops[i].src + idx->block_size() > idx->old_bytes()) std::abort();
    if (idx->ops[i].type == OpType::Save && idx->ops[i].src >= idx->old_blocks()) std::abort();
    if (idx->ops[i].type == OpType::Copy && idx->save_of(idx->ops[i].src) < 0 && idx->ops[i].src >= idx->old_blocks())
      std::abort();
  }
  if (idx->ops.size() > v1_max_ops(idx->h.image_blocks)) std::abort();
  // Without a stash, every operation that reads its own block finds a
  // scratch block for a batch of its own (the copy-back relies on it).
  if (!idx->h.stash_blocks) {
    const V1ScratchPlanner planner(*idx);
    // (Asked per operation here: the loader's one-pass check must agree.)
    for (size_t i = 0; i < idx->ops.size(); i++)
      if (v1_reads_own_block(*idx, idx->ops[i]) && planner.scratch(i, i + 1, 1, nullptr, kV1SelfScratchScan).empty())
        std::abort();
  }
  for (uint64_t b = idx->old_blocks(); b < idx->h.image_blocks; b++)
    if (idx->find(b) < 0 && !idx->generated(b)) std::abort();
  // A regenerated verity area (flag VERITY_TREE): inside the new image,
  // after the data its tree covers, written by no operation.
  if (idx->verity.has_value() != (idx->h.verity_size != 0)) std::abort();
  if (idx->verity) {
    const auto& v = *idx->verity;
    if (idx->region_first >= idx->region_end || idx->region_end > idx->h.image_blocks) std::abort();
    if (v.sb.data_blocks * v.sb.data_block_size > v.hash_offset) std::abort();
    for (const auto& op : idx->ops)
      if (idx->generated(op.dest)) std::abort();
  }
  for (const auto& f : idx->frames)
    for (uint64_t r : f.refs)
      if (r >= idx->old_blocks()) std::abort();
  // REPLACE chunk references (flag CHUNK_REFS): inside the old image,
  // increasing, bounded, and never overwritten (or parked over) before a
  // block of their chunk is applied; with flag CHUNK_NEW_REFS (only with
  // CHUNK_REFS) also old_blocks + a new-image block whose operation is a COPY.
  if (!idx->h.chunk_refs)
    for (const auto& c : idx->chunks)
      if (!c.refs.empty()) std::abort();
  if (idx->h.chunk_new_refs && !idx->h.chunk_refs) std::abort();
  const uint64_t ref_end = idx->old_blocks() + (idx->h.chunk_new_refs ? idx->h.image_blocks : 0);
  for (const auto& c : idx->chunks) {
    if (c.refs.size() > v1_max_chunk_refs(idx->h.block_bits)) std::abort();
    for (size_t k = 0; k < c.refs.size(); k++) {
      if (c.refs[k] >= ref_end || (k && c.refs[k] <= c.refs[k - 1])) std::abort();
      if (idx->new_ref(c.refs[k])) {
        const int64_t e = idx->find(c.refs[k] - idx->old_blocks());
        if (e < 0 || idx->ops[static_cast<size_t>(e)].type != OpType::Copy) std::abort();
      }
    }
  }
  for (size_t i = 0; i < idx->ops.size(); i++) {
    if (idx->ops[i].type != OpType::Replace) continue;
    for (uint64_t r : idx->chunks[idx->ops[i].index / idx->h.chunk_blocks].refs) {
      if (idx->new_ref(r)) continue;  // (readable at every moment: checked above)
      int64_t w = idx->find(r), sv = idx->save_of(r);
      if ((w >= 0 && w <= static_cast<int64_t>(i)) || (sv >= 0 && sv <= static_cast<int64_t>(i))) std::abort();
    }
  }
  const uint64_t bs = idx->block_size();
  const uint64_t dev_bytes = std::max(idx->old_bytes(), idx->new_bytes());
  if (dev_bytes > (64u << 20)) return 0;  // keep the old image small
  udm::MemoryDevice old(std::vector<uint8_t>(dev_bytes, 0x5a), true);
  std::vector<uint8_t> out(bs);
  for (size_t i = 0; i < idx->ops.size() && i < 256; i++) (void)v1_compute(dev, old, *idx, i, out);
  std::vector<uint8_t> stash(bs);
  (void)v1_read_stash(dev, *idx, stash);
  if (idx->verity && idx->verity->sb.data_blocks * idx->verity->sb.data_block_size <= (1u << 20)) {
    // Regenerating over the fixed image: its root will not match; an error, never a crash.
    auto region = v1_regenerate_verity(*idx, old, 1);
    if (region.ok() && region->size() != idx->region_blocks() * bs) std::abort();
  }
  return 0;
}
