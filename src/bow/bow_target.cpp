#include "bow/bow_target.h"

#include <fmt/format.h>

#include "bow/restore.h"
#include "device/table.h"
#include "util/log.h"

namespace udm::bow {

namespace {
constexpr uint64_t kMaxCopyBytes = 16u << 20;  // largest single backup entry
}

BowTarget::BowTarget(DevicePtr dev, uint64_t length, BowOptions opts)
    : dev_(std::move(dev)),
      size_(length),
      opts_(opts),
      bs_(opts.block_size),
      blocks_(length / opts.block_size),
      map_(length / opts.block_size, BlockType::kUnchanged) {}

BowTarget::~BowTarget() {
  {
    std::lock_guard l(mu_);
    stop_ = true;  // the committer finishes what is queued first
  }
  cv_.notify_all();
  if (committer_.joinable()) committer_.join();
}

Result<std::shared_ptr<BowTarget>> BowTarget::create(DevicePtr dev, uint64_t length,
                                                     BowOptions opts) {
  if (!valid_block_size(opts.block_size))
    return Invalid(fmt::format("bow: block_size {} is not a power of two in 512..65536",
                               opts.block_size));
  if (length % opts.block_size != 0)
    return Invalid(fmt::format("bow: length {} bytes is not a multiple of the block size {}",
                               length, opts.block_size));
  if (length < 4ull * opts.block_size)
    return Invalid(fmt::format("bow: a device of {} bytes is too small (at least 4 blocks)", length));
  if (dev->size() < length)
    return Invalid(fmt::format("bow: device has {} bytes, the segment needs {}", dev->size(), length));
  if (dev->caps().read_only) return Invalid("bow: the device is read-only");
  std::shared_ptr<BowTarget> t(new BowTarget(std::move(dev), length, opts));
  UDM_TRY(t->load_existing());
  t->committer_ = std::thread([p = t.get()] { p->committer_loop(); });
  return t;
}

// A device whose block 0 holds a log is in state 1 already (a crash or a
// restart during a checkpoint): rebuild what the log tells. Free space is not
// known any more (the trims of the earlier session are gone and cannot be
// trusted again: a block freed after the checkpoint may hold checkpoint data),
// so the resumed target has none; blocks the log names as saved (sources) are
// CHANGED, their copies (dests) are BACKUP.
Status BowTarget::load_existing() {
  std::vector<uint8_t> b0(std::min<uint64_t>(kMaxBlock, size_));
  UDM_TRY(dev_->read(0, b0));
  if (!has_log_magic(b0)) return Status::Ok();
  auto log = decode_log(b0, size_);
  if (!log.ok())
    return log.status().context("bow: block 0 holds a damaged bow log (inspect it with "
                                "`udm bow-restore --dry-run`)");
  if (log.value().block_size != bs_)
    return Invalid(fmt::format("bow: the device's log uses block_size={}; create the target with it",
                               log.value().block_size));
  ChainOptions copts;
  copts.verify = false;
  auto chain = read_chain(*dev_, copts);
  if (!chain.ok())
    return chain.status().context("bow: block 0 holds a damaged bow log chain");
  const uint64_t bsec = bs_ / 512;
  for (auto it = chain.value().steps.rbegin(); it != chain.value().steps.rend(); ++it) {
    const LogEntry& e = it->entry;
    uint64_t n = e.size / bs_;
    map_.set(e.dest / bsec, e.dest / bsec + n, BlockType::kBackup);
    if (e.source != 0) map_.set(e.source / bsec, e.source / bsec + n, BlockType::kChanged);
    stats_.entries++;
    if (e.source != 0 || it->id.sequence == 0) stats_.backed_up_bytes += e.size;
  }
  log_ = std::move(log.value());
  sector0_block_ = log_.sector0 / bsec;
  map_.set(0, 1, BlockType::kLog);
  map_.set(sector0_block_, sector0_block_ + 1, BlockType::kSector0);
  written_.assign(blocks_ / 64 + 1, 0);
  virtual_fill_ = static_cast<uint32_t>(log_.entries.size());
  state_ = 1;
  stats_.resumed = true;
  stats_.sequence = log_.sequence;
  udm::log::info("bow: resumed a checkpoint from the device: {} log entries, sequence {}",
               stats_.entries, log_.sequence);
  return Status::Ok();
}

DeviceCaps BowTarget::caps() const {
  DeviceCaps c = dev_->caps();
  c.can_trim = true;  // trims are how state 0 learns the free space
  c.trim_zeroes = false;
  c.fast_zero = false;
  c.logical_block = 512;
  return c;
}

BowStats BowTarget::stats() const {
  std::lock_guard l(mu_);
  BowStats s = stats_;
  s.state = state_;
  s.free_bytes = state_ == 2 ? 0 : (map_.count(BlockType::kFree) - written_free_) * bs_;
  s.failed = !fatal_.ok();
  return s;
}

std::string BowTarget::status() const {
  BowStats s = stats();
  std::string out = fmt::format("state={} free={} backed_up={} entries={} on_full={}", s.state,
                                s.free_bytes, s.backed_up_bytes, s.entries,
                                opts_.drop_on_full ? "drop" : "fail");
  if (s.dropped) out += " dropped";
  if (s.resumed) out += " resumed";
  if (s.failed) out += " failed";
  return out;
}

BlockType BowTarget::block_type(uint64_t block) const {
  std::lock_guard l(mu_);
  BlockType t = map_.at(block);
  if (t == BlockType::kFree && !written_.empty() && written(block)) return BlockType::kChanged;
  return t;
}

bool BowTarget::map_consistent() const {
  std::lock_guard l(mu_);
  return map_.check();
}

Result<std::string> BowTarget::message(const std::vector<std::string>& args) {
  if (args.size() == 2 && args[0] == "state") {
    if (args[1] == "1" || args[1] == "2") {
      UDM_TRY(set_state(args[1] == "1" ? 1 : 2));
      return std::string();
    }
    return Invalid(fmt::format("bow: state must be 1 or 2, not '{}'", args[1]));
  }
  return Invalid("bow: messages: 'state 1' (checkpoint) or 'state 2' (commit)");
}

Status BowTarget::set_state(int target) {
  std::unique_lock st(state_mu_);  // drains all I/O
  int cur;
  {
    std::lock_guard l(mu_);
    if (!fatal_.ok()) return fatal_;
    cur = state_;
  }
  if (target == cur) return Status::Ok();
  if (target != cur + 1)
    return Invalid(fmt::format("bow: cannot go from state {} to state {} (only 0 -> 1 -> 2)", cur,
                               target));
  if (target == 1) return checkpoint();
  {
    // Writes are drained (state_mu_); let the committer finish what is queued.
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return (queue_.empty() && !committing_) || !fatal_.ok(); });
    if (!fatal_.ok()) return fatal_;
  }
  std::unique_lock s0(s0_mu_);
  return commit(false);
}

