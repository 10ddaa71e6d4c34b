#include "bow/bow_target.h"
#include "device/allocation.h"

#include <fmt/format.h>

#include "bow/restore.h"
#include "device/target_args.h"
#include "util/crc.h"
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
  if (t->log_.committing) {
    // A commit was under way when the device stopped: finish it before any
    // I/O (the copies may be half zeroed: the log cannot be restored now).
    Status s = t->commit_io(t->sector0_block_, t->owned_runs(), true);
    if (!s.ok()) return s.context("bow: finishing the interrupted commit");
    t->enter_passthrough(false);
    t->stats_.commit_finished = true;
    udm::log::info("bow: finished a commit that was interrupted; pass-through");
  }
  t->committer_ = std::thread([p = t.get()] { p->committer_loop(); });
  return t;
}

// A device whose block 0 holds a log is in state 1 already (a crash or a
// restart during a checkpoint): rebuild what the log tells. Free space is not
// known any more (the trims of the earlier session are gone and cannot be
// trusted again: a block freed after the checkpoint may hold checkpoint data),
// so the resumed target has none; blocks the log names as saved (sources) are
// CHANGED, their copies (dests, saved log blocks included) are BACKUP and the
// live block 0 is SECTOR0: the filesystem sees those as free, so they read as
// zeroes, as they did before the restart.
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
  // A log marked as being committed may have lost older log blocks already
  // (zeroed oldest first, after every saved copy): read what is left.
  copts.allow_committing = copts.tolerant = log.value().committing;
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
  if (log_.intent != 0) {
    // Blocks the last group commit was filling or superseding when the device
    // stopped: all were free in the filesystem's view, so they are zeroed
    // unless the log names them as bow's (see the intent in bow_format.h).
    const uint64_t ib = log_.intent / bsec;
    if (map_.at(ib) != BlockType::kUnchanged)
      return Corrupt(fmt::format("bow: the log's intent block {} is also a saved block or a copy",
                                 ib));
    map_.set(ib, ib + 1, BlockType::kIntent);  // free in the filesystem's view: masked
    intent_block_ = ib;
    std::vector<uint8_t> ibuf(bs_);
    UDM_TRY(dev_->read(ib * bs_, ibuf));
    auto ranges = decode_intent(ibuf, bs_, size_);
    if (!ranges.ok()) return ranges.status().context("bow: the log's intent block is damaged");
    std::vector<std::pair<uint64_t, uint64_t>> stale;
    for (const IntentRange& r : ranges.value())
      map_.visit(r.sector / bsec, r.sector / bsec + r.bytes / bs_, [&](const Run& x) {
        // Copies, the live block 0 and the intent the log names are kept;
        // the rest were free when listed and hold a copy that never got
        // logged, or bow's data superseded by a write that is not durable.
        if (x.type != BlockType::kUnchanged && x.type != BlockType::kChanged) return;
        if (!stale.empty() && stale.back().second == x.start) stale.back().second = x.end;
        else stale.push_back({x.start, x.end});
      });
    if (!ranges.value().empty()) {
      for (const auto& [a, e] : stale) UDM_TRY(dev_->write_zeroes(a * bs_, (e - a) * bs_, false, true));
      UDM_TRY(dev_->flush());
      UDM_TRY(dev_->write(ib * bs_, encode_intent({}, bs_)));
      UDM_TRY(dev_->flush());
      for (const auto& [a, e] : stale) stats_.unlogged_zeroed_bytes += (e - a) * bs_;
    }
  }
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
  // Not every byte of a trim reads zero afterwards: partial blocks are left
  // alone, state 1 drops trims, state 2 passes them to the device as they are.
  c.trim_zeroes = false;
  // Zeroing in-use blocks in state 1 copies them first: not cheaper than writing.
  c.fast_zero = false;
  c.can_write_zeroes = true;
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
  uint64_t live, saved, intent;
  {
    std::lock_guard l(mu_);
    uint64_t nfree = map_.count(BlockType::kFree);
    if (nfree < 3)
      return NoSpace(fmt::format(
          "bow: state 1 needs at least 3 free blocks, {} known (trim the filesystem first: fstrim)",
          nfree));
    // The live block 0, the saved original, and the intent block.
    auto a = map_.find_free(1);
    map_.set(a->start, a->end, BlockType::kSector0);
    auto b = map_.find_free(1);
    map_.set(b->start, b->end, BlockType::kBackup);
    auto c = map_.find_free(1);
    map_.set(c->start, c->end, BlockType::kIntent);
    map_.set(0, 1, BlockType::kLog);
    written_.assign(blocks_ / 64 + 1, 0);
    written_free_ = 0;
    live = a->start;
    saved = b->start;
    intent = c->start;
  }
  const uint64_t bsec = bs_ / 512;
  std::vector<uint8_t> x0(bs_);
  Status s = dev_->read(0, x0);
  if (s.ok()) s = dev_->write(live * bs_, x0);
  if (s.ok()) s = dev_->write(saved * bs_, x0);
  if (s.ok()) s = dev_->flush();  // both copies durable before the log names them
  LogBlock log{bs_, 0, live * bsec, {{0, saved * bsec, bs_, entry_checksum(0, x0)}}};
  log.intent = intent * bsec;  // zero (it was free): an empty intent
  bool log_written = false;
  if (s.ok()) {
    log_written = true;
    s = dev_->write(0, encode_log(log));
  }
  if (s.ok()) s = dev_->flush();
  bool zeroed[2] = {false, false};
  if (!s.ok() && !log_written) {
    // The copies of block 0 may have reached the two free blocks: zero them
    // again (free blocks are zero on the device), or keep them out of free
    // space if even that fails.
    zeroed[0] = dev_->write_zeroes(live * bs_, bs_, false, true).ok();
    zeroed[1] = dev_->write_zeroes(saved * bs_, bs_, false, true).ok();
  }
  std::lock_guard l(mu_);
  if (!s.ok()) {
    if (log_written) {
      // Block 0 may or may not hold the log now: stop, like any failed backup.
      fatal_ = s.context("bow: writing the log failed; the target stopped");
      return fatal_;
    }
    map_.set(0, 1, BlockType::kUnchanged);
    map_.set(live, live + 1, zeroed[0] ? BlockType::kFree : BlockType::kUnchanged);
    map_.set(saved, saved + 1, zeroed[1] ? BlockType::kFree : BlockType::kUnchanged);
    map_.set(intent, intent + 1, BlockType::kFree);  // never written
    return s.context("bow: checkpoint");
  }
  log_ = std::move(log);
  virtual_fill_ = 1;
  sector0_block_ = live;
  intent_block_ = intent;
  state_ = 1;
  stats_.entries = 1;
  stats_.backed_up_bytes = bs_;
  stats_.sequence = 0;
  udm::log::info("bow: checkpoint taken; {} bytes of free space for backups",
               map_.count(BlockType::kFree) * bs_);
  return Status::Ok();
}

