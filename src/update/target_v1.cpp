// The `update` target over a v1 diff (format_v1.h).
//
// Reads: a block without an operation passes to the system device; one
// whose operation is applied (index < done) is read from the system device;
// otherwise it is computed from the diff and the old blocks, which the
// stored order keeps intact until every operation that reads them is
// applied. Computing and applying exclude each other per operation (a
// shared/exclusive lock), so a reader never sees an old block change under it.
//
// Copy-back: operations in the stored order. Before writing operation i's
// block, if an operation at or after the durable checkpoint still reads the
// old content of that block (last_reader[i] >= checkpoint), the system device
// is flushed and the checkpoint "i done" is written with FUA; an operation
// that reads its own block first stashes its new content in the diff (stash,
// flush, checkpoint naming it). After a power cut the copy restarts at the
// checkpoint; every operation from there is recomputed from blocks that are
// still old, or from the stash.
//
// Decoded REPLACE and XOR chunks and DELTA frames of several blocks live in
// the process's block cache (io/block_cache.h), keyed by this target's owner
// id: one decode however many readers wait for it.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "device/allocation.h"
#include "device/target_kit.h"
#include "io/block_cache.h"
#include "update/format_v1_io.h"
#include "update/target_versions.h"
#include "util/log.h"

namespace udm::update {

namespace {

class UpdateTargetV1 : public ReadOnlyTarget {
 public:
  UpdateTargetV1(DevicePtr sys, DevicePtr diff, V1Index idx, bool bg, std::vector<uint8_t> stash, JobPolicy policy)
      : sys_(std::move(sys)), diff_(std::move(diff)), idx_(std::move(idx)), planner_(idx_), bg_(bg),
        stash_(std::move(stash)), job_("update-copy-back", "operations", policy) {
    done_ = idx_.recorded_done();
    durable_ = done_;
    started_ = idx_.h.ckpt_state == 1;
    durable_has_stash_ = !stash_.empty();
    stash_op_ = stash_.empty() ? UINT64_MAX : done_.load();
    // A regenerated verity area counts one unit per block, written after
    // the last operation.
    const uint64_t units = idx_.ops.size() + idx_.region_blocks();
    job_.set_total(units, units * idx_.block_size());
    job_.set_done(done_, done_ * idx_.block_size());
  }

  // Flag VERITY_TREE: regenerate the hash area from the new image's data
  // as this device reads it, and check its root against the diff's record,
  // before the device goes live. With every operation applied, whether the
  // system device already holds it (a copy-back that ended, or a power cut
  // while the area was written).
  Status prepare_verity() {
    if (!idx_.verity) return Status::Ok();
    UDM_ASSIGN_OR_RETURN(region_, v1_regenerate_verity(idx_, *this));
    if (done_ >= idx_.ops.size()) {
      std::vector<uint8_t> have(region_.size());
      UDM_TRY(sys_->read(idx_.region_first * idx_.block_size(), have));
      if (have == region_) mark_region_written();
    }
    return Status::Ok();
  }
  ~UpdateTargetV1() override {
    stop_copy();
    cache_->drop_owner(owner_);
  }