Status BowTarget::checkpoint() {
  uint64_t live, saved;
  {
    std::lock_guard l(mu_);
    uint64_t nfree = map_.count(BlockType::kFree);
    auto a = map_.find_free(1);
    if (a) map_.set(a->start, a->end, BlockType::kSector0);
    auto b = map_.find_free(1);
    if (!a || !b) {
      if (a) map_.set(a->start, a->end, BlockType::kFree);
      return NoSpace(fmt::format(
          "bow: state 1 needs at least 2 free blocks, {} known (trim the filesystem first: fstrim)",
          nfree));
    }
    map_.set(b->start, b->end, BlockType::kBackup);
    map_.set(0, 1, BlockType::kLog);
    written_.assign(blocks_ / 64 + 1, 0);
    written_free_ = 0;
    live = a->start;
    saved = b->start;
  }
  const uint64_t bsec = bs_ / 512;
  std::vector<uint8_t> x0(bs_);
  Status s = dev_->read(0, x0);
  if (s.ok()) s = dev_->write(live * bs_, x0);
  if (s.ok()) s = dev_->write(saved * bs_, x0);
  if (s.ok()) s = dev_->flush();  // both copies durable before the log names them
  LogBlock log{bs_, 0, live * bsec, {{0, saved * bsec, bs_, entry_checksum(0, x0)}}};
  bool log_written = false;
  if (s.ok()) {
    log_written = true;
    s = dev_->write(0, encode_log(log));
  }
  if (s.ok()) s = dev_->flush();
  std::lock_guard l(mu_);
  if (!s.ok()) {
    if (log_written) {
      // Block 0 may or may not hold the log now: stop, like any failed backup.
      fatal_ = s.context("bow: writing the log failed; the target stopped");
      return fatal_;
    }
    map_.set(0, 1, BlockType::kUnchanged);
    map_.set(live, live + 1, BlockType::kFree);
    map_.set(saved, saved + 1, BlockType::kFree);
    return s.context("bow: checkpoint");
  }
  log_ = std::move(log);
  virtual_fill_ = 1;
  sector0_block_ = live;
  state_ = 1;
  stats_.entries = 1;
  stats_.backed_up_bytes = bs_;
  stats_.sequence = 0;
  udm::log::info("bow: checkpoint taken; {} bytes of free space for backups",
               map_.count(BlockType::kFree) * bs_);
  return Status::Ok();
}

