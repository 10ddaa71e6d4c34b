// Exception stores: where a snapshot keeps the origin chunks it has saved.
//
// PersistentStore speaks the kernel's on-disk format (cow_format.h) on a COW
// device; the transient store keeps its table in memory and uses the COW as a
// plain heap of data chunks (dm's "N" store).
//
// Durability contract of commit() for the persistent store (the kernel's
// order, docs/snapshot.md):
//   1. the exception's data chunk is written (an ordinary, possibly cached
//      write): by the caller before commit(), or - when commit() is given the
//      bytes - by the committing thread, which writes the data chunks of all
//      commits in its group with one write per run of consecutive COW chunks
//      (the kernel's kcopyd jobs complete before their commit the same way);
//   2. commit() issues cow->flush()  -> every data chunk written before the
//      commit started is durable (the kernel's PREFLUSH);
//   3. it writes the metadata area(s) holding the new records with FUA
//      -> the records are durable; an area that becomes full is written only
//      after the next area was written as zeros (FUA), so the on-disk table
//      always has a terminator. Once udm knows an area's tail is zero on disk
//      (it zeroed or fully wrote that area itself) it writes only the logical
//      blocks holding the new records (the kernel rewrites the whole chunk);
//      an area loaded from disk is rewritten whole on its first commit;
//   4. only then does commit() return and the caller release the origin write.
// Commits are grouped: records queued while one commit is in flight go out
// together in the next area write (one flush + one FUA write for many, and
// their data chunks in as few writes as their COW chunks allow).
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "device/block_device.h"
#include "snapshot/cow_format.h"

namespace udm::snapshot {

// Origin chunk -> COW chunk, read without locks: a two-level table of
// atomics (leaves of 4096 entries allocated on first use) holding
// COW chunk + 1, 0 = no exception, plus a bitmap of the same (the origin
// write path only asks "saved?", and 512 bytes of bits per leaf stay in
// cache where the 32 KiB of values do not). Writers of one chunk are
// serialized by the caller (the chunk lock).
class ChunkTable {
 public:
  explicit ChunkTable(uint64_t chunks = 0);
  ~ChunkTable();
  ChunkTable(const ChunkTable&) = delete;
  ChunkTable& operator=(const ChunkTable&) = delete;
  std::optional<uint64_t> find(uint64_t c) const {
    const Leaf* l = leaf(c);
    uint64_t v = l ? l->vals[c & kLeafMask].load(std::memory_order_acquire) : 0;
    if (v == 0) return std::nullopt;
    return v - 1;
  }
  bool has(uint64_t c) const {
    const Leaf* l = leaf(c);
    return l && (l->bits[(c & kLeafMask) / 64].load(std::memory_order_acquire) >> (c % 64)) & 1;
  }
  void set(uint64_t c, uint64_t cow_chunk) { store(c, cow_chunk + 1); }
  void clear(uint64_t c) { store(c, 0); }
  uint64_t size() const { return count_.load(std::memory_order_relaxed); }

 private:
  static constexpr unsigned kLeafBits = 12;
  static constexpr uint64_t kLeafSize = 1u << kLeafBits, kLeafMask = kLeafSize - 1;
  struct Leaf {
    std::atomic<uint64_t> bits[kLeafSize / 64];
    std::atomic<uint64_t> vals[kLeafSize];
  };
  const Leaf* leaf(uint64_t c) const {
    if (c >> kLeafBits >= top_n_) return nullptr;
    return top_[c >> kLeafBits].load(std::memory_order_acquire);
  }
  void store(uint64_t c, uint64_t v);  // c < chunks
  uint64_t top_n_ = 0;
  std::unique_ptr<std::atomic<Leaf*>[]> top_;
  std::mutex alloc_mu_;
  std::atomic<uint64_t> count_{0};
};

class ExceptionStore {
 public:
  // Loads (or, for a COW whose magic is 0, formats) a persistent store.
  // `format_new`: false refuses a brand-new COW (merge needs an existing one).
  // A bad COW is an error and nothing is written to it.
  static Result<std::unique_ptr<ExceptionStore>> open_persistent(DevicePtr cow,
                                                                 uint64_t origin_bytes,
                                                                 uint32_t table_chunk_sectors,
                                                                 bool format_new = true);
  static Result<std::unique_ptr<ExceptionStore>> open_transient(DevicePtr cow,
                                                                uint64_t origin_bytes,
                                                                uint32_t chunk_sectors);

