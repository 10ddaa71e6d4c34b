// The three dm-snapshot targets.
//
//  snapshot-origin <origin>
//  snapshot        <origin> <cow> <P|PO|N> <chunk_size>
//  snapshot-merge  <origin> <cow> <P|PO> <chunk_size> [<#feature_args> [paused] [throttle=<MiB/s>|auto|off]]
//
// The merge is a background job (device/background_job.h): messages pause,
// resume, throttle <MiB/s>|auto|off; the feature arguments set the same
// policy from the start.
//
// Origins and their snapshots meet in a process-wide registry keyed by the
// identity of the origin as the resolver decides it (DeviceResolver::identity,
// io/resolver.h: st_dev+st_ino of a file, st_rdev of a block device, the name
// of a udm device, a URI). A snapshot joins its origin's list when its
// table is first resumed and leaves it when the last target using it is
// destroyed; a reloaded table over the same COW takes over the live state
// (like the kernel's exception handover), so no origin write is ever missed
// between two tables. A write through snapshot-origin (or a merge writing
// the origin) first makes every listed snapshot save the old chunk.
//
// Locking: each snapshot has a table of chunk locks (striped shared_mutex,
// chunk number modulo the stripe count). Readers of a chunk take it shared;
// creating an exception takes it exclusive. No lock covers more than one
// chunk and none is held across another snapshot's I/O, so writes to
// different chunks run in parallel and their metadata commits are grouped.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "device/target.h"
#include "device/target_kit.h"
#include "snapshot/store.h"

namespace udm::snapshot {

// One snapshot's live state, shared between the snapshot target, the origin
// registry and (after a handover) the merge target.
class SnapshotCore {
 public:
  SnapshotCore(DevicePtr origin, std::unique_ptr<ExceptionStore> store, std::string cow_key,
               bool overflow_ok);

  ExceptionStore& store() { return *store_; }
  BlockDevice& origin() { return *origin_; }
  const std::string& cow_key() const { return cow_key_; }
  uint64_t chunk_bytes() const { return store_->chunk_bytes(); }
  uint64_t origin_size() const { return origin_->size(); }
  std::shared_mutex& lock_for(uint64_t chunk) { return locks_[chunk % kStripes]; }

  // Before origin chunks [first, last] are overwritten: saves every one not
  // saved yet (in batches: one origin read per run of chunks, one group
  // commit per batch). Failing to save invalidates the snapshot (never the
  // origin write).
  void save_chunks(uint64_t first, uint64_t last);
  void save_before_origin_write(uint64_t chunk) { save_chunks(chunk, chunk); }
  // The same for scattered chunks (ascending, no repeats): one group commit
  // per batch_chunks() of them, wherever they are.
  void save_chunk_list(const std::vector<uint64_t>& chunks);
  // Whether every chunk of [offset, offset+len) has an exception (or the
  // snapshot is invalid: it saves nothing any more).
  bool all_saved(uint64_t offset, uint64_t len) const;
  // The snapshot's view.
  Status read(uint64_t offset, std::span<uint8_t> buf) { return read_view(offset, buf, *origin_, true); }
  // The view through `origin` (the merge reads through its own, writable,
  // open of the origin): each chunk under its lock (shared), from its COW
  // chunk if it has an exception, else from `origin`. check_valid: fail once
  // the snapshot is invalid.
  Status read_view(uint64_t offset, std::span<uint8_t> buf, BlockDevice& origin, bool check_valid);
  // The view's allocation map through `origin`, from what the snapshot
  // knows: a chunk with an exception is its COW chunk's map (depth 1: a
  // zeroed or trimmed COW chunk of a file COW is a hole), any other chunk the
  // origin's (depth 2 and below: a fresh snapshot of a sparse origin is as
  // sparse as the origin). No chunk lock is taken: after asking the origin
  // about a run of chunks without an exception, the run is checked again, and
  // the answer is cut before the first chunk that got one meanwhile (an
  // origin write makes every snapshot's exception visible before it changes
  // the origin, so a chunk still without one was not changed under the
  // question).
  Status allocation(uint64_t offset, uint64_t len, AllocMap& out, BlockDevice& origin, bool check_valid);
  Status write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
    return modify(offset, buf.size(), buf.data(), fua, false);
  }
  // Zero-out of the view: chunks with an exception have their COW bytes
  // zeroed (write_zeroes on the COW, may_unmap passed on); a chunk without
  // one keeps reading the origin when the origin's bytes there are zero
  // already, else it gets an exception whose COW chunk is zeroed on the COW
  // (whole chunk) or holds the origin chunk with the range zeroed (partial).
  Status write_zeroes(uint64_t offset, uint64_t len, bool fua, bool may_unmap) {
    return modify(offset, len, nullptr, fua, may_unmap);
  }
  // Advisory discard: the COW bytes of whole chunks that have an exception
  // are zeroed with may_unmap (a file COW gets a hole); nothing else changes.
  Status trim(uint64_t offset, uint64_t len);
  std::string status() const;
  bool overflowed() const { return overflow_.load(); }
  uint64_t batch_chunks() const { return std::max<uint64_t>(1, (4u << 20) / chunk_bytes()); }

