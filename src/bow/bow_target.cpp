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

BowTarget::~BowTarget() = default;

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
  std::shared_lock st(state_mu_);
  if (off < bs_ && !buf.empty()) {
    uint64_t n = std::min<uint64_t>(buf.size(), bs_ - off);
    UDM_TRY(io_block0_read(off, buf.first(n)));
    if (n == buf.size()) return Status::Ok();
    return dev_->read(off + n, buf.subspan(n));
  }
  return dev_->read(off, buf);
}

Status BowTarget::do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) {
  UDM_TRY(check_range(off, buf.size(), "write"));
  if (buf.empty()) return Status::Ok();
  return write_common(off, buf.size(), buf.data(), fua);
}

Status BowTarget::do_write_zeroes(uint64_t off, uint64_t len, bool fua) {
  UDM_TRY(check_range(off, len, "write_zeroes"));
  if (len == 0) return Status::Ok();
  return write_common(off, len, nullptr, fua);
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
      Job job;
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
          case BlockType::kBackup: job.runs.push_back(r); break;
          case BlockType::kSector0: job.move_sector0 = true; break;
          case BlockType::kChanged:
          case BlockType::kLog: break;  // block 0's I/O goes to the live copy
        }
      });
      if (job.runs.empty() && !job.move_sector0) break;
      for (const Run& r : job.runs) busy_add(r.start, r.end);
      if (job.move_sector0) busy_add(sector0_block_, sector0_block_ + 1);
      run_job(job, l);
      if (!job.result.ok()) return job.result;
      // Saved (or the state changed): look again.
    }
  }
  return lower_write(off, len, data, fua);
}