  bool persistent() const { return persistent_; }
  bool valid() const { return valid_.load(std::memory_order_acquire); }
  const CowGeometry& geo() const { return geo_; }
  uint64_t chunk_bytes() const { return geo_.chunk_bytes; }
  BlockDevice& cow() { return *cow_; }
  const DevicePtr& cow_ptr() const { return cow_; }

  // The COW chunk holding origin chunk `old_chunk`, if there is an exception
  // (lock free; an exception is visible only once it is durable).
  std::optional<uint64_t> lookup(uint64_t old_chunk) const { return table_.find(old_chunk); }
  bool has_exception(uint64_t old_chunk) const { return table_.has(old_chunk); }
  uint64_t exception_count() const { return table_.size(); }

  // Reserves a free COW data chunk (ENOSPC when the COW is full).
  Result<uint64_t> allocate();
  // Makes the record durable (see the contract above) and visible to lookup().
  // `data` (if not empty): the chunk's bytes, written to COW chunk
  // r.new_chunk before the record; it must stay valid until commit returns.
  // Empty `data`: the caller wrote (or zeroed) the COW chunk before the call.
  Status commit(CowRecord r, std::span<const uint8_t> data = {});
  // Several records in one group commit (one flush and one write per touched
  // area for all of them, their data chunks in runs of consecutive COW
  // chunks); all or, on error, any prefix-closed subset become durable, and
  // none is visible unless all are.
  struct CommitItem {
    CowRecord r;
    std::span<const uint8_t> data;
  };
  Status commit(std::span<const CommitItem> items);
  // Marks the store invalid on disk (header valid=0, FUA). Idempotent.
  Status invalidate();

  // Merge support (persistent only). Like the kernel, merging works
  // backwards from the newest record. merge_batch returns up to `max` of the
  // newest records, newest last; the kernel takes only a run of consecutive
  // chunks within the current metadata area, udm takes any records across
  // areas (the copies are idempotent either way) so scattered exceptions do
  // not cost one flushed metadata write each, nor one per area. Empty when
  // nothing is left.
  std::vector<CowRecord> merge_batch(size_t max);
  // Drops the newest n records: rewrites every area holding them (cow flush,
  // the areas newest first, the last written FUA). The caller must have made
  // the origin copies durable first.
  Status commit_merge(size_t n);

  // "<allocated>/<total> <metadata>" in sectors, as dm-snapshot prints it.
  std::string usage_status() const;

 private:
  explicit ExceptionStore(uint64_t origin_chunks) : table_(origin_chunks) {}
  Status write_areas(size_t first_new);  // areas touched by records_[first_new..]

  bool persistent_ = false;
  DevicePtr cow_;
  CowGeometry geo_;
  uint64_t cow_chunks_ = 0;

  ChunkTable table_;

  mutable std::mutex mu_;  // allocation, commit queue, records_
  std::condition_variable cv_;
  std::vector<CowRecord> records_;  // committed + being committed, commit order
  using Pending = CommitItem;
  std::vector<Pending> pending_;
  Status write_data(std::vector<Pending>& batch);  // the batch's data chunks
  uint64_t queued_ = 0, committed_ = 0;
  bool committing_ = false;
  Status sticky_;
  uint64_t next_free_ = 0;
  std::atomic<bool> valid_{true};
  // The area whose on-disk tail (after its committed records) udm knows to
  // be zero, so a commit may write just the blocks with new records.
  uint64_t clean_area_ = UINT64_MAX;
  CowHeader header_;
  bool merging_ = false;
  uint64_t merge_area_ = 0;
};

}  // namespace udm::snapshot
