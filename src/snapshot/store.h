// Exception stores: where a snapshot keeps the origin chunks it has saved.
//
// PersistentStore speaks the kernel's on-disk format (cow_format.h) on a COW
// device; the transient store keeps its table in memory and uses the COW as a
// plain heap of data chunks (dm's "N" store).
//
// Durability contract of commit() for the persistent store (the kernel's
// order, docs/snapshot.md):
//   1. the caller has written the exception's data chunk (an ordinary,
//      possibly cached write);
//   2. commit() issues cow->flush()  -> every data chunk written before the
//      commit started is durable (the kernel's PREFLUSH);
//   3. it writes the metadata area(s) holding the new records with FUA
//      -> the records are durable; an area that becomes full is written only
//      after the next area was written as zeros (FUA), so the on-disk table
//      always has a terminator;
//   4. only then does commit() return and the caller release the origin write.
// Commits are grouped: records queued while one commit is in flight go out
// together in the next area write (one flush + one FUA write for many).
#pragma once

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
  bool valid() const;
  const CowGeometry& geo() const { return geo_; }
  uint64_t chunk_bytes() const { return geo_.chunk_bytes; }
  BlockDevice& cow() { return *cow_; }
  const DevicePtr& cow_ptr() const { return cow_; }

  // The COW chunk holding origin chunk `old_chunk`, if there is an exception.
  std::optional<uint64_t> lookup(uint64_t old_chunk) const;
  uint64_t exception_count() const;

  // Reserves a free COW data chunk (ENOSPC when the COW is full).
  Result<uint64_t> allocate();
  // Makes the record durable (see the contract above) and visible to lookup().
  Status commit(CowRecord r);
  // Marks the store invalid on disk (header valid=0, FUA). Idempotent.
  Status invalidate();

  // Merge support (persistent only). Like the kernel, merging works
  // backwards from the newest record and only within the current metadata
  // area (stepping to the previous, full area when it is empty). merge_batch
  // returns up to `max` of the newest records of that area, newest last; the
  // kernel takes only a run of consecutive chunks, udm takes any records (the
  // copies are idempotent either way) so scattered exceptions do not cost one
  // flushed metadata write each. Empty when nothing is left.
  std::vector<CowRecord> merge_batch(size_t max);
  // Drops the newest n records: zeroes them in their area and writes the
  // area (cow flush + FUA). The caller must have made the origin copies
  // durable first.
  Status commit_merge(size_t n);

  // "<allocated>/<total> <metadata>" in sectors, as dm-snapshot prints it.
  std::string usage_status() const;

 private:
  ExceptionStore() = default;
  Status write_areas(size_t first_new);  // areas touched by records_[first_new..]

  bool persistent_ = false;
  DevicePtr cow_;
  CowGeometry geo_;
  uint64_t cow_chunks_ = 0;

  mutable std::shared_mutex map_mu_;  // guards table_ (never held across I/O)
  std::unordered_map<uint64_t, uint64_t> table_;

  mutable std::mutex mu_;  // allocation, commit queue, records_
  std::condition_variable cv_;
  std::vector<CowRecord> records_;  // committed + being committed, commit order
  std::vector<CowRecord> pending_;
  uint64_t queued_ = 0, committed_ = 0;
  bool committing_ = false;
  Status sticky_;
  uint64_t next_free_ = 0;
  bool valid_ = true;
  CowHeader header_;
  bool merging_ = false;
  uint64_t merge_area_ = 0;
};

}  // namespace udm::snapshot