  std::atomic<int> owners{0};

 private:
  class ChunkLocks;
  // Writes `data` (nullptr: zeroes) to the view at [offset, offset+len).
  Status modify(uint64_t offset, uint64_t len, const uint8_t* data, bool fua, bool may_unmap);
  // Reads origin chunks [c0, c0 + need.size()) whose need[] is set into
  // buf (chunk i at (i - c0) * chunk_bytes), one read per run.
  Status read_origin_chunks(uint64_t c0, const std::vector<char>& need, std::vector<uint8_t>& buf);
  uint64_t chunk_len(uint64_t c) const {
    return std::min(chunk_bytes(), origin_->size() - c * chunk_bytes());
  }
  // Reserves a COW chunk for a new exception; on failure the snapshot
  // overflows (PO) or is invalidated, and the error says so.
  Result<uint64_t> allocate_for_write();
  void invalidate(const Status& why);

  static constexpr size_t kStripes = 4096;
  // Chunk size from which a zero-out probes a whole chunk's first sector
  // before reading all of it (smaller chunks are read in one go per run).
  static constexpr uint64_t kProbeFrom = 16384;
  DevicePtr origin_;
  std::unique_ptr<ExceptionStore> store_;
  std::string cow_key_;
  bool overflow_ok_;
  std::atomic<bool> overflow_{false};
  std::unique_ptr<std::shared_mutex[]> locks_;
};

class MergeTarget;
class OriginWriteback;