// Caller holds s0_mu_ exclusively (no block-0 I/O in flight).
Status BowTarget::commit(bool dropped) {
  uint64_t live;
  {
    std::lock_guard l(mu_);
    if (state_ != 1) return Status::Ok();
    live = sector0_block_;
  }
  std::vector<uint8_t> b(bs_);
  Status s = dev_->flush();
  if (s.ok()) s = dev_->read(live * bs_, b);
  if (s.ok()) s = dev_->write(0, b);  // one block: the log is gone or still whole
  if (s.ok()) s = dev_->flush();
  std::lock_guard l(mu_);
  if (!s.ok()) {
    fatal_ = s.context("bow: commit failed; the target stopped");
    return fatal_;
  }
  state_ = 2;
  map_ = RangeMap(blocks_, BlockType::kChanged);
  written_.clear();
  written_.shrink_to_fit();
  written_free_ = 0;
  log_ = LogBlock{};
  if (dropped) stats_.dropped = true;
  cv_.notify_all();
  udm::log::info("bow: {}", dropped ? "out of free space: backup dropped (on_full=drop), now "
                                    "pass-through; the checkpoint can no longer be restored"
                                  : "committed; pass-through");
  return Status::Ok();
}

// A run of FREE blocks nobody wrote since the checkpoint (mu_ held). Written
// ones met on the way become CHANGED in the map.
std::optional<Run> BowTarget::alloc_free(uint64_t max_len) {
  for (;;) {
    auto f = map_.find_free(max_len);
    if (!f) return f;
    uint64_t b = f->start;
    while (b < f->end && written(b)) b++;
    if (b > f->start) {
      for (uint64_t x = f->start; x < b; x++) written_[x / 64] &= ~(1ull << (x % 64));
      written_free_ -= b - f->start;
      map_.set(f->start, b, BlockType::kChanged);
      continue;
    }
    while (b < f->end && !written(b)) b++;
    return Run{f->start, b, BlockType::kFree};
  }
}

bool BowTarget::busy_overlaps(uint64_t s, uint64_t e) const {
  auto it = busy_.upper_bound(s);
  if (it != busy_.end() && it->first < e) return true;
  if (it != busy_.begin() && std::prev(it)->second > s) return true;
  return false;
}
void BowTarget::busy_add(uint64_t s, uint64_t e) { busy_[s] = e; }
void BowTarget::busy_remove(uint64_t s, uint64_t) { busy_.erase(s); }