// Caller holds s0_mu_ exclusively (no block-0 I/O in flight) and the
// committer has nothing in hand.
Status BowTarget::commit(bool dropped) {
  uint64_t live;
  std::vector<std::pair<uint64_t, uint64_t>> backups;
  {
    std::lock_guard l(mu_);
    if (state_ != 1) return Status::Ok();
    live = sector0_block_;
    backups = owned_runs();
  }
  std::unique_lock im(intent_mu_);  // no flush rewrites the intent meanwhile
  Status s = commit_io(live, std::move(backups), false);
  intent_dirty_ = false;
  std::lock_guard l(mu_);
  if (!s.ok()) {
    fatal_ = s.context("bow: commit failed; the target stopped (create it again over the device "
                       "to finish the commit)");
    return fatal_;
  }
  enter_passthrough(dropped);
  udm::log::info("bow: {}", dropped ? "out of free space: backup dropped (on_full=drop), now "
                                    "pass-through; the checkpoint can no longer be restored"
                                  : "committed; pass-through");
  return Status::Ok();
}

std::vector<std::pair<uint64_t, uint64_t>> BowTarget::owned_runs() const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  map_.visit(0, blocks_, [&](const Run& r) {
    if (r.type != BlockType::kBackup && r.type != BlockType::kIntent) return;
    if (!out.empty() && out.back().second == r.start) out.back().second = r.end;
    else out.push_back({r.start, r.end});
  });
  return out;
}

// mu_ held (or no other thread yet).
void BowTarget::enter_passthrough(bool dropped) {
  state_ = 2;
  map_ = RangeMap(blocks_, BlockType::kChanged);
  written_.clear();
  written_.shrink_to_fit();
  written_free_ = 0;
  log_ = LogBlock{};
  if (dropped) stats_.dropped = true;
  cv_.notify_all();
}