  std::string type() const override { return "update"; }
  uint64_t size() const override { return idx_.new_bytes(); }  // the NEW image
  DeviceCaps caps() const override {
    DeviceCaps c = ReadOnlyTarget::caps();
    c.logical_block = 512;
    c.physical_block = std::max<uint32_t>(4096, idx_.block_size());
    return c;
  }
  std::string status() const override {
    return fmt::format("{} {}", done_.load() + region_done_.load(), idx_.ops.size() + idx_.region_blocks());
  }
  void presuspend() override { stop_copy(); }
  void resume() override {
    if (bg_ && (done_ < idx_.ops.size() || region_done_ < idx_.region_blocks())) start_copy();
  }
  Result<std::string> message(const std::vector<std::string>& args) override {
    return copy_back_message(job_, bg_, args, [this](const auto& a) { return ReadOnlyTarget::message(a); });
  }
  std::vector<JobInfo> jobs() const override { return copy_back_jobs(job_, bg_); }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    job_.foreground_io();
    const uint64_t bs = idx_.block_size();
    std::vector<uint8_t> tmp;
    uint64_t pos = off, end = off + buf.size();
    while (pos < end) {
      uint64_t block = pos / bs, in_block = pos - block * bs;
      if (idx_.generated(block)) {
        // The regenerated verity area: from memory (the same bytes the
        // copy-back writes last).
        if (region_.empty()) return IoError(fmt::format("update: verity area block {} read before it was regenerated", block));
        uint64_t run_end = std::min(end, idx_.region_end * bs);
        std::memcpy(buf.data() + (pos - off), region_.data() + (pos - idx_.region_first * bs), run_end - pos);
        pos = run_end;
        continue;
      }
      int64_t e = idx_.find(block);
      if (e < 0) {
        uint64_t run_end = passthrough_end(block, end);
        UDM_TRY(sys_->read(pos, buf.subspan(pos - off, run_end - pos)));
        pos = run_end;
        continue;
      }
      uint64_t n = std::min(end - pos, bs - in_block);
      std::shared_lock lk(apply_mu_);
      if (static_cast<uint64_t>(e) < done_) {
        UDM_TRY(sys_->read(pos, buf.subspan(pos - off, n)));
      } else if (plain_copy(static_cast<uint64_t>(e))) {
        // A run of unapplied COPY blocks from consecutive old blocks (a moved
        // file): one read of the old blocks, not one per block.
        const uint64_t src = idx_.ops[static_cast<size_t>(e)].src;
        uint64_t k = 1;
        while ((block + k) * bs < end) {
          int64_t e2 = idx_.find(block + k);
          if (e2 < 0 || static_cast<uint64_t>(e2) < done_ || !plain_copy(static_cast<uint64_t>(e2)) ||
              idx_.ops[static_cast<size_t>(e2)].src != src + k)
            break;
          k++;
        }
        n = std::min(end, (block + k) * bs) - pos;
        UDM_TRY(sys_->read(src * bs + in_block, buf.subspan(pos - off, n)));
      } else {
        tmp.resize(bs);
        UDM_TRY(compute(static_cast<size_t>(e), tmp));
        std::memcpy(buf.data() + (pos - off), tmp.data() + in_block, n);
      }
      pos += n;
    }
    return Status::Ok();
  }
  // What reads return, without reading: a run of blocks without an
  // operation is the system device's map (the copy-back writes only
  // operations' destinations, so it never changes under the question); a
  // block whose final operation is ZERO reads as zeroes whether or not it is
  // applied (zero); any other operation's block is data. At most 1 GiB is
  // described per call.
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override {
    const uint64_t bs = idx_.block_size();
    uint64_t pos = off, end = off + std::min<uint64_t>(len, uint64_t{1} << 30);
    while (pos < end && out.size() < kMaxAllocRuns) {
      uint64_t block = pos / bs;
      if (idx_.generated(block)) {
        uint64_t run_end = std::min(end, idx_.region_end * bs);
        add_alloc_run(out, run_end - pos, AllocKind::kData);
        pos = run_end;
        continue;
      }
      int64_t e = idx_.find(block);
      if (e < 0) {
        uint64_t run_end = passthrough_end(block, end);
        uint64_t covered = 0;
        UDM_TRY(append_allocation(*sys_, pos, run_end - pos, out, 0, covered));
        pos += covered;
        if (pos < run_end) break;  // the map is full
        continue;
      }
      uint64_t n = std::min(end - pos, bs - pos % bs);
      bool zero = idx_.ops[static_cast<size_t>(e)].type == OpType::Zero;
      add_alloc_run(out, n, zero ? AllocKind::kZero : AllocKind::kData);
      pos += n;
    }
    return Status::Ok();
  }

 private:
  // Operation i is a COPY whose source is read as it is (not a parked block,
  // not the stashed operation): its block is the old block `src`, as long as
  // it is not applied.
  bool plain_copy(uint64_t i) const {
    const V1Op& op = idx_.ops[i];
    return op.type == OpType::Copy && i != stash_op_ && idx_.save_of(op.src) < 0;
  }