void BowTarget::run_job(Job& job, std::unique_lock<std::mutex>& l) {
  queue_.push_back(&job);
  while (!job.done) {
    if (!committer_active_) {
      // Commit one batch (it holds this job), then hand over: a waiting
      // writer whose job is still queued becomes the next committer, while
      // this one goes on with its own write.
      committer_active_ = true;
      std::vector<Job*> batch(queue_.begin(), queue_.end());
      queue_.clear();
      process_batch(std::move(batch), l);
      committer_active_ = false;
      cv_.notify_all();
    } else {
      cv_.wait(l);
    }
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

// Called with mu_ held; returns with it held. Every job in `batch` is done
// when it returns (ok, ENOSPC, fatal error, or retry after a drop).
void BowTarget::process_batch(std::vector<Job*> batch, std::unique_lock<std::mutex>& l) {
  auto release = [&](Job* j) {
    for (const Run& r : j->runs) busy_remove(r.start, r.end);
    if (j->move_sector0) busy_remove(sector0_block_, sector0_block_ + 1);
  };
  auto finish = [&](Job* j, Status s, bool retry) {
    release(j);
    j->result = std::move(s);
    j->retry = retry;
    j->done = true;
  };
  if (!fatal_.ok() || state_ != 1) {
    for (Job* j : batch) finish(j, fatal_, true);
    cv_.notify_all();
    return;
  }
  struct Plan {
    Job* job;
    std::vector<Copy> copies;
    std::vector<Run> allocated;
    std::optional<uint64_t> new_s0;
  };
  const uint64_t bsec = bs_ / 512;
  const uint32_t cap = log_capacity(bs_);
  std::vector<Plan> plans;
  bool want_drop = false;
  auto undo = [&](Plan& p) {
    for (const Run& a : p.allocated) {
      map_.set(a.start, a.end, BlockType::kFree);
      busy_remove(a.start, a.end);
    }
    p.allocated.clear();
    p.copies.clear();
  };
  auto alloc = [&](uint64_t max_len) -> std::optional<Run> {
    auto f = alloc_free(max_len);
    if (f) {
      map_.set(f->start, f->end, BlockType::kBackup);
      busy_add(f->start, f->end);
    }
    return f;
  };
  size_t new_entries = 0;
  for (Job* j : batch) {
    Plan p{j, {}, {}, std::nullopt};
    bool ok = true;
    for (const Run& r : j->runs) {
      for (uint64_t pos = r.start; ok && pos < r.end;) {
        auto f = alloc(std::min<uint64_t>(r.end - pos, kMaxCopyBytes / bs_));
        if (!f) {
          ok = false;
          break;
        }
        p.allocated.push_back(*f);
        p.copies.push_back({pos, f->start, f->end - f->start});
        pos += f->end - f->start;
      }
      if (!ok) break;
    }
    if (ok && j->move_sector0) {
      auto f = alloc(1);
      if (f) {
        p.allocated.push_back(*f);
        p.new_s0 = f->start;
      } else {
        ok = false;
      }
    }
    if (!ok) {
      undo(p);
      if (opts_.drop_on_full) {
        want_drop = true;
      } else {
        uint64_t need = 0;
        for (const Run& r : j->runs) need += r.end - r.start;
        finish(j, NoSpace(fmt::format("bow: no free space left to back up {} bytes before this "
                                      "write (on_full=fail)", need * bs_)),
               false);
      }
      continue;
    }
    new_entries += p.copies.size();
    plans.push_back(std::move(p));
  }
  // Log blocks for rollovers: each new log block takes one entry for the
  // saved previous log.
  std::vector<uint64_t> log_blocks;
  if (!want_drop && !plans.empty()) {
    size_t room = cap - log_.entries.size();
    size_t rollovers = new_entries > room ? (new_entries - room + cap - 2) / (cap - 1) : 0;
    for (size_t k = 0; k < rollovers; k++) {
      auto f = alloc(1);
      if (!f) break;
      log_blocks.push_back(f->start);
    }
    if (log_blocks.size() < rollovers) {
      for (uint64_t b : log_blocks) {
        map_.set(b, b + 1, BlockType::kFree);
        busy_remove(b, b + 1);
      }
      log_blocks.clear();
      for (Plan& p : plans) {
        undo(p);
        if (!opts_.drop_on_full)
          finish(p.job, NoSpace("bow: no free space left for the log (on_full=fail)"), false);
      }
      if (opts_.drop_on_full) want_drop = true;
      else plans.clear();
    }
  }
  if (want_drop) {
    for (Plan& p : plans) undo(p);
    std::vector<Job*> rest;
    for (Job* j : batch)
      if (!j->done) rest.push_back(j);
    l.unlock();
    Status s;
    {
      std::unique_lock s0(s0_mu_);
      s = commit(true);
    }
    l.lock();
    for (Job* j : rest) finish(j, s, true);
    cv_.notify_all();
    return;
  }
  if (plans.empty()) {
    cv_.notify_all();
    return;
  }
  bool moving_s0 = false;
  for (const Plan& p : plans) moving_s0 |= p.new_s0.has_value();
  const uint64_t old_s0 = sector0_block_;
  l.unlock();

  std::unique_lock<std::shared_mutex> s0x(s0_mu_, std::defer_lock);
  if (moving_s0) s0x.lock();  // no block-0 I/O while the live block 0 moves
  Status s;
  // Copies whose dests follow each other (next-fit allocation makes most of
  // a batch contiguous) are gathered into one buffer and written at once.
  std::vector<Copy*> all;
  for (Plan& p : plans)
    for (Copy& c : p.copies) all.push_back(&c);
  std::vector<uint8_t> gather;
  for (size_t i = 0; i < all.size() && s.ok();) {
    size_t j = i + 1;
    uint64_t n = all[i]->n;
    while (j < all.size() && all[j]->dst == all[j - 1]->dst + all[j - 1]->n &&
           (n + all[j]->n) * bs_ <= kMaxCopyBytes) {
      n += all[j]->n;
      j++;
    }
    if (j == i + 1 && n * bs_ > (1u << 20)) {
      s = copy_blocks(all[i]->src, all[i]->dst, all[i]->n, &all[i]->crc);
    } else {
      gather.resize(n * bs_);
      uint64_t pos = 0;
      for (size_t k = i; k < j && s.ok(); k++) {
        auto piece = std::span<uint8_t>(gather.data() + pos, all[k]->n * bs_);
        s = dev_->read(all[k]->src * bs_, piece);
        all[k]->crc = entry_checksum(all[k]->src, piece);
        pos += piece.size();
      }
      if (s.ok()) s = dev_->write(all[i]->dst * bs_, gather);
    }
    i = j;
  }
  for (Plan& p : plans)
    if (s.ok() && p.new_s0) s = copy_blocks(old_s0, *p.new_s0, 1, nullptr);
  // Append the entries; roll the log block over when full (the full block is
  // saved to a free block and entry 0 of the next one records that).
  LogBlock log = log_;
  uint64_t entries_added = 0, bytes_added = 0;
  size_t next_log_block = 0;
  for (Plan& p : plans) {
    if (p.new_s0) log.sector0 = *p.new_s0 * bsec;
    for (const Copy& c : p.copies) {
      if (!s.ok()) break;
      if (log.entries.size() == cap) {
        uint64_t lb = log_blocks[next_log_block++];
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
  // log durable before any of the writes that wait on it go down.
  if (s.ok()) s = dev_->flush();
  if (s.ok()) s = dev_->write(0, encode_log(log));
  if (s.ok()) s = dev_->flush();

  l.lock();
  if (!s.ok()) {
    fatal_ = s.context("bow: saving blocks before a write failed; the target stopped (restore "
                       "with udm bow-restore or commit)");
    for (Plan& p : plans) {
      for (const Run& a : p.allocated) busy_remove(a.start, a.end);
      finish(p.job, fatal_, false);
    }
    for (uint64_t b : log_blocks) busy_remove(b, b + 1);
    cv_.notify_all();
    return;
  }
  log_ = std::move(log);
  for (Plan& p : plans) {
    for (const Copy& c : p.copies) map_.set(c.src, c.src + c.n, BlockType::kChanged);
    for (const Run& a : p.allocated) busy_remove(a.start, a.end);
    if (p.new_s0) {
      map_.set(old_s0, old_s0 + 1, BlockType::kChanged);
      map_.set(*p.new_s0, *p.new_s0 + 1, BlockType::kSector0);
      sector0_block_ = *p.new_s0;
      busy_remove(old_s0, old_s0 + 1);
      p.job->move_sector0 = false;  // already released
    }
    finish(p.job, Status::Ok(), false);
  }
  for (uint64_t b : log_blocks) busy_remove(b, b + 1);
  stats_.entries += entries_added;
  stats_.batches++;
  stats_.backed_up_bytes += bytes_added;
  stats_.sequence = log_.sequence;
  if (s0x.owns_lock()) s0x.unlock();
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

Status BowTarget::do_flush() { return dev_->flush(); }

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