// The commit, crash-safe at every write (docs/bow.md, "Commit"). The saved
// copies, saved log blocks and the live block 0 sit in blocks the filesystem
// sees as free, which must read as zeroes once the target passes through, so
// they are zeroed on the device; but not before the log has stopped being a
// restorable checkpoint:
//  1. flush; block 0 gets the same log with the commit mark; flush. From now
//     on restore refuses the device and a new target finishes the commit.
//  2. zero every saved copy except the saved log blocks; flush. (The chain
//     still reads whole, so a restarted target finds every copy to zero.)
//  3. zero the saved log blocks oldest first, each flushed before the next:
//     a restarted target reads the chain up to the first zeroed one, and all
//     older ones are zero already.
//  4. copy the live block 0 home (one block write: the marked log or the real
//     block 0, never a mix); flush.
//  5. zero the old home of the live block 0; flush.
// A cut between 4 and 5 leaves that one block holding a copy of block 0: the
// device no longer says where it was (no log), so nothing can find it.
Status BowTarget::commit_io(uint64_t live, std::vector<std::pair<uint64_t, uint64_t>> backups,
                            bool marked) {
  Status s = dev_->flush();
  if (s.ok() && !marked) {
    LogBlock m = log_;
    m.committing = true;
    s = dev_->write(0, encode_log(m));
    if (s.ok()) s = dev_->flush();
  }
  std::vector<uint64_t> logs;  // newest first
  if (s.ok()) {
    ChainOptions o;
    o.verify = false;
    o.allow_committing = o.tolerant = true;
    auto c = read_chain(*dev_, o);
    if (c.ok()) logs = std::move(c.value().log_blocks);
    else s = c.status().context("reading the log chain");
  }
  auto in_backups = [&](uint64_t b) {
    auto it = std::upper_bound(backups.begin(), backups.end(), std::make_pair(b, UINT64_MAX));
    return it != backups.begin() && std::prev(it)->second > b;
  };
  std::vector<uint64_t> log_set;
  for (uint64_t b : logs)
    if (in_backups(b)) log_set.push_back(b);
  std::sort(log_set.begin(), log_set.end());
  uint64_t zeroed = 0;
  auto zero = [&](uint64_t a, uint64_t e) {
    if (a >= e || !s.ok()) return;
    s = dev_->write_zeroes(a * bs_, (e - a) * bs_, false, /*may_unmap=*/true);
    zeroed += (e - a) * bs_;
  };
  // 2. the copies, around the saved log blocks
  auto lit = log_set.begin();
  for (const auto& [a, e] : backups) {
    uint64_t pos = a;
    while (lit != log_set.end() && *lit < a) ++lit;
    for (; lit != log_set.end() && *lit < e; ++lit) {
      zero(pos, *lit);
      pos = *lit + 1;
    }
    zero(pos, e);
  }
  if (s.ok()) s = dev_->flush();
  // 3. the saved log blocks, oldest first
  for (auto it = logs.rbegin(); it != logs.rend() && s.ok(); ++it) {
    if (!in_backups(*it)) continue;
    zero(*it, *it + 1);
    if (s.ok()) s = dev_->flush();
  }
  // 4. block 0 home
  std::vector<uint8_t> b(bs_);
  if (s.ok()) s = dev_->read(live * bs_, b);
  if (s.ok()) s = dev_->write(0, b);
  if (s.ok()) s = dev_->flush();
  // 5. its old place
  zero(live, live + 1);
  if (s.ok()) s = dev_->flush();
  if (s.ok()) stats_.zeroed_bytes += zeroed;
  return s;
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

uint64_t BowTarget::block0_base() const {
  std::lock_guard l(mu_);
  return state_ == 1 ? sector0_block_ * bs_ : 0;
}

Status BowTarget::io_block0_read(uint64_t off, std::span<uint8_t> buf) {
  std::shared_lock s0(s0_mu_);
  return dev_->read(block0_base() + off, buf);
}

Status BowTarget::io_block0_write(uint64_t off, uint64_t len, const uint8_t* data, bool fua) {
  std::shared_lock s0(s0_mu_);
  const uint64_t base = block0_base();
  if (!data) return dev_->write_zeroes(base + off, len, fua);
  return dev_->write(base + off, std::span<const uint8_t>(data, len), fua);
}

// Writes [off, off+len) to the device, or zeroes it when data is null
// (unmap: it may be deallocated); block 0's bytes go to the live copy.
Status BowTarget::lower_write(uint64_t off, uint64_t len, const uint8_t* data, bool fua, bool unmap) {
  if (off < bs_) {
    uint64_t n = std::min<uint64_t>(len, bs_ - off);
    UDM_TRY(io_block0_write(off, n, data, fua));
    off += n;
    len -= n;
    if (data) data += n;
    if (len == 0) return Status::Ok();
  }
  if (!data) return dev_->write_zeroes(off, len, fua, unmap);
  return dev_->write(off, std::span<const uint8_t>(data, len), fua);
}

void BowTarget::masked_ranges(uint64_t off, uint64_t len,
                              std::vector<std::pair<uint64_t, uint64_t>>& out) const {
  const uint64_t end = off + len;
  auto add = [&](uint64_t a, uint64_t e) {  // blocks
    uint64_t x = std::max(off, a * bs_), y = std::min(end, e * bs_);
    if (x >= y) return;
    if (!out.empty() && out.back().second == x) out.back().second = y;
    else out.push_back({x, y});
  };
  map_.visit(off / bs_, (end + bs_ - 1) / bs_, [&](const Run& r) {
    switch (r.type) {
      case BlockType::kFree:
        if (written_free_ == 0) {
          add(r.start, r.end);
        } else {
          for (uint64_t b = r.start; b < r.end; b++)
            if (!written(b)) add(b, b + 1);
        }
        break;
      case BlockType::kBackup:
      case BlockType::kSector0:
      case BlockType::kIntent: add(r.start, r.end); break;
      default: break;
    }
  });
}

Status BowTarget::do_read(uint64_t off, std::span<uint8_t> buf) {
  if (buf.empty()) return Status::Ok();
  std::shared_lock st(state_mu_);
  // Write-back jobs not yet on the device: their data is laid over what the
  // device returns (their blocks are busy, so nothing else writes them).
  std::vector<JobPtr> over;
  // Blocks free in the filesystem's view that bow may have filled (state 1):
  // they read as zeroes. Their types cannot change under this read in a way
  // that matters: a masked block only stops being masked when it is written
  // (concurrently with this read, so zeroes are its value before that write),
  // and an unmasked block never receives bow's data.
  std::vector<std::pair<uint64_t, uint64_t>> zeroed;
  {
    std::lock_guard l(mu_);
    if (state_ == 1) masked_ranges(off, buf.size(), zeroed);
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
  // Read what is not masked (a read wholly inside masked blocks reads nothing).
  uint64_t pos = off;
  auto read_dev = [&](uint64_t a, uint64_t e) -> Status {
    if (a >= e) return Status::Ok();
    auto part = buf.subspan(a - off, e - a);
    if (a < bs_) {
      uint64_t n = std::min<uint64_t>(e, bs_) - a;
      UDM_TRY(io_block0_read(a, part.first(n)));
      if (n < part.size()) UDM_TRY(dev_->read(a + n, part.subspan(n)));
      return Status::Ok();
    }
    return dev_->read(a, part);
  };
  for (const auto& [a, e] : zeroed) {
    UDM_TRY(read_dev(pos, a));
    std::fill(buf.begin() + (a - off), buf.begin() + (e - off), 0);
    pos = e;
  }
  UDM_TRY(read_dev(pos, off + buf.size()));
  for (const JobPtr& j : over) {
    uint64_t a = std::max(off, j->off), e = std::min(off + buf.size(), j->off + j->len);
    if (j->data.empty()) std::fill(buf.begin() + (a - off), buf.begin() + (e - off), 0);
    else std::copy(j->data.begin() + (a - j->off), j->data.begin() + (e - j->off), buf.begin() + (a - off));
  }
  return Status::Ok();
}

Status BowTarget::do_allocation(uint64_t off, uint64_t len, AllocMap& out) {
  std::shared_lock st(state_mu_);
  const uint64_t end = off + len;
  std::vector<std::pair<uint64_t, uint64_t>> holes, busy;  // byte ranges
  int state;
  {
    std::lock_guard l(mu_);
    state = state_;
    if (state == 1) {
      masked_ranges(off, len, holes);
    } else if (state == 0) {
      map_.visit(off / bs_, (end + bs_ - 1) / bs_, [&](const Run& r) {
        if (r.type != BlockType::kFree) return;
        uint64_t x = std::max(off, r.start * bs_), y = std::min(end, r.end * bs_);
        if (x < y) holes.push_back({x, y});
      });
    }
    // Blocks being written or saved, and queued writes: their bytes may be
    // about to change, or lie over the device's.
    for (const auto& [s, e] : busy_) busy.push_back({s * bs_, e * bs_});
    for (const auto& [b, j] : deferred_) busy.push_back({j->off, j->off + j->len});
  }
  // holes minus busy (both sorted by start; busy may overlap itself).
  std::sort(busy.begin(), busy.end());
  std::vector<std::pair<uint64_t, uint64_t>> kept;
  for (auto [a, e] : holes) {
    for (const auto& [bs, be] : busy) {
      if (be <= a || bs >= e) continue;
      if (bs > a) kept.push_back({a, bs});
      a = std::max(a, be);
      if (a >= e) break;
    }
    if (a < e) kept.push_back({a, e});
  }
  uint64_t pos = off;
  auto between = [&](uint64_t a, uint64_t e) -> Status {
    if (a >= e) return Status::Ok();
    if (state == 1) {
      add_alloc_run(out, e - a, AllocKind::kData);
      return Status::Ok();
    }
    uint64_t covered = 0;
    UDM_TRY(append_allocation(*dev_, a, e - a, out, 0, covered));
    if (covered < e - a) return Status::Error(ENOBUFS, "full");  // a prefix is enough
    return Status::Ok();
  };
  for (const auto& [a, e] : kept) {
    Status s = between(pos, a);
    if (s.code() == ENOBUFS) return Status::Ok();
    UDM_TRY(s);
    add_alloc_run(out, e - a, AllocKind::kHole);
    pos = e;
    if (out.size() >= kMaxAllocRuns) return Status::Ok();
  }
  Status s = between(pos, end);
  return s.code() == ENOBUFS ? Status::Ok() : s;
}

Status BowTarget::do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) {
  if (buf.empty()) return Status::Ok();
  return write_common(off, buf.size(), buf.data(), fua, false);
}

Status BowTarget::do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool may_unmap) {
  if (len == 0) return Status::Ok();
  return write_common(off, len, nullptr, fua, may_unmap);
}