  // End (bytes, at most `end`) of the run from `block` that passes to the
  // system device: up to the next operation's block or the verity area.
  uint64_t passthrough_end(uint64_t block, uint64_t end) const {
    const uint64_t bs = idx_.block_size();
    auto it = std::upper_bound(idx_.by_dest.begin(), idx_.by_dest.end(), block,
                               [](uint64_t b, const std::pair<uint64_t, uint32_t>& en) { return b < en.first; });
    uint64_t run_end = it == idx_.by_dest.end() ? end : std::min(end, it->first * bs);
    if (idx_.region_end > block && idx_.region_first > block) run_end = std::min(run_end, idx_.region_first * bs);
    return run_end;
  }
  void mark_region_written() {
    region_done_ = idx_.region_blocks();
    job_.set_done(idx_.ops.size() + region_done_, (idx_.ops.size() + region_done_) * idx_.block_size());
  }

  // The regenerated verity area onto the system device, after the last
  // operation (the old blocks there may have been read until then), in
  // admitted pieces; then a flush. A power cut before the flush leaves
  // the record at "all operations done", and the next load writes it again
  // (prepare_verity). Returns with the area unwritten if stopped.
  Status write_region(const std::function<void()>& on_pause) {
    const uint64_t bs = idx_.block_size(), piece_blocks = std::max<uint64_t>(1, (1u << 20) / bs);
    const uint64_t n = idx_.ops.size();
    for (uint64_t b = 0; b < idx_.region_blocks(); b += piece_blocks) {
      const uint64_t k = std::min(piece_blocks, idx_.region_blocks() - b);
      if (!job_.admit(k * bs, stop_, on_pause)) return Status::Ok();
      UDM_TRY(sys_->write((idx_.region_first + b) * bs, std::span<const uint8_t>(region_).subspan(b * bs, k * bs)));
      job_.set_done(n + b + k, (n + b + k) * bs);
    }
    UDM_TRY(sys_->flush());
    mark_region_written();
    return Status::Ok();
  }

  // New content of operation i (not yet applied) into out.
  Status compute(size_t i, std::span<uint8_t> out) {
    const uint64_t bs = idx_.block_size();
    if (i == stash_op_) {
      std::memcpy(out.data(), stash_.data(), bs);
      return Status::Ok();
    }
    const V1Op& op = idx_.ops[i];
    if (op.type == OpType::Delta) {
      // A DELTA frame, decoded once for all its members (its references
      // stay intact until its last member is applied, so it never goes stale).
      UDM_ASSIGN_OR_RETURN(auto frame, get_payload(kFrameKey + op.index));
      std::memcpy(out.data(), frame->data() + uint64_t{op.member} * bs, bs);
      return Status::Ok();
    }
    if (op.type == OpType::Xor) {
      // Old bytes at the source offset, XOR the payload (cached XOR chunk).
      UDM_ASSIGN_OR_RETURN(auto chunk, get_payload(kXorKey + op.index / idx_.h.chunk_blocks));
      UDM_TRY(sys_->read(op.src, out.subspan(0, bs)));
      v1_xor_into(out.subspan(0, bs), chunk->data() + uint64_t{op.index % idx_.h.chunk_blocks} * bs);
      return Status::Ok();
    }
    if (op.type != OpType::Replace) return v1_compute(*diff_, *sys_, idx_, i, out, done_.load());
    size_t ci = op.index / idx_.h.chunk_blocks;
    UDM_ASSIGN_OR_RETURN(auto chunk, get_payload(ci));
    std::memcpy(out.data(), chunk->data() + uint64_t{op.index % idx_.h.chunk_blocks} * bs, bs);
    return Status::Ok();
  }

  // New contents of operations [i, i+r) into out, in operation order: a
  // run of plain COPY operations from consecutive old blocks is one read.
  Status compute_run(uint64_t i, uint64_t r, std::span<uint8_t> out) {
    const uint64_t bs = idx_.block_size();
    for (uint64_t k = i; k < i + r;) {
      uint64_t j = k + 1;
      if (plain_copy(k))
        while (j < i + r && plain_copy(j) && idx_.ops[j].src == idx_.ops[k].src + (j - k)) j++;
      if (j - k > 1)
        UDM_TRY(sys_->read(idx_.ops[k].src * bs, out.subspan((k - i) * bs, (j - k) * bs)));
      else
        UDM_TRY(compute(k, out.subspan((k - i) * bs, bs)));
      k = j;
    }
    return Status::Ok();
  }