// The snapshots of one origin.
class OriginEntry {
 public:
  // Every listed snapshot (but `except`) saves the chunks of [offset,
  // offset+len). The caller holds io_mu shared.
  void save_range(uint64_t offset, uint64_t len, const SnapshotCore* except = nullptr);
  // The same for many ranges (ascending, not overlapping) at once: each
  // snapshot saves their chunks with save_chunk_list. Caller holds io_mu.
  void save_ranges(const std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  // Whether every listed snapshot has saved every chunk of the range.
  // Caller holds io_mu.
  bool all_saved(uint64_t offset, uint64_t len) const;
  // Discards (origin.trim) the parts of [offset, offset+len) that no listed
  // snapshot (but `except`) still reads from the origin: chunks every valid
  // snapshot has saved. The caller holds io_mu shared.
  Status trim_unneeded(BlockDevice& origin, uint64_t offset, uint64_t len,
                       const SnapshotCore* except = nullptr);
  // Lists `core`; a core with the same COW already listed is returned instead
  // (the caller adopts it). Waits for in-flight origin writes.
  std::shared_ptr<SnapshotCore> attach(std::shared_ptr<SnapshotCore> core);
  // Removes the snapshot over `cow_key` from the list if listed; returns it.
  // The caller holds io_mu exclusively (a merge takes its snapshot and
  // registers itself as `merge` in one critical section, so no origin write
  // falls between the two).
  std::shared_ptr<SnapshotCore> take_locked(const std::string& cow_key);
  void detach(SnapshotCore* core);
  size_t count() const;
  // Held shared by an origin write from its first save until its own write
  // completes, so a snapshot is never attached in the middle of one; held
  // exclusively by every change of the list (and of `merge`).
  std::shared_mutex io_mu;
  // The snapshot-merge (resumed, in the daemon) rolling this origin back,
  // if any: a snapshot-origin over the same origin serves its I/O through
  // the merge's view instead of the raw origin (which mixes merged and
  // unmerged chunks, and where a write to an unmerged chunk would be
  // overwritten by the merge). Read and used under io_mu shared; set and
  // cleared under io_mu exclusive.
  MergeTarget* merge = nullptr;
  // The write-back buffer of a snapshot-origin with `writeback` over this
  // origin, if any. Drained (its writes saved by every snapshot, then
  // written to the origin) by drain_writeback() under io_mu exclusive before
  // the list or `merge` changes: a snapshot attached later must see those
  // writes, and one leaving (or handed to a merge) must have saved the old
  // chunks they overwrite. Set and cleared under io_mu exclusive.
  OriginWriteback* writeback = nullptr;
  void drain_writeback();  // caller holds io_mu exclusive

 private:
  mutable std::mutex list_mu_;
  std::vector<std::shared_ptr<SnapshotCore>> snaps_;
};

std::shared_ptr<OriginEntry> origin_entry(const std::string& key);

// snapshot-origin: the origin passed through (reads, flushes), except that
// every listed snapshot saves the chunks a write or zero-out is about to
// change, and that a running snapshot-merge of the origin serves its I/O.
//
// With the `writeback` option (udm's; `snapshot-origin <origin> 1 writeback`)
// a write that some snapshot must save chunks for is not made to wait for
// their commit: it is held in memory (4 KiB units, read-modify-write from the
// origin for partial units) and acknowledged; reads see it; a flush, a FUA
// write, a zero-out, a discard, 64 MiB held, one second without a drain, a
// suspend or a change of the snapshot list drains the buffer: every
// snapshot saves the chunks of all held writes in as few group commits as
// possible (one per 4 MiB of chunks, wherever they are), then the held
// units are written to the origin. Until then the origin still holds the
// old bytes, so the snapshots read them, and a crash loses only writes that
// no flush covered - what the block-device contract allows. A write the
// snapshots need nothing for (every chunk saved) and that no held unit
// overlaps goes straight to the origin.
class OriginTarget : public ForwardingTarget {
 public:
  OriginTarget(DevicePtr origin, std::shared_ptr<OriginEntry> entry, uint64_t length, bool writeback = false);
  ~OriginTarget() override;
  std::string type() const override { return "snapshot-origin"; }
  DeviceCaps caps() const override;
  std::string status() const override;
  void resume() override;

 protected:
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override;
  Status do_write_zeroes(uint64_t offset, uint64_t len, bool fua, bool may_unmap) override;
  Status do_trim(uint64_t offset, uint64_t len) override;
  // The origin's map, or the running merge's view's.
  Status do_allocation(uint64_t offset, uint64_t len, AllocMap& out) override;
  Status do_flush() override;

 private:
  std::shared_ptr<OriginEntry> entry_;
  std::unique_ptr<OriginWriteback> wb_;
};

class SnapshotTarget : public Target {
 public:
  SnapshotTarget(std::shared_ptr<SnapshotCore> core, std::shared_ptr<OriginEntry> entry,
                 uint64_t length);
  ~SnapshotTarget() override;
  std::string type() const override { return "snapshot"; }
  uint64_t size() const override { return length_; }
  DeviceCaps caps() const override;
  std::string status() const override;
  void resume() override;
  SnapshotCore& core() { return *core_; }

 protected:
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override;
  Status do_write_zeroes(uint64_t offset, uint64_t len, bool fua, bool may_unmap) override;
  Status do_trim(uint64_t offset, uint64_t len) override;
  Status do_flush() override;
  Status do_allocation(uint64_t offset, uint64_t len, AllocMap& out) override;

 private:
  std::shared_ptr<SnapshotCore> core_;
  std::shared_ptr<OriginEntry> entry_;
  uint64_t length_;
  bool attached_ = false;
};

// snapshot-merge: the origin's device, reading as the snapshot, while a
// background thread copies the COW's chunks back into the origin.
class MergeTarget : public Target {
 public:
  MergeTarget(DevicePtr origin, std::shared_ptr<SnapshotCore> core,
              std::shared_ptr<OriginEntry> entry, uint64_t length, JobPolicy policy = {});
  ~MergeTarget() override;
  std::string type() const override { return "snapshot-merge"; }
  uint64_t size() const override { return length_; }
  DeviceCaps caps() const override;
  std::string status() const override;
  void presuspend() override;
  void resume() override;
  Result<std::string> message(const std::vector<std::string>& args) override;
  std::vector<JobInfo> jobs() const override { return {job_.info()}; }