Status BowTarget::io_block0_read(uint64_t off, std::span<uint8_t> buf) {
  std::shared_lock s0(s0_mu_);
  uint64_t base = 0;
  {
    std::lock_guard l(mu_);
    if (state_ == 1) base = sector0_block_ * bs_;
  }
  return dev_->read(base + off, buf);
}

Status BowTarget::io_block0_write(uint64_t off, uint64_t len, const uint8_t* data, bool fua) {
  std::shared_lock s0(s0_mu_);
  uint64_t base = 0;
  {
    std::lock_guard l(mu_);
    if (state_ == 1) base = sector0_block_ * bs_;
  }
  if (!data) return dev_->write_zeroes(base + off, len, fua);
  return dev_->write(base + off, std::span<const uint8_t>(data, len), fua);
}

Status BowTarget::lower_write(uint64_t off, uint64_t len, const uint8_t* data, bool fua) {
  if (off < bs_) {
    uint64_t n = std::min<uint64_t>(len, bs_ - off);
    UDM_TRY(io_block0_write(off, n, data, fua));
    off += n;
    len -= n;
    if (data) data += n;
    if (len == 0) return Status::Ok();
  }
  if (!data) return dev_->write_zeroes(off, len, fua);
  return dev_->write(off, std::span<const uint8_t>(data, len), fua);
}

Status BowTarget::do_read(uint64_t off, std::span<uint8_t> buf) {
  UDM_TRY(check_range(off, buf.size(), "read"));
  if (buf.empty()) return Status::Ok();
  std::shared_lock st(state_mu_);
  // Write-back jobs not yet on the device: their data is laid over what the
  // device returns (their blocks are busy, so nothing else writes them).
  std::vector<JobPtr> over;
  {
    std::lock_guard l(mu_);
    if (!deferred_.empty()) {
      uint64_t b0 = off / bs_, b1 = (off + buf.size() + bs_ - 1) / bs_;
      auto it = deferred_.upper_bound(b0);
      if (it != deferred_.begin()) --it;
      for (; it != deferred_.end() && it->first < b1; ++it) {
        const Job& j = *it->second;
        if (j.off < off + buf.size() && j.off + j.len > off) over.push_back(it->second);
      }
    }
  }
  if (off < bs_) {
    uint64_t n = std::min<uint64_t>(buf.size(), bs_ - off);
    UDM_TRY(io_block0_read(off, buf.first(n)));
    if (n < buf.size()) UDM_TRY(dev_->read(off + n, buf.subspan(n)));
  } else {
    UDM_TRY(dev_->read(off, buf));
  }
  for (const JobPtr& j : over) {
    uint64_t a = std::max(off, j->off), e = std::min(off + buf.size(), j->off + j->len);
    if (j->data.empty()) std::fill(buf.begin() + (a - off), buf.begin() + (e - off), 0);
    else std::copy(j->data.begin() + (a - j->off), j->data.begin() + (e - j->off), buf.begin() + (a - off));
  }
  return Status::Ok();
}

Status BowTarget::do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) {
  UDM_TRY(check_range(off, buf.size(), "write"));
  if (buf.empty()) return Status::Ok();
  return write_common(off, buf.size(), buf.data(), fua);
}

Status BowTarget::do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool may_unmap) {
  UDM_TRY(check_range(off, len, "write_zeroes"));
  if (len == 0) return Status::Ok();
  return write_common(off, len, nullptr, fua);
}

namespace {
constexpr uint64_t kMaxPendingBytes = 64u << 20;  // write-back data held at most
}