  // Write blocks [i, i+r) of operations (new contents in `data`, operation
  // order) to their places and advance done_, one write per run of
  // consecutive destinations. A run's operations may be written together
  // only if none of them is still read by an operation of the run before
  // it (or by itself): were the write to fail half-way, done_ stays at the
  // run's start, and a reader of those operations must still find the old
  // blocks they read.
  Status apply_run(uint64_t i, uint64_t r, std::span<const uint8_t> data) {
    const uint64_t bs = idx_.block_size();
    for (uint64_t k = i; k < i + r;) {
      uint64_t j = k + 1;
      while (j < i + r && j - k < kMaxWriteBlocks && idx_.ops[j].dest == idx_.ops[k].dest + (j - k) &&
             idx_.last_reader[j] < static_cast<int64_t>(k) && !reads_own_block(j) && !reads_own_block(k))
        j++;
      std::unique_lock lk(apply_mu_);
      UDM_TRY(sys_->write(idx_.ops[k].dest * bs, data.subspan((k - i) * bs, (j - k) * bs)));
      done_ = j;
      k = j;
    }
    return Status::Ok();
  }
  static constexpr uint64_t kMaxWriteBlocks = 256;
  static constexpr uint64_t kBatchBytes = 16u << 20;

  // Decoded REPLACE chunks, XOR chunks (kXorKey + chunk) and DELTA frames
  // (kFrameKey + frame), shared through the block cache.
  static constexpr uint64_t kFrameKey = uint64_t{1} << 40;
  static constexpr uint64_t kXorKey = uint64_t{1} << 41;
  Result<BlockCache::Block> get_payload(uint64_t key) {
    return cache_->get(owner_, key, [this, key]() -> Result<std::vector<uint8_t>> {
      const bool frame = key >= kFrameKey && key < kXorKey;
      std::vector<uint8_t> data((frame ? uint64_t{idx_.frames[key - kFrameKey].blocks} : uint64_t{idx_.h.chunk_blocks}) *
                                idx_.block_size());
      // A chunk's reference to a COPY's block of the new image (flag
      // CHUNK_NEW_REFS) reads it as this device shows it now: the applied
      // block, or the COPY computed. Stable while this runs: reads hold
      // apply_mu_ shared, and only the copy-back thread (this one, or
      // waiting for the lock) applies operations.
      const V1NewBlockReader nb = v1_new_block_reader(*diff_, *sys_, idx_, done_.load());
      Status s = key >= kXorKey ? v1_read_chunk(*diff_, idx_, key - kXorKey, data, true)
                 : frame        ? v1_read_delta(*diff_, *sys_, idx_, key - kFrameKey, data)
                                : v1_read_chunk(*diff_, idx_, key, data, false, sys_.get(), &nb);
      if (!s.ok()) return s;
      return data;
    });
  }

  void start_copy() {
    std::lock_guard lk(thread_mu_);
    if (thread_.joinable()) return;
    stop_ = false;
    thread_ = std::thread([this] { copy_loop(); });
  }
  void stop_copy() {
    std::lock_guard lk(thread_mu_);
    if (!thread_.joinable()) return;
    stop_ = true;
    job_.wake();
    thread_.join();
  }

  Status checkpoint(uint64_t done, std::span<const uint8_t> stash = {}) {
    UDM_TRY(sys_->flush());  // applied blocks first ...
    if (durable_has_stash_ && !stash.empty()) {
      // Never overwrite a stash the durable record still points at.
      UDM_TRY(v1_write_checkpoint(*diff_, 1, done));
      durable_has_stash_ = false;
    }
    UDM_TRY(v1_write_checkpoint(*diff_, 1, done, stash));  // ... then the record
    durable_ = done;
    checkpoints_++;
    last_checkpoint_ = std::chrono::steady_clock::now();
    durable_has_stash_ = !stash.empty();
    return Status::Ok();
  }

