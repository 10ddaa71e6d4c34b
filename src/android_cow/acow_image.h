// A parsed COW over its base: the snapshot view (README §6.2) and the
// in-place merge (§6.3), shared by the two targets and the offline tool.
//
// View: every target block maps to the op writing it (check_ops refuses two);
// an unmapped block, or one whose op is already merged, reads the base; an
// unmerged one is computed from the COW over the base. REPLACE units and XOR
// payloads are decoded once into io/block_cache.h's shared cache.
//
// Merge: ops are applied in Android's merge order (sequence data honoured),
// in batches. A batch never holds an op that overwrites a block an earlier op
// of the batch reads, so after a power cut the whole batch can be redone from
// the base: a valid order already guarantees that no op reads a block an
// earlier op wrote. After a batch: flush the base, then store the count of
// merged ops in the COW header's num_merge_ops (as snapuserd does) and flush
// the COW. A restart resumes at num_merge_ops. Ops that read their own block
// (an XOR whose source overlaps its target) are not idempotent: udm stashes
// the old bytes of every such op of a batch in one record in the COW's
// scratch area first (a record found after a cut fixes the batch to redo),
// or refuses to merge a COW without one (docs/android-cow.md).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>

#include "android_cow/acow_format.h"
#include "io/block_cache.h"

namespace udm::acow {

class CowImage {
 public:
  // `cow` is kept open for payload reads. `want_merge`: the merge order must
  // be computable and safe (a view without it only needs it when the base is
  // already partly merged).
  static Result<std::shared_ptr<CowImage>> open(DevicePtr cow, uint64_t base_bytes, uint64_t view_bytes,
                                                std::optional<uint64_t> label, bool want_merge);
  ~CowImage();

  const CowFile& file() const { return f_; }
  uint32_t block_size() const { return f_.block_size(); }
  uint64_t view_bytes() const { return view_bytes_; }

  // [off, off + buf.size()) of the new image, computed over `base` as it is
  // now (partly merged up to merged()).
  Status read(BlockDevice& base, uint64_t off, std::span<uint8_t> buf);

  // What reads of [off, off + len) return, without reading
  // (BlockDevice::allocation): a block the base serves (no op, or its op
  // merged) is the base's map; an unmerged ZERO op's block is zero; any
  // other op's block is data. At most 1 GiB per call.
  Status allocation(BlockDevice& base, uint64_t off, uint64_t len, AllocMap& out) const;

  // Merge progress, in ops of the merge order.
  uint64_t merged() const { return merged_.load(std::memory_order_acquire); }
  uint64_t total() const { return order_.size(); }
  const std::vector<uint32_t>& merge_order() const { return order_; }
  bool has_merge_order() const { return order_ok_; }

  // Merges the next batch into `base` and records progress in `cow_rw` (the
  // COW opened writable). Returns the number of ops merged so far.
  Result<uint64_t> merge_step(BlockDevice& base, BlockDevice& cow_rw, uint32_t max_batch_blocks = 1024);

  Result<BlockCache::Block> payload(uint32_t op_index);

 private:
  CowImage() = default;
  Status compute_block(BlockDevice& base, const Op& op, uint64_t blk, uint8_t* out, const uint8_t* stash);
  // read() as of merge position `merged` (the caller holds merge_mu_ or is the merge).
  // `merging`: payloads not cached yet are decoded without caching them.
  Status read_at(BlockDevice& base, uint64_t off, std::span<uint8_t> buf, uint64_t merged, bool merging);
  Result<BlockCache::Block> payload_once(uint32_t op_index);
  bool self_reading(const Op& op) const;
  uint64_t stash_capacity() const;  // self-reading ops one stash record holds
  Status stash_store(BlockDevice& cow_rw, uint64_t start, uint64_t end, const std::map<uint64_t, std::vector<uint8_t>>& st);
  Status stash_load(uint64_t start);  // the record of the batch at `start`, if valid
  Result<std::optional<std::vector<uint8_t>>> stash_read(uint64_t pos);  // older udm's single record

  DevicePtr cow_;
  CowFile f_;
  uint64_t base_bytes_ = 0, view_bytes_ = 0;
  std::vector<int32_t> map_;           // view block -> op index, -1 unmapped
  std::vector<uint32_t> order_;        // merge order (op indices)
  std::vector<uint32_t> pos_of_op_;    // op index -> position in order_
  bool order_ok_ = false;
  std::atomic<uint64_t> merged_{0};
  // Shared by every view read, exclusive while a batch is written and
  // merged_ moves: a read sees one merge state from start to end (an op
  // merged during the read may have had its source overwritten since).
  mutable std::shared_mutex merge_mu_;
  std::shared_ptr<BlockCache> cache_;
  uint64_t owner_ = 0;
  // The stash of the batch [stash_start_, stash_end_): merge position ->
  // old bytes its self-reading op reads. The view computes those ops from
  // it, since a cut may have left their blocks written but not yet
  // recorded as merged.
  uint64_t stash_start_ = 0, stash_end_ = 0;
  std::map<uint64_t, std::vector<uint8_t>> stash_;
  std::vector<uint32_t> stamp_w_, stamp_r_;  // batch building: per block, last batch id that wrote/read it
  uint32_t batch_id_ = 0;
  std::vector<uint8_t> merge_buf_;  // a batch's new blocks
};

}  // namespace udm::acow