bool BowTarget::plan_job(Job& job, const std::vector<Run>& runs, bool move_s0) {
  const uint32_t cap = log_capacity(bs_);
  const uint32_t fill0 = virtual_fill_;
  std::vector<Run> got;
  std::vector<uint64_t> logs;
  auto take = [&](uint64_t max_len) -> std::optional<Run> {
    auto f = alloc_free(max_len);
    if (f) {
      map_.set(f->start, f->end, BlockType::kBackup);
      got.push_back(*f);
    }
    return f;
  };
  bool ok = true;
  for (const Run& r : runs) {
    for (uint64_t pos = r.start; ok && pos < r.end;) {
      auto f = take(std::min<uint64_t>(r.end - pos, kMaxCopyBytes / bs_));
      if (!f) {
        ok = false;
        break;
      }
      if (virtual_fill_ == cap) {  // this entry opens a new log block
        auto lb = take(1);
        if (!lb) {
          ok = false;
          break;
        }
        got.pop_back();  // not the job's: kept busy in the pool until used
        logs.push_back(lb->start);
        virtual_fill_ = 1;
      }
      virtual_fill_++;
      job.copies.push_back({pos, f->start, f->end - f->start});
      pos += f->end - f->start;
    }
    if (!ok) break;
  }
  if (ok && move_s0) {
    auto f = take(1);
    if (f) job.new_s0 = f->start;
    else ok = false;
  }
  if (!ok) {
    for (const Run& a : got) map_.set(a.start, a.end, BlockType::kFree);
    for (uint64_t b : logs) map_.set(b, b + 1, BlockType::kFree);
    virtual_fill_ = fill0;
    job.copies.clear();
    job.new_s0.reset();
    return false;
  }
  for (const Run& a : got) job.busy.push_back({a.start, a.end});
  // Rollover blocks go to a pool: jobs may be queued in another order than
  // they were planned in, but the pool always holds enough for every queued
  // entry (the same count of entries needs the same count of rollovers).
  for (uint64_t b : logs) {
    log_pool_.push_back(b);
    busy_add(b, b + 1);
  }
  return true;
}

void BowTarget::finish_job(Job& j, Status s) {
  for (const auto& [a, b] : j.busy) busy_remove(a, b);
  j.busy.clear();
  if (j.deferred) {
    deferred_.erase(j.b0);
    pending_bytes_ -= j.len;
  }
  j.result = std::move(s);
  j.done = true;
  done_seq_ = std::max(done_seq_, j.seq);
}

Status BowTarget::write_common(uint64_t off, uint64_t len, const uint8_t* data, bool fua) {
  std::shared_lock st(state_mu_);
  const uint64_t b0 = off / bs_, b1 = (off + len + bs_ - 1) / bs_;
  {
    std::unique_lock l(mu_);
    for (;;) {
      if (!fatal_.ok()) return fatal_;
      if (state_ == 0) {
        // Un-trim: a block written after its discard is in use again.
        map_.set(std::max<uint64_t>(b0, 1), b1, BlockType::kUnchanged);
        break;
      }
      if (state_ == 2) break;
      if (busy_overlaps(b0, b1)) {
        cv_.wait(l);
        continue;
      }
      std::vector<Run> runs;
      bool move_s0 = false;
      map_.visit(b0, b1, [&](const Run& r) {
        switch (r.type) {
          case BlockType::kFree:
            for (uint64_t b = r.start; b < r.end; b++) {
              uint64_t& w = written_[b / 64];
              uint64_t bit = 1ull << (b % 64);
              if (!(w & bit)) {
                w |= bit;
                written_free_++;
              }
            }
            break;
          case BlockType::kUnchanged:
          case BlockType::kBackup: runs.push_back(r); break;
          case BlockType::kSector0: move_s0 = true; break;
          case BlockType::kChanged:
          case BlockType::kLog: break;  // block 0's I/O goes to the live copy
        }
      });
      if (runs.empty() && !move_s0) break;
      auto job = std::make_shared<Job>();
      if (!plan_job(*job, runs, move_s0)) {
        if (!opts_.drop_on_full) {
          uint64_t need = 0;
          for (const Run& r : runs) need += r.end - r.start;
          return NoSpace(fmt::format("bow: no free space left to back up {} bytes before this "
                                     "write (on_full=fail)",
                                     need * bs_));
        }
        // on_full=drop: the committer finishes what is queued, then drops
        // the checkpoint; then this write passes through.
        drop_requested_ = true;
        cv_.notify_all();
        cv_.wait(l, [&] { return state_ != 1 || !fatal_.ok(); });
        continue;
      }
      // Write-back unless the caller wants durability now or too much is held.
      job->deferred = opts_.write_back && !fua && pending_bytes_ + len <= kMaxPendingBytes;
      if (job->deferred) {
        job->busy.push_back({b0, b1});  // the whole write: later writes wait for it
        job->off = off;
        job->len = len;
        job->b0 = b0;
        pending_bytes_ += len;
      } else {
        for (const Run& r : runs) job->busy.push_back({r.start, r.end});
        if (move_s0) job->busy.push_back({sector0_block_, sector0_block_ + 1});
      }
      for (const auto& [a, b] : job->busy) busy_add(a, b);
      if (job->deferred && data) {
        // Copy the data without the lock (the blocks are busy: nobody else
        // writes them; reads see the old data until the write is queued,
        // which is fine: it is not acknowledged yet).
        l.unlock();
        job->data.assign(data, data + len);
        l.lock();
      }
      if (job->deferred) deferred_[b0] = job;
      job->seq = ++next_seq_;
      queue_.push_back(job);
      cv_.notify_all();
      if (job->deferred) return Status::Ok();
      cv_.wait(l, [&] { return job->done; });
      if (!job->result.ok()) return job->result;
      // Saved: look again (the blocks are CHANGED now).
    }
  }
  return lower_write(off, len, data, fua);
}