  // A logged batch from operation d (checkpoint state 2): compute up to
  // max_ops new blocks, park them in scratch blocks (format_v1.h,
  // V1ScratchPlanner), flush, record the batch (FUA), write them to their
  // destinations, then checkpoint the batch's end: four flushes for the whole
  // batch where the barrier path pays two per barrier and three per
  // self-reading operation. False when the order leaves no scratch block.
  Result<bool> logged_batch(uint64_t d, uint64_t max_ops, const std::function<void()>& on_pause) {
    const uint64_t bs = idx_.block_size();
    const uint64_t n = idx_.ops.size();
    // (A diff without a stash promises a scratch block to every operation
    // that reads its own block: look for it whatever the last look found.)
    if (d < no_scratch_until_ && !(reads_own_block(d) && !idx_.h.stash_blocks)) return false;
    // The batch [d, d+m) needs m scratch blocks among the operations after
    // it; a shorter batch leaves more operations after it. Halve m until the
    // operations after it (a bounded look) hold enough.
    // The largest m (up to max_ops) whose batch [d, d+m) finds m scratch
    // blocks among the operations after it (a bounded look): a shorter batch
    // leaves more operations after it, so the supply grows as m shrinks.
    // Binary search: about a dozen scans of the planner.
    const uint64_t max_scan = 16 * max_ops + 4096;
    std::vector<uint64_t> scratch;
    int64_t last_read = -1;
    uint64_t lo = 0, hi = barrier_extent(d, std::min<uint64_t>(max_ops, n - d));
    while (lo < hi) {
      const uint64_t mid = hi - (hi - lo) / 2;
      if (planner_.scratch(d, d + mid, mid, nullptr, max_scan).size() == mid)
        lo = mid;
      else
        hi = mid - 1;
    }
    const uint64_t m = lo;
    if (m > 0) scratch = planner_.scratch(d, d + m, m, &last_read, max_scan);
    if (m == 0) {
      no_scratch_until_ = d + 64;  // try again a little later, not at every barrier
      return false;
    }
    const uint64_t e = d + m;
    // Until the batch's record is durable a restart recomputes from the
    // durable record: operations from there must not read a scratch block.
    if (last_read >= static_cast<int64_t>(durable_)) UDM_TRY(checkpoint(d));
    // The first operation was admitted by the caller; the rest now.
    if (e - d > 1 && !job_.admit((e - d - 1) * bs, stop_, on_pause)) return true;
    // max_ops never exceeds copy_loop's batch_max, which sized the buffer.
    if ((e - d) * bs > batch_bytes_) return IoError(fmt::format("update: a batch of {} operations exceeds the buffer", e - d));
    const std::span<uint8_t> batch(batch_.get(), (e - d) * bs);  // computed over: no zeroing first
    UDM_TRY(compute_run(d, e - d, batch));
    for (uint64_t k = 0; k < e - d;) {  // scratch blocks, one write per consecutive run
      uint64_t j = k + 1;
      while (j < e - d && j - k < kMaxWriteBlocks && scratch[j] == scratch[k] + (j - k)) j++;
      UDM_TRY(sys_->write(scratch[k] * bs, std::span<const uint8_t>(batch).subspan(k * bs, (j - k) * bs)));
      k = j;
    }
    UDM_TRY(sys_->flush());  // the scratch blocks and every operation before d
    UDM_TRY(v1_write_batch_checkpoint(*diff_, d, e, v1_crc(batch)));
    durable_has_stash_ = false;
    // In runs whose failure half-way leaves the live target reading right
    // (operations from done_ on read only blocks no earlier operation
    // overwrote, and no scratch block).
    UDM_TRY(apply_run(d, e - d, batch));
    job_.set_done(e, e * bs);
    UDM_TRY(checkpoint(e));  // before anything may overwrite a scratch block
    batches_++;
    batched_ops_ += e - d;
    return true;
  }

  // How many operations from d (at most max) a logged batch needs to hold:
  // up to the last one that would be a barrier after a checkpoint at the
  // batch's end, stopping at the first kBatchGap operations that would not
  // be. Past such a gap the operations go straight to their places: every
  // block a batch holds is written twice (scratch, then its place), which
  // costs more than another batch's flushes once the gap is longer than
  // about 4 MiB (and wears flash for nothing).
  static constexpr uint64_t kBatchGap = 1024;
  uint64_t barrier_extent(uint64_t d, uint64_t max) const {
    uint64_t end = d + 1;
    for (uint64_t k = d + 1; k < d + max; k++) {
      if (reads_own_block(k) || idx_.last_reader[k] >= static_cast<int64_t>(end))
        end = k + 1;
      else if (k + 1 - end >= kBatchGap)
        break;
    }
    return end - d;
  }