  // Runs the merge on the calling thread until done, stopped or failed
  // (offline tool; `progress(remaining)` after each batch).
  Status run_merge(const std::function<void(uint64_t)>& progress = {});
  // Blocks until the background merge ends; its result.
  Status wait();
  bool done() const { return done_.load(); }
  // The largest batch (one origin flush, one COW flush, the areas written):
  // 16 MiB unless lowered (tests cut merges at batch boundaries). Set before
  // resume() / run_merge().
  void set_max_batch_bytes(uint64_t b) { max_batch_bytes_ = b; }
  uint64_t remaining() const { return core_->store().exception_count(); }

  // The merge's view for a snapshot-origin over the same origin; the caller
  // holds entry->io_mu shared (these do not take it again).
  Status view_read(uint64_t offset, std::span<uint8_t> buf) { return do_read(offset, buf); }
  Status view_allocation(uint64_t offset, uint64_t len, AllocMap& out) { return do_allocation(offset, len, out); }
  Status view_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
    return modify_view(offset, buf.size(), buf.data(), fua, false, true);
  }
  Status view_write_zeroes(uint64_t offset, uint64_t len, bool fua, bool may_unmap) {
    return write_zeroes_view(offset, len, fua, may_unmap, true);
  }
  Status view_trim(uint64_t offset, uint64_t len) { return trim_view(offset, len, true); }

 protected:
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override {
    return modify_view(offset, buf.size(), buf.data(), fua, false, false);
  }
  Status do_write_zeroes(uint64_t offset, uint64_t len, bool fua, bool may_unmap) override {
    return write_zeroes_view(offset, len, fua, may_unmap, false);
  }
  Status do_trim(uint64_t offset, uint64_t len) override { return trim_view(offset, len, false); }
  Status do_flush() override;
  // The snapshot's view (SnapshotCore::allocation) through this target's origin.
  Status do_allocation(uint64_t offset, uint64_t len, AllocMap& out) override;

 private:
  // io_held: the caller holds entry_->io_mu shared already.
  // Writes `data` (nullptr: zeroes) to the view chunk by chunk: a chunk not
  // merged yet gets the bytes in its COW chunk (the merge copies them later),
  // a chunk being merged waits, any other is written on the origin after the
  // origin's other snapshots saved it.
  Status modify_view(uint64_t offset, uint64_t len, const uint8_t* data, bool fua, bool may_unmap,
                     bool io_held);
  Status write_zeroes_view(uint64_t offset, uint64_t len, bool fua, bool may_unmap, bool io_held);
  // Waits while chunk c is being merged; `lk` (c's chunk lock) is held again on return.
  void wait_unmerged(uint64_t c, std::shared_lock<std::shared_mutex>& lk);
  Status trim_view(uint64_t offset, uint64_t len, bool io_held);
  Status merge_one_batch(size_t max_chunks, bool* finished);
  void report_progress();
  void stop_thread();

  DevicePtr origin_;  // opened writable (an adopted core's may not be)
  std::shared_ptr<SnapshotCore> core_;
  std::shared_ptr<OriginEntry> entry_;
  uint64_t length_;
  bool adopted_ = false;
  bool registered_ = false;  // entry_->merge == this

  std::mutex run_mu_;
  std::condition_variable run_cv_;
  std::set<uint64_t> merging_;  // origin chunks being copied back right now
  Status result_;
  std::atomic<bool> done_{false}, failed_{false}, stop_{false};
  BackgroundJob job_;
  uint64_t job_total_ = 0;  // exceptions to merge when this table went live
  uint64_t max_batch_bytes_ = 16u << 20;
  std::thread thread_;
};

// Builds a merge target over paths without a daemon (snapshot-merge-offline).
Result<std::shared_ptr<MergeTarget>> open_offline_merge(const std::string& origin,
                                                        const std::string& cow,
                                                        uint32_t chunk_sectors);

Result<TargetPtr> make_origin_target(const TargetParams& p);
Result<TargetPtr> make_snapshot_target(const TargetParams& p);
Result<TargetPtr> make_merge_target(const TargetParams& p);

}  // namespace udm::snapshot