void BowTarget::committer_loop() {
  std::unique_lock l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !queue_.empty() || drop_requested_; });
    if (!queue_.empty()) {
      process_batch(l);
      continue;
    }
    if (drop_requested_) {
      drop_requested_ = false;
      if (state_ == 1 && fatal_.ok()) {
        l.unlock();
        {
          std::unique_lock s0(s0_mu_);
          (void)commit(true);  // on failure commit() sets fatal_
        }
        l.lock();
      }
      cv_.notify_all();
      continue;
    }
    if (stop_) return;
  }
}

Status BowTarget::copy_blocks(uint64_t src, uint64_t dst, uint64_t n, uint32_t* crc) {
  std::vector<uint8_t> buf;
  uint64_t total = n * bs_, done = 0;
  if (crc) *crc = static_cast<uint32_t>(src);
  while (done < total) {
    uint64_t k = std::min<uint64_t>(total - done, 1u << 20);
    buf.resize(k);
    UDM_TRY(dev_->read(src * bs_ + done, buf));
    if (crc) *crc = crc32_le(*crc, buf);
    UDM_TRY(dev_->write(dst * bs_ + done, buf));
    done += k;
  }
  return Status::Ok();
}

// Commits every queued job as one batch: copies, flush, log, flush, then the
// deferred writes. Called by the committer with mu_ held; returns with it held.
void BowTarget::process_batch(std::unique_lock<std::mutex>& l) {
  std::vector<JobPtr> batch(queue_.begin(), queue_.end());
  queue_.clear();
  committing_ = true;
  auto write_deferred = [&](Status s) {
    for (const JobPtr& j : batch)
      if (j->deferred && s.ok())
        s = lower_write(j->off, j->len, j->data.empty() ? nullptr : j->data.data(), false);
    return s;
  };
  if (!fatal_.ok() || state_ != 1) {
    // Stopped, or the checkpoint was dropped/committed: backups are moot;
    // write-back data still goes down (pass-through).
    Status s = fatal_;
    l.unlock();
    if (s.ok()) s = write_deferred(s);
    l.lock();
    for (const JobPtr& j : batch) finish_job(*j, s);
    committing_ = false;
    cv_.notify_all();
    return;
  }
  const uint64_t bsec = bs_ / 512;
  const uint32_t cap = log_capacity(bs_);
  bool moving_s0 = false;
  for (const JobPtr& j : batch) moving_s0 |= j->new_s0.has_value();
  const uint64_t old_s0 = sector0_block_;
  LogBlock log = log_;
  // Rollover blocks this batch needs, from the pool.
  std::vector<uint64_t> log_blocks;
  {
    size_t fill = log.entries.size(), n = 0;
    for (const JobPtr& j : batch) n += j->copies.size();
    for (size_t e = 0; e < n; e++) {
      if (fill == cap) {
        if (log_pool_.empty()) break;  // cannot happen; reported below
        log_blocks.push_back(log_pool_.front());
        log_pool_.pop_front();
        fill = 1;
      }
      fill++;
    }
  }
  l.unlock();

  std::unique_lock<std::shared_mutex> s0x(s0_mu_, std::defer_lock);
  if (moving_s0) s0x.lock();  // no block-0 I/O while the live block 0 moves
  Status s;
  // Copies whose dests follow each other (next-fit allocation makes most of
  // a batch contiguous) are gathered into one buffer and written at once.
  std::vector<Copy*> all;
  for (const JobPtr& j : batch)
    for (Copy& c : j->copies) all.push_back(&c);
  std::vector<uint8_t>& gather = gather_;  // kept: no page faults per batch
  for (size_t i = 0; i < all.size() && s.ok();) {
    size_t k = i + 1;
    uint64_t n = all[i]->n;
    while (k < all.size() && all[k]->dst == all[k - 1]->dst + all[k - 1]->n &&
           (n + all[k]->n) * bs_ <= kMaxCopyBytes) {
      n += all[k]->n;
      k++;
    }
    if (k == i + 1 && n * bs_ > (1u << 20)) {
      s = copy_blocks(all[i]->src, all[i]->dst, all[i]->n, &all[i]->crc);
    } else {
      gather.resize(n * bs_);
      uint64_t pos = 0;
      for (size_t x = i; x < k && s.ok(); x++) {
        auto piece = std::span<uint8_t>(gather.data() + pos, all[x]->n * bs_);
        s = dev_->read(all[x]->src * bs_, piece);
        all[x]->crc = entry_checksum(all[x]->src, piece);
        pos += piece.size();
      }
      if (s.ok()) s = dev_->write(all[i]->dst * bs_, gather);
    }
    i = k;
  }
  uint64_t s0_now = old_s0;
  for (const JobPtr& j : batch)
    if (s.ok() && j->new_s0) {
      s = copy_blocks(s0_now, *j->new_s0, 1, nullptr);
      s0_now = *j->new_s0;
    }
  // Append the entries; roll the log block over when full (the full block is
  // saved to a block reserved when the job was queued, and entry 0 of the
  // next one records that).
  uint64_t entries_added = 0, bytes_added = 0;
  log.sector0 = s0_now * bsec;
  size_t next_lb = 0;
  for (const JobPtr& j : batch) {
    for (const Copy& c : j->copies) {
      if (!s.ok()) break;
      if (log.entries.size() == cap) {
        if (next_lb >= log_blocks.size()) {
          s = Status::Error(EIO, "bow: internal error: no log block reserved for a rollover");
          break;
        }
        uint64_t lb = log_blocks[next_lb++];
        std::vector<uint8_t> bytes = encode_log(log);
        s = dev_->write(lb * bs_, bytes);
        LogBlock next{bs_, log.sequence + 1, log.sector0,
                      {{0, lb * bsec, bs_, entry_checksum(0, bytes)}}};
        log = std::move(next);
        entries_added++;
      }
      log.entries.push_back({c.src * bsec, c.dst * bsec, static_cast<uint32_t>(c.n * bs_), c.crc});
      entries_added++;
      bytes_added += c.n * bs_;
    }
  }
  // Saved data (and saved log blocks) durable before the log names them; the
  // log durable before any write it protects goes down.
  if (s.ok()) s = dev_->flush();
  if (s.ok()) s = dev_->write(0, encode_log(log));
  if (s.ok()) s = dev_->flush();
  if (s0x.owns_lock()) {
    std::lock_guard g(mu_);
    if (s.ok()) sector0_block_ = s0_now;  // before block-0 I/O resumes
  }
  if (s0x.owns_lock()) s0x.unlock();
  s = write_deferred(s);

  l.lock();
  if (!s.ok()) {
    if (fatal_.ok())
      fatal_ = s.context("bow: saving blocks before a write failed; the target stopped (restore "
                         "with udm bow-restore or commit)");
    for (const JobPtr& j : batch) finish_job(*j, fatal_);
    for (uint64_t b : log_blocks) busy_remove(b, b + 1);
    committing_ = false;
    cv_.notify_all();
    return;
  }
  log_ = std::move(log);
  for (uint64_t b : log_blocks) busy_remove(b, b + 1);
  uint64_t s0 = old_s0;
  for (const JobPtr& j : batch) {
    for (const Copy& c : j->copies) map_.set(c.src, c.src + c.n, BlockType::kChanged);
    if (j->new_s0) {
      map_.set(s0, s0 + 1, BlockType::kChanged);
      map_.set(*j->new_s0, *j->new_s0 + 1, BlockType::kSector0);
      s0 = *j->new_s0;
    }
    finish_job(*j, Status::Ok());
  }
  stats_.entries += entries_added;
  stats_.backed_up_bytes += bytes_added;
  stats_.batches++;
  stats_.sequence = log_.sequence;
  committing_ = false;
  cv_.notify_all();
}