  // With the durable record at operation i, would the next kSparseRun
  // operations run without another barrier (an operation reading its own
  // block, or one whose old block an operation from i on still reads)?
  static constexpr uint64_t kSparseRun = 256;
  bool sparse_after(uint64_t i) const {
    const uint64_t end = std::min<uint64_t>(idx_.ops.size(), i + kSparseRun);
    if (end - i < kSparseRun && end != idx_.ops.size()) return false;
    for (uint64_t k = i; k < end; k++)
      if ((k > i && idx_.last_reader[k] >= static_cast<int64_t>(i)) || reads_own_block(k)) return false;
    return true;
  }

  // Does operation i read the block it overwrites (a DELTA reference or an
  // XOR source)? Then it needs the stash or a logged batch. Not the stashed
  // operation itself: its block is in the stash.
  bool reads_own_block(uint64_t i) const { return i != stash_op_ && v1_reads_own_block(idx_, idx_.ops[i]); }

  void copy_loop() {
    constexpr uint64_t kPersistEvery = 4096;  // 16 MiB of 4 KiB blocks: what a crash may cost again
    const uint64_t bs = idx_.block_size();
    // Logged batches of up to 4096 operations (the format's limit) or 16 MiB.
    const uint64_t batch_max = std::clamp<uint64_t>(kBatchBytes / bs, 1, kV1MaxBatchOps);
    const uint64_t n = idx_.ops.size();
    // The batch buffer at its largest from the start, not zeroed (every
    // batch computes over what it uses): grown batch by batch, every growth
    // moved the blocks already there, zeroed the new part and faulted in
    // pages (6 % of the copy-back's samples on bench/background's pair).
    if (!batch_) {
      batch_ = std::make_unique_for_overwrite<uint8_t[]>(batch_max * bs);
      batch_bytes_ = batch_max * bs;
    }
    Status s;
    job_.started();
    // A pause makes the progress so far durable first.
    auto on_pause = [&] {
      if (s.ok() && started_ && done_ != durable_) s = checkpoint(done_);
    };
    if (!started_) {
      // The old image was checked against the diff's hash when the target
      // was made; record that the copy-back has begun before the first write.
      s = v1_write_checkpoint(*diff_, 1, done_);
      started_ = s.ok();
    }
    while (s.ok() && !stop_ && done_ < n) {
      if (!job_.admit(bs, stop_, on_pause) || !s.ok()) break;
      const uint64_t i = done_;
      const V1Op& op = idx_.ops[i];
      const bool self = reads_own_block(i);
      if (!self && idx_.last_reader[i] >= static_cast<int64_t>(durable_) && sparse_after(i)) {
        // A barrier with none other close behind it: one checkpoint here
        // (two flushes) lets the next run of operations go straight to their
        // places, cheaper than a logged batch (four flushes and every block
        // written twice).
        s = checkpoint(i);
        if (!s.ok()) break;
        direct_barriers_++;
      }
      uint64_t r = 1;  // operations applied in this turn
      if (self || idx_.last_reader[i] >= static_cast<int64_t>(durable_)) {
        // A barrier: a batch from here, logged, covers it and the next ones.
        auto b = logged_batch(i, std::max<uint64_t>(1, job_.batch_bytes(bs, batch_max * bs) / bs), on_pause);
        if (!b.ok()) {
          s = b.status();
          break;
        }
        if (*b) continue;
        if (self && !idx_.h.stash_blocks) {  // the loader checked the promise: a bug if it fails
          s = IoError(fmt::format("update: operation {} reads its own block and found no scratch block, and the diff "
                                  "has no stash", i));
          break;
        }
        run_.resize(bs);
        s = compute(i, run_);
        if (!s.ok()) break;
        s = checkpoint(i, self ? std::span<const uint8_t>(run_) : std::span<const uint8_t>());
        if (!s.ok()) break;
      } else {
        // No barrier: the operations after it writing the next blocks, none
        // a barrier either, go with it - computed, then one write.
        const uint64_t max_run =
            std::min<uint64_t>(kMaxWriteBlocks, std::max<uint64_t>(1, job_.batch_bytes(bs, kMaxWriteBlocks * bs) / bs));
        while (r < max_run && i + r < n && idx_.ops[i + r].dest == op.dest + r && !reads_own_block(i + r) &&
               idx_.last_reader[i + r] < static_cast<int64_t>(durable_))
          r++;
        if (r > 1 && !job_.admit((r - 1) * bs, stop_, on_pause)) break;
        if (!s.ok()) break;
        run_.resize(r * bs);
        s = compute_run(i, r, run_);
        if (!s.ok()) break;
      }
      s = apply_run(i, r, run_);
      if (!s.ok()) break;
      job_.set_done(i + r, (i + r) * bs);
      // Progress is recorded every kPersistEvery operations, and at least
      // once a second while it moves (a throttled job crawls: a crash, or
      // a SIGKILL of the daemon, then costs at most a second's work).
      if (done_ - durable_ >= kPersistEvery ||
          (done_ != durable_ && std::chrono::steady_clock::now() - last_checkpoint_ >= kPersistInterval))
        s = checkpoint(done_);
    }
    if (s.ok() && started_ && done_ != durable_) s = checkpoint(done_);
    if (s.ok() && !stop_ && done_ == n && !region_.empty() && region_done_ == 0) s = write_region(on_pause);
    if (!s.ok()) log::error("update: background copy stopped: {}", s.to_string());
    log::debug("update: copy-back thread ends at operation {} of {}: {} logged batches of {} operations, {} checkpoints "
               "({} at barriers with no other close behind)",
               done_.load(), n, batches_, batched_ops_, checkpoints_, direct_barriers_);
    // The batch buffer goes back to the system between runs of the loop (a
    // resume or reload allocates it again): up to 16 MiB a batch touched
    // stayed resident for the device's life.
    batch_.reset();
    batch_bytes_ = 0;
    job_.finished(s);
  }