namespace {
constexpr uint64_t kMaxPendingBytes = 64u << 20;  // write-back data held at most
}

bool BowTarget::plan_job(Job& job, const std::vector<Run>& runs, bool move_s0, bool move_intent) {
  const uint32_t cap = log_fill_limit(bs_);
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
      if (virtual_fill_ >= cap) {  // this entry opens a new log block
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
  if (ok && move_intent) {
    auto f = take(1);
    if (f) job.new_intent = f->start;
    else ok = false;
  }
  if (!ok) {
    for (const Run& a : got) map_.set(a.start, a.end, BlockType::kFree);
    for (uint64_t b : logs) map_.set(b, b + 1, BlockType::kFree);
    virtual_fill_ = fill0;
    job.copies.clear();
    job.new_s0.reset();
    job.new_intent.reset();
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
  if (j.carried) {
    deferred_.erase(j.b0);
    pending_bytes_ -= j.len;
  }
  j.result = std::move(s);
  j.done = true;
  done_seq_ = std::max(done_seq_, j.seq);
}

// State 0 (mu_ held, [b0, b1) not busy). Every block touched is in use
// again ("un-trim"), except that a zero-out allowed to unmap frees the whole
// blocks it covers; freed blocks are zeroed on the device, so they read as
// zeroes now, after a restart, and in every later state. The blocks stay busy
// until the device has the write, so a trim or zero-out and a write of the
// same block reach the device in the order their map updates were made.
Status BowTarget::write_state0(std::unique_lock<std::mutex>& l, uint64_t off, uint64_t len,
                               const uint8_t* data, bool fua, bool unmap) {
  const uint64_t b0 = off / bs_, b1 = (off + len + bs_ - 1) / bs_;
  const uint64_t f0 = std::max<uint64_t>((off + bs_ - 1) / bs_, 1), f1 = (off + len) / bs_;
  const bool freeing = !data && unmap && f0 < f1;
  map_.set(std::max<uint64_t>(b0, 1), b1, BlockType::kUnchanged);
  if (freeing) map_.set(f0, f1, BlockType::kFree);
  busy_add(b0, b1);
  l.unlock();
  Status s = lower_write(off, len, data, fua, unmap);
  l.lock();
  if (!s.ok() && freeing) map_.set(f0, f1, BlockType::kUnchanged);  // not known to be zero
  busy_remove(b0, b1);
  cv_.notify_all();
  return s;
}

Status BowTarget::write_common(uint64_t off, uint64_t len, const uint8_t* data, bool fua,
                               bool unmap) {
  std::shared_lock st(state_mu_);
  const uint64_t b0 = off / bs_, b1 = (off + len + bs_ - 1) / bs_;
  const uint64_t end = off + len;
  {
    std::unique_lock l(mu_);
    for (;;) {
      if (!fatal_.ok()) return fatal_;
      if (state_ == 2) break;
      if (busy_overlaps(b0, b1)) {
        cv_.wait(l);
        continue;
      }
      if (state_ == 0) return write_state0(l, off, len, data, fua, unmap);
      // State 1. Data: UNCHANGED and BACKUP blocks are saved first, the live
      // block 0 moves away from a block being written, and a partial write
      // into a masked block (BACKUP, SECTOR0: they read as zeroes) fills the
      // rest of the block with zeroes. Zeroes: only UNCHANGED blocks are saved
      // (dm-bow's rule: their old contents must survive for a rollback);
      // masked and FREE blocks already read as zeroes and are left alone
      // (zeroing them on the device could race with their use as backup
      // space); the rest is zeroed on the device. Blocks written since the
      // checkpoint are not taken back as backup space: like dm-bow, free
      // space only shrinks after the checkpoint.
      std::vector<Run> runs;
      std::vector<std::pair<uint64_t, uint64_t>> sup;  // bow-owned blocks this write overwrites
      std::vector<std::pair<uint64_t, uint64_t>> zr;  // bytes to zero on the device
      bool move_s0 = false, move_intent = false, pad_head = false, pad_tail = false;
      auto zero_blocks = [&](uint64_t a, uint64_t e) {
        uint64_t x = std::max(off, a * bs_), y = std::min(end, e * bs_);
        if (x >= y) return;
        if (!zr.empty() && zr.back().second == x) zr.back().second = y;
        else zr.push_back({x, y});
      };
      auto pad_check = [&](const Run& r) {
        if (r.start == b0 && off % bs_ != 0) pad_head = true;
        if (r.end == b1 && end % bs_ != 0) pad_tail = true;
      };
      map_.visit(b0, b1, [&](const Run& r) {
        switch (r.type) {
          case BlockType::kFree:
            for (uint64_t b = r.start; b < r.end; b++) {
              uint64_t& w = written_[b / 64];
              uint64_t bit = 1ull << (b % 64);
              if (!data) {
                if (w & bit) zero_blocks(b, b + 1);
              } else if (!(w & bit)) {
                w |= bit;
                written_free_++;
              }
            }
            break;
          case BlockType::kUnchanged:
            runs.push_back(r);
            if (!data) zero_blocks(r.start, r.end);
            break;
          case BlockType::kBackup:
          case BlockType::kSector0:
          case BlockType::kIntent:
            // bow's data in blocks free in the filesystem's view: a write saves
            // (copies) or moves (the live block 0, the intent) it first.
            if (data) {
              if (r.type == BlockType::kBackup) runs.push_back(r);
              else (r.type == BlockType::kSector0 ? move_s0 : move_intent) = true;
              sup.push_back({r.start, r.end});
              pad_check(r);
            }
            break;
          case BlockType::kChanged:
          case BlockType::kLog:  // block 0's I/O goes to the live copy
            if (!data) zero_blocks(r.start, r.end);
            break;
        }
      });
      const bool pad = pad_head || pad_tail;
      if (runs.empty() && !move_s0 && !move_intent && !pad) {
        if (data) break;
        // Zeroes needing no backup.
        if (zr.empty()) {
          l.unlock();
          return fua ? dev_->flush() : Status::Ok();
        }
        busy_add(b0, b1);
        l.unlock();
        Status s;
        for (const auto& [a, e] : zr)
          if (s.ok()) s = lower_write(a, e - a, nullptr, false, unmap);
        if (s.ok() && fua) s = dev_->flush();
        l.lock();
        busy_remove(b0, b1);
        cv_.notify_all();
        return s;
      }
      auto job = std::make_shared<Job>();
      if (!plan_job(*job, runs, move_s0, move_intent)) {
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
      const bool write_back = opts_.write_back && !fua && pending_bytes_ + len <= kMaxPendingBytes;
      // A write over bow's own blocks is sent down by the committer, so it is
      // on the device before the next intent (or a flush) stops listing them.
      job->carried = write_back || pad || !sup.empty();
      job->superseded = std::move(sup);
      job->waited = !write_back;
      const uint64_t poff = pad_head ? b0 * bs_ : off, pend = pad_tail ? b1 * bs_ : end;
      if (job->carried) {
        job->busy.push_back({b0, b1});  // the whole write: later writes wait for it
        job->off = poff;
        job->len = pend - poff;
        job->b0 = b0;
        job->fua = fua;
        job->zero = !data;
        job->unmap = unmap;
        job->zero_ranges = std::move(zr);
        pending_bytes_ += job->len;
      } else {
        for (const Run& r : runs) job->busy.push_back({r.start, r.end});
        if (move_s0) job->busy.push_back({sector0_block_, sector0_block_ + 1});
        if (move_intent) job->busy.push_back({intent_block_, intent_block_ + 1});
      }
      for (const auto& [a, b] : job->busy) busy_add(a, b);
      if (job->carried && data) {
        // Copy the data without the lock (the blocks are busy: nobody else
        // writes them; reads see the old data until the write is queued,
        // which is fine: it is not acknowledged yet).
        l.unlock();
        job->data.assign(pend - poff, 0);
        std::copy(data, data + len, job->data.begin() + (off - poff));
        l.lock();
      }
      if (job->carried) deferred_[b0] = job;
      job->seq = ++next_seq_;
      queue_.push_back(job);
      cv_.notify_all();
      if (!job->waited) return Status::Ok();
      cv_.wait(l, [&] { return job->done; });
      if (!job->result.ok()) return job->result;
      if (job->carried) return Status::Ok();  // the committer wrote it
      // Saved: look again (the blocks are CHANGED now).
    }
  }
  if (!data) return dev_->write_zeroes(off, len, fua, unmap);  // state 2: pass-through
  return lower_write(off, len, data, fua);
}

// Sends a carried job's write down (after its backups are durable, or in
// pass-through once the checkpoint is gone).
Status BowTarget::write_carried(const Job& j) {
  if (!j.zero) return lower_write(j.off, j.len, j.data.data(), j.fua);
  Status s;
  for (const auto& [a, e] : j.zero_ranges)
    if (s.ok()) s = lower_write(a, e - a, nullptr, false, j.unmap);
  if (s.ok() && j.fua) s = dev_->flush();
  return s;
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
    if (crc) *crc = crc32_ieee_raw(*crc, buf.data(), buf.size());
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
      if (j->carried && s.ok()) s = write_carried(*j);
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
  const uint32_t cap = log_fill_limit(bs_);
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
      if (fill >= cap) {
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
  std::unique_lock im(intent_mu_);
  Status s;
  std::vector<Copy*> all;
  for (const JobPtr& j : batch)
    for (Copy& c : j->copies) all.push_back(&c);
  std::vector<uint64_t> new_s0s;
  for (const JobPtr& j : batch)
    if (j->new_s0) new_s0s.push_back(*j->new_s0);
  const uint32_t icap = intent_capacity(bs_);
  // Which copies open a new log block (and so save the full one first).
  std::vector<bool> rolls(all.size(), false);
  {
    size_t fill = log.entries.size();
    for (size_t i = 0; i < all.size(); i++) {
      if (fill >= cap) {
        rolls[i] = true;
        fill = 1;
      }
      fill++;
    }
  }
  // The batch goes in parts (one, unless its free blocks make more ranges
  // than an intent block holds): intent block listing every free block the
  // part fills, flush; copies and saved log blocks; flush; log; flush.
  uint64_t entries_added = 0, bytes_added = 0;
  uint64_t s0_now = old_s0;
  size_t next_lb = 0;
  std::vector<uint8_t>& gather = gather_;  // kept: no page faults per batch
  bool moves = !new_s0s.empty();
  for (const JobPtr& j : batch) moves |= j->new_intent.has_value();
  // Listed in every part: new homes of the live block 0 and of the intent
  // (they receive copies), and bow's blocks the batch's writes overwrite
  // (stale until those writes are durable; at most half an intent block of
  // them: past that a cut may leave them showing their old copies).
  std::vector<std::pair<uint64_t, uint64_t>> extra;
  std::vector<uint64_t> intent_copies;  // the intent is also written at its next home
  for (uint64_t b : new_s0s) extra.push_back({b, b + 1});
  for (const JobPtr& j : batch)
    if (j->new_intent) {
      extra.push_back({*j->new_intent, *j->new_intent + 1});
      intent_copies.push_back(*j->new_intent);
    }
  bool sup_any = false;
  for (const JobPtr& j : batch)
    for (const auto& r : j->superseded) {
      sup_any = true;
      if (extra.size() < icap / 2) extra.push_back(r);
    }
  for (size_t i0 = 0; (i0 < all.size() || (i0 == 0 && moves)) && s.ok();) {
    // The part: copies [i0, i1), plus the live block 0 moves in the last part.
    std::vector<IntentRange> ranges;
    auto add = [&](uint64_t b, uint64_t n) {
      if (!ranges.empty() && ranges.back().sector + ranges.back().bytes / 512 == b * bsec)
        ranges.back().bytes += n * bs_;
      else ranges.push_back({b * bsec, n * bs_});
    };
    size_t i1 = i0, lb_used = 0;
    const size_t budget = icap > extra.size() ? icap - extra.size() : 1;
    while (i1 < all.size()) {
      auto saved = ranges;
      if (rolls[i1] && next_lb + lb_used < log_blocks.size()) add(log_blocks[next_lb + lb_used], 1);
      add(all[i1]->dst, all[i1]->n);
      if (ranges.size() > budget && i1 > i0) {
        ranges = std::move(saved);
        break;
      }
      if (rolls[i1]) lb_used++;
      i1++;
    }
    const bool last = i1 == all.size();
    for (const auto& [a, e] : extra) add(a, e - a);
    if (ranges.size() > icap) {
      s = Status::Error(EIO, "bow: internal error: a copy needs more ranges than an intent holds");
      break;
    }
    if (log.intent != 0) {  // (a log written by another implementation has none)
      auto bytes = encode_intent(ranges, bs_);
      s = dev_->write(log.intent * 512, bytes);
      if (s.ok()) s = dev_->flush();  // durable before any listed block changes
      // If the intent moves, its next home gets the same list (whichever
      // the durable log names after a cut tells what to zero), written only
      // now: the next home is a listed block, free in the filesystem's view,
      // and must not receive bytes before the list naming it is durable (a
      // cut could otherwise keep this copy and lose the list, leaving an
      // intent block in free space that nothing names). It is durable with
      // the copies, before the log points at it.
      for (uint64_t b : intent_copies)
        if (s.ok()) s = dev_->write(b * bs_, bytes);
    }
    // Copies whose dests follow each other (next-fit allocation makes most of
    // a batch contiguous) are gathered into one buffer and written at once.
    for (size_t i = i0; i < i1 && s.ok();) {
      size_t k = i + 1;
      uint64_t n = all[i]->n;
      while (k < i1 && all[k]->dst == all[k - 1]->dst + all[k - 1]->n &&
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
    if (last)
      for (uint64_t b : new_s0s)
        if (s.ok()) {
          s = copy_blocks(s0_now, b, 1, nullptr);
          s0_now = b;
        }
    // Append the entries; roll the log block over when full (the full block
    // is saved to a block reserved when the job was queued, and entry 0 of
    // the next one records that).
    log.sector0 = s0_now * bsec;
    for (size_t i = i0; i < i1 && s.ok(); i++) {
      const Copy& c = *all[i];
      if (rolls[i]) {
        if (next_lb >= log_blocks.size()) {
          s = Status::Error(EIO, "bow: internal error: no log block reserved for a rollover");
          break;
        }
        uint64_t lb = log_blocks[next_lb++];
        std::vector<uint8_t> bytes = encode_log(log);
        s = dev_->write(lb * bs_, bytes);
        LogBlock next{bs_, log.sequence + 1, log.sector0,
                      {{0, lb * bsec, bs_, entry_checksum(0, bytes)}}};
        next.intent = log.intent;
        log = std::move(next);
        entries_added++;
      }
      log.entries.push_back({c.src * bsec, c.dst * bsec, static_cast<uint32_t>(c.n * bs_), c.crc});
      entries_added++;
      bytes_added += c.n * bs_;
    }
    // The intent moves (a write hits its block) with the last part's log:
    // the new block is zero (it was free) and nothing is written to the old
    // one before that log is durable.
    if (last)
      for (const JobPtr& j : batch)
        if (j->new_intent) log.intent = *j->new_intent * bsec;
    // Saved data (and saved log blocks) durable before the log names them;
    // the log durable before any write it protects goes down.
    if (s.ok()) s = dev_->flush();
    if (s.ok()) s = dev_->write(0, encode_log(log));
    if (s.ok()) s = dev_->flush();
    i0 = i1;
    if (last) break;
  }
  if (s0x.owns_lock()) {
    std::lock_guard g(mu_);
    if (s.ok()) sector0_block_ = s0_now;  // before block-0 I/O resumes
  }
  if (s0x.owns_lock()) s0x.unlock();
  s = write_deferred(s);
  if (s.ok() && sup_any) intent_dirty_ = true;
  im.unlock();

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
    if (j->new_intent) {
      map_.set(intent_block_, intent_block_ + 1, BlockType::kChanged);
      map_.set(*j->new_intent, *j->new_intent + 1, BlockType::kIntent);
      intent_block_ = *j->new_intent;
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
  std::shared_lock st(state_mu_);
  {
    std::unique_lock l(mu_);
    if (state_ == 0) {
      // Only whole blocks become free; block 0 never does (it becomes the
      // log). They are zeroed on the device (write_zeroes, unmap allowed) so
      // that they read as zeroes from now on, in every state.
      uint64_t first = std::max<uint64_t>((off + bs_ - 1) / bs_, 1), last = (off + len) / bs_;
      if (first >= last) return Status::Ok();
      cv_.wait(l, [&] { return !busy_overlaps(first, last); });
      if (state_ == 0) return write_state0(l, first * bs_, (last - first) * bs_, nullptr, false, true);
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
  std::unique_lock im(intent_mu_);
  UDM_TRY(dev_->flush());
  if (!intent_dirty_) return Status::Ok();
  // The writes over bow's blocks listed in the intent are durable now: stop
  // listing them, so a restart never zeroes what this flush made durable.
  uint64_t at;
  {
    std::lock_guard l(mu_);
    if (state_ != 1) {
      intent_dirty_ = false;
      return Status::Ok();
    }
    at = intent_block_;
  }
  UDM_TRY(dev_->write(at * bs_, encode_intent({}, bs_)));
  UDM_TRY(dev_->flush());
  intent_dirty_ = false;
  return Status::Ok();
}

Result<TargetPtr> make_bow_target(const TargetParams& p) {
  TargetArgs a("bow", p.args);
  UDM_ASSIGN_OR_RETURN(std::string spec, a.next("<dev>"));
  UDM_ASSIGN_OR_RETURN(OptArgs o, a.opt_group());
  BowOptions opts;
  UDM_ASSIGN_OR_RETURN(std::string on_full, o.choice("on_full", {"fail", "drop"}, "fail"));
  opts.drop_on_full = on_full == "drop";
  UDM_ASSIGN_OR_RETURN(auto bs, o.u64("block_size"));
  UDM_TRY(o.done());
  if (bs) {
    if (!valid_block_size(*bs))
      return a.error("block_size",
                     fmt::format("{} is not a power of two in {}..{}", *bs, kMinBlock, kMaxBlock));
    opts.block_size = static_cast<uint32_t>(*bs);
  }
  UDM_ASSIGN_OR_RETURN(DevicePtr dev, p.resolver->open(spec, true));
  UDM_ASSIGN_OR_RETURN(auto t, BowTarget::create(std::move(dev), p.length, opts));
  return TargetPtr(std::move(t));
}

}  // namespace udm::bow