Status BowTarget::do_trim(uint64_t off, uint64_t len) {
  UDM_TRY(check_range(off, len, "trim"));
  std::shared_lock st(state_mu_);
  {
    std::lock_guard l(mu_);
    if (state_ == 0) {
      // Only whole blocks become free; block 0 never does (it becomes the log).
      uint64_t first = std::max<uint64_t>((off + bs_ - 1) / bs_, 1), last = (off + len) / bs_;
      if (first < last) map_.set(first, last, BlockType::kFree);
      return Status::Ok();
    }
    if (state_ == 1) return Status::Ok();  // accepted and dropped: see docs/bow.md
  }
  if (dev_->caps().can_trim) return dev_->trim(off, len);
  return Status::Ok();
}

Status BowTarget::do_flush() {
  {
    // Every write acknowledged before this flush must be on the device.
    std::unique_lock l(mu_);
    uint64_t target = next_seq_;
    cv_.wait(l, [&] { return done_seq_ >= target || !fatal_.ok(); });
    if (!fatal_.ok()) return fatal_;
  }
  return dev_->flush();
}

Result<TargetPtr> make_bow_target(const TargetParams& p) {
  if (p.args.empty()) return Invalid("bow: expected <dev> [<#opt_args> on_full=fail|drop block_size=N]");
  BowOptions opts;
  if (p.args.size() > 1) {
    UDM_ASSIGN_OR_RETURN(uint64_t n, parse_u64_arg(p.args[1], "bow: #opt_args"));
    if (n != p.args.size() - 2)
      return Invalid(fmt::format("bow: #opt_args is {} but {} optional arguments follow", n,
                                 p.args.size() - 2));
    for (size_t i = 2; i < p.args.size(); i++) {
      const std::string& a = p.args[i];
      if (a == "on_full=fail") opts.drop_on_full = false;
      else if (a == "on_full=drop") opts.drop_on_full = true;
      else if (a.rfind("block_size=", 0) == 0) {
        UDM_ASSIGN_OR_RETURN(uint64_t bs, parse_u64_arg(a.substr(11), "bow: block_size"));
        if (!valid_block_size(bs))
          return Invalid(fmt::format("bow: block_size {} is not a power of two in 512..65536", bs));
        opts.block_size = static_cast<uint32_t>(bs);
      } else {
        return Invalid(fmt::format("bow: unknown optional argument '{}' (expected on_full=fail, "
                                   "on_full=drop or block_size=N)", a));
      }
    }
  }
  UDM_ASSIGN_OR_RETURN(DevicePtr dev, p.resolver->open(p.args[0], true));
  UDM_ASSIGN_OR_RETURN(auto t, BowTarget::create(std::move(dev), p.length, opts));
  return TargetPtr(std::move(t));
}

}  // namespace udm::bow