  DevicePtr sys_, diff_;
  V1Index idx_;
  V1ScratchPlanner planner_;
  std::unique_ptr<uint8_t[]> batch_;  // the copy thread's logged batch (batch_max blocks)
  uint64_t batch_bytes_ = 0;          // its size
  std::vector<uint8_t> run_;    // the copy thread's run of operations without a barrier
  uint64_t batches_ = 0;        // logged batches written (debug log)
  uint64_t no_scratch_until_ = 0;  // the last look for scratch found none: barriers before this take the old path
  uint64_t checkpoints_ = 0;    // checkpoints written (debug log)
  uint64_t batched_ops_ = 0;    // operations applied in logged batches (debug log)
  uint64_t direct_barriers_ = 0;  // barriers passed with a checkpoint instead of a logged batch (debug log)
  bool bg_;
  std::vector<uint8_t> stash_;
  uint64_t stash_op_ = UINT64_MAX;
  std::atomic<uint64_t> done_{0};
  std::vector<uint8_t> region_;            // flag VERITY_TREE: the regenerated area (prepare_verity)
  std::atomic<uint64_t> region_done_{0};   // its blocks durable on the system device (0 or all)
  uint64_t durable_ = 0;
  static constexpr std::chrono::seconds kPersistInterval{1};
  std::chrono::steady_clock::time_point last_checkpoint_ = std::chrono::steady_clock::now();
  bool started_ = false;
  bool durable_has_stash_ = false;
  std::shared_mutex apply_mu_;
  std::shared_ptr<BlockCache> cache_ = BlockCache::shared();
  const uint64_t owner_ = BlockCache::new_owner();
  BackgroundJob job_;
  std::atomic<bool> stop_{false};
  std::mutex thread_mu_;
  std::thread thread_;
};

}  // namespace

Result<TargetPtr> make_update_target_v1(UpdateDevices d) {
  DevicePtr sys = std::move(d.sys), diff = std::move(d.diff);
  const std::string& diff_name = d.diff_name;
  const uint64_t length = d.length;
  const bool bg = d.bg;
  const JobPolicy policy = d.policy;
  auto idx = load_v1(*diff);
  if (!idx.ok()) return idx.status().context("update: diff " + diff_name);
  // The device is the NEW image; the system device holds the OLD image at
  // its start and must fit both (old sources are read, new blocks written).
  const uint64_t img = idx->new_bytes(), old_img = idx->old_bytes();
  if (length != img)
    return Invalid(fmt::format("update: segment of {} bytes but the v1 diff is for a {}-byte new image", length, img));
  if (sys->size() < img)
    return Invalid(fmt::format("update: system device is {} bytes, smaller than the diff's new image ({} bytes)",
                               sys->size(), img));
  if (sys->size() < old_img)
    return Invalid(fmt::format("update: system device is {} bytes, smaller than the diff's old image ({} bytes)",
                               sys->size(), old_img));
  if (bg && diff->caps().read_only)
    return ReadOnly("update: a v1 copy-back keeps its checkpoint in the diff, which is read-only; use no_bg_update");
  std::vector<uint8_t> stash;
  if (idx->h.ckpt_state == 2) {
    // A power cut interrupted a logged batch: finish it before anything
    // reads (its operations may be half applied). Needs both devices writable.
    if (sys->caps().read_only || diff->caps().read_only)
      return ReadOnly(fmt::format("update: diff {} records an interrupted copy-back batch (operations [{}, {})); "
                                  "finishing it needs the system device and the diff writable",
                                  diff_name, idx->h.ckpt_done, idx->h.ckpt_batch_end));
    log::info("update: diff {}: finishing the copy-back batch a power cut interrupted (operations [{}, {}))", diff_name,
              idx->h.ckpt_done, idx->h.ckpt_batch_end);
    if (Status st = v1_finish_logged_batch(*diff, *sys, *idx); !st.ok()) return st.context("update: diff " + diff_name);
  }
  if (idx->h.ckpt_state == 1) {
    // A checkpoint binds the diff to the device its copy-back wrote, but
    // nothing stops the same diff from meeting another device (or this one
    // restored to the old image). A device that still holds exactly the old
    // image starts over; a finished copy-back must have left the new image.
    UDM_ASSIGN_OR_RETURN(auto h, sha256_device(*sys, old_img));
    if (h == idx->h.old_sha256) {
      log::warn("update: diff {} has a checkpoint at operation {}, but the system device holds the old image: "
                "starting the copy-back over",
                diff_name, idx->h.ckpt_done);
      idx->h.ckpt_state = 0;
      idx->h.ckpt_done = 0;
      idx->h.ckpt_stash_op = 0;
    } else if (idx->h.ckpt_done >= idx->ops.size() && !idx->verity) {
      // (With a regenerated verity area the check reads the device, below.)
      UDM_ASSIGN_OR_RETURN(auto nh, sha256_device(*sys, img));
      if (nh != idx->h.new_sha256)
        return Invalid(fmt::format("update: diff {} says its copy-back is done, but the system device (sha256 {}) "
                                   "holds neither the old nor the new image; nothing written",
                                   diff_name, hex(nh)));
    }
  }
  if (idx->h.ckpt_state == 0) {
    // Nothing written yet: the system device must hold exactly the old image.
    UDM_ASSIGN_OR_RETURN(auto h, sha256_device(*sys, old_img));
    if (h != idx->h.old_sha256)
      return Invalid(fmt::format("update: system device sha256 {} is not the diff's old image {}; nothing written",
                                 hex(h), hex(idx->h.old_sha256)));
  } else {
    stash.resize(idx->block_size());
    UDM_ASSIGN_OR_RETURN(bool has, v1_read_stash(*diff, *idx, stash));
    if (!has) stash.clear();
  }
  const bool finished = idx->h.ckpt_state == 1 && idx->h.ckpt_done >= idx->ops.size() && idx->verity;
  const auto new_sha = idx->h.new_sha256;
  auto t = std::make_shared<UpdateTargetV1>(std::move(sys), std::move(diff), std::move(idx).value(), bg,
                                            std::move(stash), policy);
  if (Status st = t->prepare_verity(); !st.ok())
    return st.context(fmt::format("update: diff {}: nothing written", diff_name));
  if (finished) {
    // Every operation applied (the verity area maybe not yet): the device
    // must read as the new image.
    UDM_ASSIGN_OR_RETURN(auto nh, sha256_device(*t, img));
    if (nh != new_sha)
      return Invalid(fmt::format("update: diff {} says its copy-back is done, but the device reads sha256 {}, not the new "
                                 "image's; nothing written",
                                 diff_name, hex(nh)));
  }
  return TargetPtr(std::move(t));
}

}  // namespace udm::update
