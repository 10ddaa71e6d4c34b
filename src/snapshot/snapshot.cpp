#include "snapshot/snapshot.h"
#include "device/allocation.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <map>

#include "device/target_args.h"
#include "io/resolver.h"
#include "util/log.h"
#include "util/scratch.h"

namespace udm::snapshot {

// ---------------------------------------------------------------- registry

namespace {
std::mutex g_entries_mu;
std::map<std::string, std::weak_ptr<OriginEntry>>& entries() {
  static auto* m = new std::map<std::string, std::weak_ptr<OriginEntry>>();
  return *m;
}
}  // namespace

std::shared_ptr<OriginEntry> origin_entry(const std::string& key) {
  std::lock_guard lk(g_entries_mu);
  auto& m = entries();
  for (auto it = m.begin(); it != m.end();) it = it->second.expired() ? m.erase(it) : std::next(it);
  auto& w = m[key];
  auto e = w.lock();
  if (!e) {
    e = std::make_shared<OriginEntry>();
    w = e;
  }
  return e;
}

namespace {
// Joins byte ranges given in ascending order into runs and hands each run to
// `emit` once it cannot grow any more (one discard or zero-out per run).
template <class Emit>
class RunJoiner {
 public:
  explicit RunJoiner(Emit emit) : emit_(std::move(emit)) {}
  Status add(uint64_t off, uint64_t len) {
    if (len_ && off_ + len_ == off) {
      len_ += len;
      return Status::Ok();
    }
    Status st = finish();
    off_ = off;
    len_ = len;
    return st;
  }
  Status finish() {
    if (len_ == 0) return Status::Ok();
    const uint64_t off = off_, len = len_;
    len_ = 0;
    return emit_(off, len);
  }

 private:
  Emit emit_;
  uint64_t off_ = 0, len_ = 0;
};
}  // namespace

void OriginEntry::save_range(uint64_t offset, uint64_t len, const SnapshotCore* except) {
  if (len == 0) return;
  // The caller holds io_mu shared and every change of snaps_ holds it
  // exclusively, so the list is stable here without a copy or list_mu_.
  for (auto& s : snaps_) {
    if (s.get() == except) continue;
    uint64_t cb = s->chunk_bytes();
    uint64_t end = std::min(offset + len, s->origin_size());
    if (offset < end) s->save_chunks(offset / cb, (end - 1) / cb);
  }
}

void OriginEntry::save_ranges(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  if (ranges.empty()) return;
  std::vector<uint64_t> chunks;
  for (auto& s : snaps_) {
    if (!s->store().valid()) continue;
    const uint64_t cb = s->chunk_bytes();
    chunks.clear();
    for (auto [off, len] : ranges) {
      const uint64_t end = std::min(off + len, s->origin_size());
      if (off >= end) continue;
      for (uint64_t c = off / cb; c <= (end - 1) / cb; c++)
        if ((chunks.empty() || chunks.back() < c) && !s->store().has_exception(c)) chunks.push_back(c);
    }
    if (!chunks.empty()) s->save_chunk_list(chunks);
  }
}

bool OriginEntry::all_saved(uint64_t offset, uint64_t len) const {
  for (auto& s : snaps_)
    if (!s->all_saved(offset, len)) return false;
  return true;
}

Status OriginEntry::trim_unneeded(BlockDevice& origin, uint64_t offset, uint64_t len,
                                  const SnapshotCore* except) {
  if (len == 0) return Status::Ok();
  // The caller holds io_mu shared: the list is stable, and a listed
  // snapshot's exceptions only ever get added.
  uint64_t g = 0;  // the smallest chunk of a snapshot that still reads the origin
  for (auto& s : snaps_)
    if (s.get() != except && s->store().valid())
      g = g ? std::min(g, s->chunk_bytes()) : s->chunk_bytes();
  if (g == 0) return origin.trim(offset, len);
  const uint64_t end = offset + len;
  RunJoiner unneeded_run([&](uint64_t off, uint64_t n) { return origin.trim(off, n); });
  for (uint64_t pos = offset; pos < end;) {
    const uint64_t e = std::min(end, (pos / g + 1) * g);
    bool unneeded = true;
    for (auto& s : snaps_) {
      if (s.get() == except || !s->store().valid() || pos >= s->origin_size()) continue;
      if (!s->store().has_exception(pos / s->chunk_bytes())) {
        unneeded = false;
        break;
      }
    }
    if (unneeded) UDM_TRY(unneeded_run.add(pos, e - pos));
    pos = e;
  }
  return unneeded_run.finish();
}

std::shared_ptr<SnapshotCore> OriginEntry::attach(std::shared_ptr<SnapshotCore> core) {
  std::unique_lock io(io_mu);  // no origin write is between its saves and its write
  drain_writeback();           // held writes came before the new snapshot
  std::lock_guard lk(list_mu_);
  for (auto& s : snaps_)
    if (s->cow_key() == core->cow_key()) return s;
  snaps_.push_back(core);
  return core;
}

std::shared_ptr<SnapshotCore> OriginEntry::take_locked(const std::string& cow_key) {
  drain_writeback();  // the leaving snapshot saves what held writes overwrite
  std::lock_guard lk(list_mu_);
  for (auto it = snaps_.begin(); it != snaps_.end(); ++it) {
    if ((*it)->cow_key() == cow_key) {
      auto s = *it;
      snaps_.erase(it);
      return s;
    }
  }
  return nullptr;
}

void OriginEntry::detach(SnapshotCore* core) {
  std::unique_lock io(io_mu);
  drain_writeback();
  std::lock_guard lk(list_mu_);
  snaps_.erase(std::remove_if(snaps_.begin(), snaps_.end(),
                              [&](auto& s) { return s.get() == core; }),
               snaps_.end());
}

size_t OriginEntry::count() const {
  std::lock_guard lk(list_mu_);
  return snaps_.size();
}

// ---------------------------------------------------------------- write-back

// The held writes of a snapshot-origin with `writeback` (see snapshot.h).
class OriginWriteback {
 public:
  static constexpr uint64_t kUnit = 4096;
  static constexpr uint64_t kCap = 64u << 20;  // held bytes that make a writer drain

  OriginWriteback(BlockDevice& origin, OriginEntry& entry, uint64_t length)
      : origin_(origin), entry_(entry), length_(length) {
    timer_ = std::thread([this] { timer(); });
  }
  ~OriginWriteback() { stop_timer(); }
  void stop_timer() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (timer_.joinable()) timer_.join();
  }

  bool overlaps(uint64_t off, uint64_t len) const {
    std::lock_guard lk(mu_);
    if (units_.empty()) return false;
    auto it = units_.lower_bound(off / kUnit);
    return it != units_.end() && it->first * kUnit < off + len;
  }

  // A write of the origin (not FUA; caller holds io_mu shared): straight to
  // the origin when no held unit overlaps it and every snapshot has saved
  // every chunk of the units it touches, else held.
  Status write_or_hold(uint64_t off, std::span<const uint8_t> buf) {
    const uint64_t a = off / kUnit * kUnit, b = std::min(length_, (off + buf.size() + kUnit - 1) / kUnit * kUnit);
    {
      // Shared: a hold that reads around a partial write waits for direct
      // writes in flight (their bytes must be in what it reads), and no
      // direct write starts while it reads.
      std::shared_lock dl(direct_mu_);
      if (!overlaps(a, b - a) && entry_.all_saved(a, b - a)) return origin_.write(off, buf, false);
    }
    return write(off, buf);
  }

  // Holds [off, off+buf.size()); caller holds io_mu shared.
  Status write(uint64_t off, std::span<const uint8_t> buf) {
    bool over;
    {
      // Partial units are read from the origin around the write: direct
      // writes (write_or_hold) are kept out while that happens.
      std::unique_lock<std::shared_mutex> dl(direct_mu_, std::defer_lock);
      if (off % kUnit != 0 || (off + buf.size()) % kUnit != 0) dl.lock();
      std::lock_guard lk(mu_);
      if (!sticky_.ok()) return sticky_;
      const uint64_t end = off + buf.size();
      for (uint64_t u = off / kUnit; u * kUnit < end; u++) {
        const uint64_t ub = u * kUnit, ulen = std::min(kUnit, length_ - ub);
        const uint64_t lo = std::max(off, ub), hi = std::min(end, ub + ulen);
        auto it = units_.find(u);
        if (it == units_.end()) {
          auto d = std::make_shared<std::vector<uint8_t>>(ulen);
          if (lo > ub || hi < ub + ulen)  // a partial unit: the rest is the origin's
            UDM_TRY(origin_.read(ub, *d).context("snapshot-origin writeback: reading around a partial write"));
          it = units_.emplace(u, Unit{std::move(d), 0}).first;
          held_ += ulen;
        } else if (it->second.data.use_count() > 1) {
          // A drain is writing this unit's bytes: the rewrite gets its own copy.
          it->second.data = std::make_shared<std::vector<uint8_t>>(*it->second.data);
        }
        std::memcpy(it->second.data->data() + (lo - ub), buf.data() + (lo - off), hi - lo);
        it->second.seq = ++seq_;
      }
      writes_++;
      over = held_ >= kCap;
    }
    if (over) return drain();
    return Status::Ok();
  }

  // The origin's bytes with the held ones over them; caller holds io_mu shared.
  Status read(uint64_t off, std::span<uint8_t> buf) {
    std::shared_lock v(view_mu_);
    UDM_TRY(origin_.read(off, buf));
    std::lock_guard lk(mu_);
    const uint64_t end = off + buf.size();
    for (auto it = units_.lower_bound(off / kUnit); it != units_.end() && it->first * kUnit < end; ++it) {
      const uint64_t ub = it->first * kUnit;
      const uint64_t lo = std::max(off, ub), hi = std::min<uint64_t>(end, ub + it->second.data->size());
      if (lo < hi) std::memcpy(buf.data() + (lo - off), it->second.data->data() + (lo - ub), hi - lo);
    }
    return Status::Ok();
  }

  // Every snapshot saves the chunks of the held writes (group commits over
  // all of them), then the held units go to the origin, in runs. Caller
  // holds io_mu (shared or exclusive): the snapshot list is stable.
  Status drain() {
    std::lock_guard d(drain_mu_);
    struct Taken {
      uint64_t unit, seq;
      std::shared_ptr<const std::vector<uint8_t>> data;  // shared: a rewrite meanwhile copies
    };
    std::vector<Taken> taken;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    {
      std::lock_guard lk(mu_);
      if (units_.empty()) return sticky_;
      taken.reserve(units_.size());
      for (auto& [u, un] : units_) {
        taken.push_back({u, un.seq, un.data});
        if (!ranges.empty() && ranges.back().first + ranges.back().second == u * kUnit)
          ranges.back().second += un.data->size();
        else
          ranges.emplace_back(u * kUnit, un.data->size());
      }
    }
    // The origin still holds the old bytes of every held unit: the
    // snapshots copy them out and commit before anything is written.
    entry_.save_ranges(ranges);
    Status st;
    {
      std::unique_lock v(view_mu_);  // readers see the origin and the buffer change together
      std::vector<uint8_t> run;
      for (size_t i = 0; i < taken.size() && st.ok();) {
        size_t j = i + 1;
        while (j < taken.size() && taken[j].unit == taken[j - 1].unit + 1) j++;
        const uint64_t off = taken[i].unit * kUnit;
        if (j == i + 1) {
          st = origin_.write(off, *taken[i].data);
        } else {
          run.clear();
          for (size_t k = i; k < j; k++) run.insert(run.end(), taken[k].data->begin(), taken[k].data->end());
          st = origin_.write(off, run);
        }
        i = j;
      }
      std::lock_guard lk(mu_);
      if (st.ok()) {
        for (auto& t : taken) {
          auto it = units_.find(t.unit);
          if (it != units_.end() && it->second.seq == t.seq) {  // not rewritten meanwhile
            held_ -= it->second.data->size();
            units_.erase(it);
          }
        }
        drains_++;
        drained_units_ += taken.size();
      } else {
        sticky_ = st.context("snapshot-origin writeback: writing held data to the origin");
        st = sticky_;
      }
    }
    return st;
  }

  std::string status() const {
    std::lock_guard lk(mu_);
    return fmt::format("writeback held={} writes={} drains={} drained={}", held_, writes_, drains_,
                       drained_units_ * kUnit);
  }

 private:
  struct Unit {
    std::shared_ptr<std::vector<uint8_t>> data;
    uint64_t seq = 0;
  };
  // Drains a buffer that no flush drained for a second.
  void timer() {
    std::unique_lock lk(mu_);
    while (!stop_) {
      const uint64_t seen = drains_;
      cv_.wait_for(lk, std::chrono::seconds(1), [&] { return stop_; });
      if (stop_ || units_.empty() || drains_ != seen) continue;
      lk.unlock();
      {
        std::shared_lock io(entry_.io_mu);
        if (entry_.writeback == this) {
          Status st = drain();
          if (!st.ok()) log::warn("{}", st.to_string());
        }
      }
      lk.lock();
    }
  }

  BlockDevice& origin_;
  OriginEntry& entry_;
  const uint64_t length_;
  mutable std::mutex mu_;  // units_, held_, seq_, sticky_, counters, stop_
  std::map<uint64_t, Unit> units_;  // by unit index
  uint64_t held_ = 0, seq_ = 0, writes_ = 0, drains_ = 0, drained_units_ = 0;
  Status sticky_;
  std::shared_mutex view_mu_;    // reads vs. a drain's origin writes and erasures
  std::shared_mutex direct_mu_;  // direct writes (shared) vs. reads around partial holds (exclusive)
  std::mutex drain_mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread timer_;
};

void OriginEntry::drain_writeback() {
  if (!writeback) return;
  Status st = writeback->drain();
  if (!st.ok()) log::warn("{}", st.to_string());
}

// ---------------------------------------------------------------- core

SnapshotCore::SnapshotCore(DevicePtr origin, std::unique_ptr<ExceptionStore> store,
                           std::string cow_key, bool overflow_ok)
    : origin_(std::move(origin)),
      store_(std::move(store)),
      cow_key_(std::move(cow_key)),
      overflow_ok_(overflow_ok),
      locks_(new std::shared_mutex[kStripes]) {}

namespace {
bool all_zero(const uint8_t* p, size_t n) {
  return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}
}  // namespace

// The stripes of chunks [first, last], locked in ascending stripe order. A
// batch is the only holder of more than one stripe of a snapshot, and every
// batch locks in this order, so batches cannot deadlock with each other or
// with the single-stripe holders (readers, single-chunk writers, the merge's
// drain), which never wait for a second stripe while holding one.
class SnapshotCore::ChunkLocks {
 public:
  ChunkLocks(SnapshotCore& core, uint64_t first, uint64_t last, bool exclusive)
      : m_(core.locks_.get()), excl_(exclusive) {
    if (first == last) {
      one_ = uint32_t(first % kStripes);  // the common case: no allocation
    } else if (last - first + 1 >= kStripes) {
      for (size_t i = 0; i < kStripes; i++) s_.push_back(uint32_t(i));
    } else {
      // Fewer than kStripes consecutive chunks: distinct stripes.
      for (uint64_t c = first; c <= last; c++) s_.push_back(uint32_t(c % kStripes));
      std::sort(s_.begin(), s_.end());
    }
    if (s_.empty()) {
      lock(one_);
      return;
    }
    for (uint32_t i : s_) lock(i);
  }
  // Stripes given sorted ascending, without repeats.
  ChunkLocks(SnapshotCore& core, std::vector<uint32_t> stripes, bool exclusive)
      : m_(core.locks_.get()), excl_(exclusive), s_(std::move(stripes)) {
    if (s_.empty()) {
      lock(one_);
      return;
    }
    for (uint32_t i : s_) lock(i);
  }
  ~ChunkLocks() {
    if (s_.empty()) {
      unlock(one_);
      return;
    }
    for (auto it = s_.rbegin(); it != s_.rend(); ++it) unlock(*it);
  }
  ChunkLocks(const ChunkLocks&) = delete;
  ChunkLocks& operator=(const ChunkLocks&) = delete;

 private:
  void lock(uint32_t i) { excl_ ? m_[i].lock() : m_[i].lock_shared(); }
  void unlock(uint32_t i) { excl_ ? m_[i].unlock() : m_[i].unlock_shared(); }
  std::shared_mutex* m_;
  bool excl_;
  uint32_t one_ = 0;
  std::vector<uint32_t> s_;
};

Status SnapshotCore::read_origin_chunks(uint64_t c0, const std::vector<char>& need,
                                        std::vector<uint8_t>& buf) {
  const uint64_t cb = chunk_bytes();
  if (buf.size() < need.size() * cb) buf.resize(need.size() * cb);
  for (size_t i = 0; i < need.size();) {
    if (!need[i]) {
      i++;
      continue;
    }
    size_t j = i + 1;
    while (j < need.size() && need[j]) j++;
    uint64_t off = (c0 + i) * cb;
    uint64_t len = std::min<uint64_t>((j - i) * cb, origin_->size() - off);
    UDM_TRY(origin_->read(off, std::span<uint8_t>(buf.data() + i * cb, len))
                .context("snapshot: reading origin chunks"));
    i = j;
  }
  return Status::Ok();
}

void SnapshotCore::invalidate(const Status& why) {
  if (!store_->valid()) return;
  log::warn("snapshot: invalidating snapshot (COW {}): {}", cow_key_, why.to_string());
  Status st = store_->invalidate();
  if (!st.ok()) log::warn("snapshot: {}", st.to_string());
}

void SnapshotCore::save_chunks(uint64_t first, uint64_t last) {
  // Fast path (every rewrite): an exception, once visible, is durable and
  // stays while the snapshot is listed for its origin. (Chunks past the
  // origin's end have none: the clamp below takes care of them.)
  while (first <= last && store_->has_exception(first)) first++;
  if (first > last || !store_->valid()) return;
  const uint64_t cb = chunk_bytes(), n_chunks = (origin_->size() + cb - 1) / cb;
  if (first >= n_chunks) return;
  last = std::min(last, n_chunks - 1);
  // The unsaved chunks, a batch's worth of chunk numbers at a time (a huge
  // zero-out does not list all of its chunks at once).
  Scratch<uint64_t> list_scratch;
  auto& list = *list_scratch;
  const uint64_t batch = batch_chunks();
  for (uint64_t c0 = first; c0 <= last; c0 += batch) {
    list.clear();
    for (uint64_t c = c0; c <= std::min(last, c0 + batch - 1); c++)
      if (!store_->has_exception(c)) list.push_back(c);
    save_chunk_list(list);
    if (!store_->valid()) return;
  }
}

void SnapshotCore::save_chunk_list(const std::vector<uint64_t>& chunks) {
  if (chunks.empty() || !store_->valid()) return;
  const uint64_t cb = chunk_bytes(), n_chunks = (origin_->size() + cb - 1) / cb;
  const size_t batch = static_cast<size_t>(batch_chunks());
  Scratch<uint8_t> buf_scratch;
  auto& buf = *buf_scratch;
  Scratch<ExceptionStore::CommitItem> items_scratch;
  auto& items = *items_scratch;
  std::vector<uint32_t> stripes;
  for (size_t i = 0; i < chunks.size();) {
    const size_t j = std::min(chunks.size(), i + batch);
    stripes.clear();
    for (size_t k = i; k < j; k++) stripes.push_back(uint32_t(chunks[k] % kStripes));
    std::sort(stripes.begin(), stripes.end());
    stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());
    ChunkLocks lk(*this, stripes, true);
    if (!store_->valid()) return;
    // Order: the old chunks are read (one read per run of consecutive
    // ones), then the commit writes them to the COW (cached, in runs of
    // consecutive COW chunks), flushes and writes the area(s) (FUA) ->
    // return; the caller writes the origin only after.
    if (buf.size() < (j - i) * cb) buf.resize((j - i) * cb);
    items.clear();
    Status st;
    auto wanted = [&](size_t k) { return chunks[k] < n_chunks && !store_->lookup(chunks[k]); };
    for (size_t k = i; k < j && st.ok();) {
      if (!wanted(k)) {
        k++;
        continue;
      }
      size_t e = k + 1;
      while (e < j && chunks[e] == chunks[e - 1] + 1 && wanted(e)) e++;
      const uint64_t off = chunks[k] * cb;
      const uint64_t len = std::min<uint64_t>((e - k) * cb, origin_->size() - off);
      st = origin_->read(off, std::span<uint8_t>(buf.data() + (k - i) * cb, len)).context("snapshot: reading origin chunks");
      for (size_t q = k; q < e && st.ok(); q++) {
        auto nc = store_->allocate();
        if (!nc.ok()) {
          st = nc.status();
          break;
        }
        items.push_back({{chunks[q], *nc}, std::span<const uint8_t>(buf.data() + (q - i) * cb, chunk_len(chunks[q]))});
      }
      k = e;
    }
    if (st.ok() && !items.empty()) st = store_->commit(items);
    if (!st.ok()) return invalidate(st);
    i = j;
  }
}

bool SnapshotCore::all_saved(uint64_t offset, uint64_t len) const {
  if (!store_->valid()) return true;
  const uint64_t cb = chunk_bytes(), end = std::min(offset + len, origin_->size());
  if (offset >= end) return true;
  for (uint64_t c = offset / cb; c <= (end - 1) / cb; c++)
    if (!store_->has_exception(c)) return false;
  return true;
}

Status SnapshotCore::read_view(uint64_t offset, std::span<uint8_t> buf, BlockDevice& origin,
                               bool check_valid) {
  const uint64_t cb = chunk_bytes();
  size_t done = 0;
  while (done < buf.size()) {
    if (check_valid && !store_->valid()) return IoError("snapshot is invalid");
    uint64_t off = offset + done, c = off / cb, in = off % cb;
    size_t n = std::min<uint64_t>(cb - in, buf.size() - done);
    std::shared_lock lk(lock_for(c));
    if (auto nc = store_->lookup(c))
      UDM_TRY(store_->cow().read(*nc * cb + in, buf.subspan(done, n)));
    else
      UDM_TRY(origin.read(off, buf.subspan(done, n)));
    done += n;
  }
  return Status::Ok();
}

Status SnapshotCore::allocation(uint64_t offset, uint64_t len, AllocMap& out, BlockDevice& origin,
                                bool check_valid) {
  const uint64_t cb = chunk_bytes(), end = offset + len;
  // Work per call is bounded: at most this many chunks are looked at (the
  // rest is left to the caller's next question).
  constexpr uint64_t kMaxChunks = 1 << 16;
  const uint64_t stop = std::min(end, (offset / cb + kMaxChunks) * cb);
  uint64_t pos = offset;
  while (pos < stop && out.size() < kMaxAllocRuns) {
    if (check_valid && !store_->valid()) return IoError("snapshot is invalid");
    const uint64_t c = pos / cb;
    uint64_t covered = 0;
    if (auto nc = store_->lookup(c)) {
      // A run of chunks whose COW chunks follow each other: one question.
      uint64_t n = 1;
      for (;; n++) {
        if ((c + n) * cb >= stop) break;
        auto next = store_->lookup(c + n);
        if (!next || *next != *nc + n) break;
      }
      uint64_t run_end = std::min(stop, (c + n) * cb);
      UDM_TRY(append_allocation(store_->cow(), *nc * cb + pos % cb, run_end - pos, out, 1, covered));
    } else {
      uint64_t n = 1;
      while ((c + n) * cb < stop && !store_->has_exception(c + n)) n++;
      uint64_t run_end = std::min(stop, (c + n) * cb);
      AllocMap part;
      UDM_TRY(append_allocation(origin, pos, run_end - pos, part, 2, covered));
      // Cut before the first chunk that got an exception while we asked.
      uint64_t keep = covered;
      for (uint64_t k = c; k * cb < pos + covered; k++)
        if (store_->has_exception(k)) {
          keep = k * cb > pos ? k * cb - pos : 0;
          break;
        }
      if (check_valid && !store_->valid()) return IoError("snapshot is invalid");
      uint64_t left = keep;
      for (const AllocRun& r : part) {
        if (left == 0) break;
        uint64_t m = std::min(r.length, left);
        add_alloc_run(out, m, r.kind, r.depth);
        left -= m;
      }
      covered = keep;  // 0: the first chunk changed; look it up again
    }
    pos += covered;
    if (covered == 0 && out.size() >= kMaxAllocRuns) break;
  }
  return Status::Ok();
}

Result<uint64_t> SnapshotCore::allocate_for_write() {
  if (overflow_) return IoError("snapshot overflowed: no room for a new exception");
  auto nc = store_->allocate();
  if (nc.ok()) return nc;
  if (nc.status().code() == ENOSPC && overflow_ok_ && store_->persistent()) {
    overflow_ = true;
    return IoError("snapshot overflowed: COW is full");
  }
  invalidate(nc.status());
  return IoError("snapshot invalidated: " + nc.status().message());
}

Status SnapshotCore::modify(uint64_t offset, uint64_t len, const uint8_t* data, bool fua,
                            bool may_unmap) {
  const uint64_t cb = chunk_bytes(), batch = batch_chunks(), end = offset + len;
  const bool zero = data == nullptr;
  BlockDevice& cow = store_->cow();
  // COW byte runs: pieces of chunks that have an exception, and (zeroing)
  // whole new chunks; `src` is the offset of the bytes in `data`.
  struct Run {
    uint64_t cow_off, len, src;
  };
  Scratch<Run> runs_scratch;
  auto& runs = *runs_scratch;
  Scratch<uint8_t> buf_scratch;
  auto& buf = *buf_scratch;
  Scratch<char> need_scratch, fresh_scratch;
  auto& need = *need_scratch;
  auto& fresh = *fresh_scratch;
  Scratch<ExceptionStore::CommitItem> items_scratch;
  auto& items = *items_scratch;
  auto add_run = [&](uint64_t cow_off, uint64_t n, uint64_t src) {
    if (!runs.empty()) {
      Run& r = runs.back();
      if (r.cow_off + r.len == cow_off && (zero || r.src + r.len == src)) {
        r.len += n;
        return;
      }
    }
    runs.push_back({cow_off, n, src});
  };
  bool dirty = false;  // COW bytes written outside a commit (flushed for fua)
  bool exclusive = false;
  for (uint64_t pos = offset; pos < end;) {
    if (!store_->valid()) return IoError("snapshot is invalid");
    const uint64_t c0 = pos / cb, c1 = std::min((end - 1) / cb, c0 + batch - 1);
    const uint64_t bend = std::min(end, (c1 + 1) * cb);
    if (c0 == c1 && !exclusive && store_->has_exception(c0)) {
      // One chunk with an exception (the common rewrite): straight to the COW.
      std::shared_lock lk(lock_for(c0));
      if (auto nc = store_->lookup(c0)) {
        const uint64_t at = *nc * cb + (pos - c0 * cb), n = bend - pos;
        UDM_TRY(zero ? cow.write_zeroes(at, n, false, may_unmap)
                     : cow.write(at, std::span<const uint8_t>(data + (pos - offset), n), false));
        dirty = true;
        pos = bend;
        continue;
      }
    }
    // Chunks that all have an exception (every rewrite) only need their
    // locks shared; creating an exception takes them exclusively.
    for (uint64_t c = c0; c <= c1 && !exclusive; c++) exclusive = !store_->has_exception(c);
    ChunkLocks lk(*this, c0, c1, exclusive);
    runs.clear();
    items.clear();
    need.assign(c1 - c0 + 1, 0);
    fresh.assign(c1 - c0 + 1, 0);
    bool any_new = false;
    for (uint64_t c = c0; c <= c1; c++) {
      const uint64_t s = std::max(pos, c * cb), e = std::min(bend, (c + 1) * cb);
      if (auto nc = store_->lookup(c)) {
        add_run(*nc * cb + (s - c * cb), e - s, s - offset);
        dirty = true;
        continue;
      }
      fresh[c - c0] = 1;
      any_new = true;
      const bool whole = s == c * cb && e - s == chunk_len(c);
      // Zeroing looks at the origin's bytes first; a partial write needs
      // the rest of the old chunk.
      need[c - c0] = zero || !whole;
      if (zero && whole && cb >= kProbeFrom) {
        // Big chunks: the first sector usually settles "not zero" without
        // reading the whole chunk.
        uint8_t probe[512];
        UDM_TRY(origin_->read(s, std::span<uint8_t>(probe, std::min<uint64_t>(512, e - s)))
                    .context("snapshot: reading origin"));
        if (!all_zero(probe, std::min<uint64_t>(512, e - s))) {
          need[c - c0] = 0;
          fresh[c - c0] = 2;  // known not zero
        }
      }
    }
    if (any_new && !exclusive) {
      exclusive = true;  // an exception went away (merge handover): redo exclusively
      continue;
    }
    if (any_new) {
      UDM_TRY(read_origin_chunks(c0, need, buf));
      for (uint64_t c = c0; c <= c1; c++) {
        if (!fresh[c - c0]) continue;
        const uint64_t s = std::max(pos, c * cb), e = std::min(bend, (c + 1) * cb);
        const uint64_t in = s - c * cb, n = e - s, clen = chunk_len(c);
        uint8_t* slot = buf.data() + (c - c0) * cb;
        // Zeroes already on the origin: the view reads zero there and keeps
        // doing so (an origin write saves the chunk first) - no exception.
        if (zero && fresh[c - c0] == 1 && all_zero(slot + in, n)) continue;
        UDM_ASSIGN_OR_RETURN(uint64_t nc, allocate_for_write());
        if (in == 0 && n == clen) {
          if (zero) {
            // The format has no "zero exception": the new COW chunk is
            // zeroed on the COW (a hole in a file COW with may_unmap) before
            // the commit's flush, and the record points at it.
            add_run(nc * cb, cb, 0);
            items.push_back({{c, nc}, {}});
          } else {
            items.push_back({{c, nc}, std::span<const uint8_t>(data + (s - offset), n)});
          }
        } else {
          // Partial chunk: the old chunk with this write on top, one COW write.
          if (zero)
            memset(slot + in, 0, n);
          else
            memcpy(slot + in, data + (s - offset), n);
          items.push_back({{c, nc}, std::span<const uint8_t>(slot, clen)});
        }
      }
    }
    for (const Run& r : runs) {
      UDM_TRY(zero ? cow.write_zeroes(r.cow_off, r.len, false, may_unmap)
                   : cow.write(r.cow_off, std::span<const uint8_t>(data + r.src, r.len), false));
    }
    if (!items.empty()) {
      // The commit writes the data chunks and flushes (also the zeroed new
      // chunks above) before the records go out.
      Status st = store_->commit(items);
      if (!st.ok()) {
        invalidate(st);
        return st;
      }
    }
    pos = bend;
    exclusive = false;
  }
  if (fua && dirty) UDM_TRY(cow.flush());
  return Status::Ok();
}

Status SnapshotCore::trim(uint64_t offset, uint64_t len) {
  if (!store_->valid()) return IoError("snapshot is invalid");
  const uint64_t cb = chunk_bytes(), end = offset + len;
  BlockDevice& cow = store_->cow();
  // No chunk lock: a listed snapshot's exceptions never go away or move, and
  // a racing write to the same chunk is ordered either way.
  RunJoiner cow_run([&](uint64_t off, uint64_t n) { return cow.write_zeroes(off, n, false, true); });
  for (uint64_t c = (offset + cb - 1) / cb; c * cb < end && c * cb + chunk_len(c) <= end; c++)
    if (auto nc = store_->lookup(c)) UDM_TRY(cow_run.add(*nc * cb, cb));
  return cow_run.finish();
}

std::string SnapshotCore::status() const {
  if (!store_->valid()) return "Invalid";
  if (overflow_) return "Overflow";
  return store_->usage_status();
}

// ---------------------------------------------------------------- targets

// What the origin's own caps allow: a snapshot-origin (and a merge for the
// chunks it no longer holds in the COW) writes and zeroes the origin after
// the saves, so zeroing is as fast as the origin's; a discard is passed down
// only for chunks no snapshot still reads from the origin, so it never
// promises zeroes.
static DeviceCaps origin_caps(const BlockDevice& origin) {
  const DeviceCaps o = origin.caps();
  DeviceCaps c;
  c.read_only = o.read_only;
  c.can_trim = o.can_trim && !o.read_only;
  c.trim_zeroes = false;
  c.can_write_zeroes = o.can_write_zeroes && !o.read_only;
  c.fast_zero = o.fast_zero;
  c.can_flush = o.can_flush;
  c.logical_block = o.logical_block;
  c.physical_block = o.physical_block;
  c.max_io = o.max_io;
  return c;
}

OriginTarget::OriginTarget(DevicePtr origin, std::shared_ptr<OriginEntry> entry, uint64_t length, bool writeback)
    : ForwardingTarget(std::move(origin), 0, length), entry_(std::move(entry)) {
  if (writeback) wb_ = std::make_unique<OriginWriteback>(*lower(), *entry_, length);
}

OriginTarget::~OriginTarget() {
  if (!wb_) return;
  wb_->stop_timer();
  std::unique_lock io(entry_->io_mu);
  Status st = wb_->drain();
  if (!st.ok()) log::warn("{}", st.to_string());
  if (entry_->writeback == wb_.get()) entry_->writeback = nullptr;
}

void OriginTarget::resume() {
  if (!wb_) return;
  std::unique_lock io(entry_->io_mu);
  if (entry_->writeback == wb_.get()) return;
  // Another snapshot-origin's buffer (a table being replaced) goes to the
  // origin first; from now on this one's writes are the held ones.
  entry_->drain_writeback();
  entry_->writeback = wb_.get();
}

std::string OriginTarget::status() const { return wb_ ? wb_->status() : std::string(); }

DeviceCaps OriginTarget::caps() const { return origin_caps(*lower()); }

Status OriginTarget::do_read(uint64_t offset, std::span<uint8_t> buf) {
  std::shared_lock io(entry_->io_mu);
  if (entry_->merge) return entry_->merge->view_read(offset, buf);
  if (wb_) return wb_->read(offset, buf);
  return lower()->read(offset, buf);
}

Status OriginTarget::do_allocation(uint64_t offset, uint64_t len, AllocMap& out) {
  std::shared_lock io(entry_->io_mu);
  if (entry_->merge) return entry_->merge->view_allocation(offset, len, out);
  if (wb_ && wb_->overlaps(offset, len)) UDM_TRY(wb_->drain());  // held units are data the origin's map does not know yet
  return forward_allocation(offset, len, out);
}

Status OriginTarget::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  // Every snapshot has the old chunks durable in its COW before the origin
  // write is issued (save_chunks returns after the commit); with writeback,
  // a write needing that is held until the buffer drains (see snapshot.h).
  std::shared_lock io(entry_->io_mu);
  if (entry_->merge) return entry_->merge->view_write(offset, buf, fua);
  if (wb_ && entry_->writeback == wb_.get()) {
    if (!fua) return wb_->write_or_hold(offset, buf);
    UDM_TRY(wb_->drain());
  }
  entry_->save_range(offset, buf.size());
  return lower()->write(offset, buf, fua);
}

Status OriginTarget::do_write_zeroes(uint64_t offset, uint64_t len, bool fua, bool may_unmap) {
  // A zero-out changes the origin like a write: the snapshots save the old
  // chunks first; then the origin zeroes the range its own way (a hole in a
  // file with may_unmap, BLKZEROOUT on a block device...).
  std::shared_lock io(entry_->io_mu);
  if (entry_->merge) return entry_->merge->view_write_zeroes(offset, len, fua, may_unmap);
  if (wb_) UDM_TRY(wb_->drain());
  entry_->save_range(offset, len);
  return lower()->write_zeroes(offset, len, fua, may_unmap);
}

Status OriginTarget::do_trim(uint64_t offset, uint64_t len) {
  if (!lower()->caps().can_trim) return NotSupported("snapshot-origin: the origin cannot discard");
  // Advisory: chunks a snapshot still reads from the origin are kept (a
  // discard must not cost copies into the COWs), the rest is passed down.
  std::shared_lock io(entry_->io_mu);
  if (entry_->merge) return entry_->merge->view_trim(offset, len);
  if (wb_) UDM_TRY(wb_->drain());
  return entry_->trim_unneeded(*lower(), offset, len);
}

Status OriginTarget::do_flush() {
  if (wb_) {
    std::shared_lock io(entry_->io_mu);
    UDM_TRY(wb_->drain());
  }
  return lower()->flush();
}

SnapshotTarget::SnapshotTarget(std::shared_ptr<SnapshotCore> core,
                               std::shared_ptr<OriginEntry> entry, uint64_t length)
    : core_(std::move(core)), entry_(std::move(entry)), length_(length) {}

SnapshotTarget::~SnapshotTarget() {
  if (attached_ && --core_->owners == 0) entry_->detach(core_.get());
}

void SnapshotTarget::resume() {
  if (attached_) return;
  core_ = entry_->attach(core_);  // adopts a live core over the same COW
  core_->owners++;
  attached_ = true;
}

DeviceCaps SnapshotTarget::caps() const {
  const DeviceCaps o = core_->origin().caps(), w = core_->store().cow().caps();
  DeviceCaps c;
  // Writes go to the COW only (the origin is opened read-only).
  c.read_only = w.read_only;
  // trim() zeroes the COW bytes of whole chunks that have an exception and
  // leaves the others reading the origin: useful where the COW can
  // deallocate, never a promise of zeroes.
  c.can_trim = w.can_trim && !w.read_only;
  c.trim_zeroes = false;
  c.can_write_zeroes = !w.read_only;
  // Not promised: a chunk without an exception costs an origin read (are
  // its bytes zero already?) and then a new exception like a write - 0.7 to
  // 0.9x of writing zero buffers in bench/snapshot - and an NBD client that
  // pre-zeroes a whole device on FAST_ZERO would fill the COW.
  c.fast_zero = false;
  c.can_flush = true;
  c.logical_block = std::max(o.logical_block, w.logical_block);
  // A write of less than a chunk to a chunk without an exception copies the
  // rest of the chunk: whole chunks are the preferred unit.
  c.physical_block = std::max<uint64_t>({o.physical_block, w.physical_block,
                                         std::min<uint64_t>(core_->chunk_bytes(), 1u << 20)});
  c.max_io = std::min(o.max_io, w.max_io);
  return c;
}

std::string SnapshotTarget::status() const { return core_->status(); }

Status SnapshotTarget::do_read(uint64_t offset, std::span<uint8_t> buf) {
  return core_->read(offset, buf);
}
Status SnapshotTarget::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  return core_->write(offset, buf, fua);
}
Status SnapshotTarget::do_write_zeroes(uint64_t offset, uint64_t len, bool fua, bool may_unmap) {
  return core_->write_zeroes(offset, len, fua, may_unmap);
}
Status SnapshotTarget::do_trim(uint64_t offset, uint64_t len) {
  if (!core_->store().cow().caps().can_trim) return NotSupported("snapshot: the COW cannot discard");
  return core_->trim(offset, len);
}
Status SnapshotTarget::do_flush() { return core_->store().cow().flush(); }
Status SnapshotTarget::do_allocation(uint64_t offset, uint64_t len, AllocMap& out) {
  return core_->allocation(offset, len, out, core_->origin(), true);
}

// ---------------------------------------------------------------- merge

MergeTarget::MergeTarget(DevicePtr origin, std::shared_ptr<SnapshotCore> core,
                         std::shared_ptr<OriginEntry> entry, uint64_t length, JobPolicy policy)
    : origin_(std::move(origin)), core_(std::move(core)), entry_(std::move(entry)),
      length_(length), job_("snapshot-merge", "chunks", policy) {
  if (core_->store().exception_count() == 0) done_ = true;
  job_total_ = core_->store().exception_count();
  job_.set_total(job_total_, job_total_ * core_->chunk_bytes());
  job_.set_done(0, 0);
}

// The job counts chunks merged since this table went live (the COW does not
// record how many were merged before).
void MergeTarget::report_progress() {
  const uint64_t left = std::min(job_total_, core_->store().exception_count());
  job_.set_done(job_total_ - left, (job_total_ - left) * core_->chunk_bytes());
}

Result<std::string> MergeTarget::message(const std::vector<std::string>& args) {
  if (!BackgroundJob::is_job_message(args)) return Target::message(args);
  return job_.message(args, "snapshot-merge");
}

MergeTarget::~MergeTarget() {
  stop_thread();
  if (registered_) {
    std::unique_lock io(entry_->io_mu);  // waits for snapshot-origin I/O using the view
    if (entry_->merge == this) entry_->merge = nullptr;
  }
}

DeviceCaps MergeTarget::caps() const {
  DeviceCaps c = origin_caps(*origin_);
  const DeviceCaps w = core_->store().cow().caps();
  // Chunks not merged yet are written and zeroed on the COW.
  c.read_only = c.read_only || w.read_only;
  c.can_write_zeroes = c.can_write_zeroes && !w.read_only;
  c.fast_zero = c.fast_zero && w.fast_zero;
  c.logical_block = std::max(c.logical_block, w.logical_block);
  c.physical_block = std::max(c.physical_block, w.physical_block);
  c.max_io = std::min(c.max_io, w.max_io);
  return c;
}

std::string MergeTarget::status() const {
  if (!core_->store().valid()) return "Invalid";
  if (failed_) return "Merge failed";
  return core_->store().usage_status();
}

void MergeTarget::stop_thread() {
  stop_ = true;
  job_.wake();
  if (thread_.joinable()) thread_.join();
}

void MergeTarget::presuspend() { stop_thread(); }

void MergeTarget::resume() {
  if (!adopted_) {
    // A snapshot over the same COW still listed for this origin hands over
    // its live table (it may have exceptions newer than what we loaded).
    // Taken and registered under one exclusive hold of io_mu: an origin
    // write between the two would reach the origin unsaved by this snapshot
    // (no longer listed) and unseen by the merge (not yet registered). The
    // origin's held writes (writeback) are drained first, saved by it too.
    {
      std::unique_lock io(entry_->io_mu);
      if (auto live = entry_->take_locked(core_->cow_key())) core_ = std::move(live);
      entry_->drain_writeback();
      if (!entry_->merge) {
        entry_->merge = this;
        registered_ = true;
      }
    }
    adopted_ = true;
    done_ = core_->store().exception_count() == 0;
    job_total_ = core_->store().exception_count();
    job_.set_total(job_total_, job_total_ * core_->chunk_bytes());
    job_.set_done(0, 0);
  }
  if (done_ || failed_ || thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] {
    Status st = run_merge();
    std::lock_guard lk(run_mu_);
    result_ = st;
    run_cv_.notify_all();
  });
}

Status MergeTarget::wait() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard lk(run_mu_);
  return result_;
}

Status MergeTarget::run_merge(const std::function<void(uint64_t)>& progress) {
  job_.started();
  if (!core_->store().valid()) {
    Status st = IoError("snapshot is invalid: refusing to merge");
    job_.finished(st);
    return st;
  }
  const uint64_t cb = core_->chunk_bytes();
  while (!stop_) {
    // Wait out a pause (and a throttle's debt) first, then size the batch by
    // the policy in force now - up to 16 MiB unthrottled (three flushes per
    // batch: on a disk they, not the copying, bound the merge), 256 KiB under
    // `throttle auto`, about a tenth of a second's worth under a rate - and
    // have it admitted: sized before a long pause, a big batch would be
    // charged to a throttle set during the pause and hold the merge back.
    if (!job_.admit(0, stop_)) break;
    const uint64_t bytes = job_.batch_bytes(cb, std::max<uint64_t>(cb, max_batch_bytes_));
    if (!job_.admit(bytes, stop_)) break;
    bool finished = false;
    Status st = merge_one_batch(std::max<uint64_t>(1, bytes / cb), &finished);
    report_progress();
    if (!st.ok()) {
      failed_ = true;
      log::warn("snapshot-merge: {}", st.to_string());
      job_.finished(st);
      return st;
    }
    if (progress) progress(core_->store().exception_count());
    if (finished) {
      done_ = true;
      break;
    }
  }
  job_.finished(Status::Ok());
  return Status::Ok();
}

Status MergeTarget::merge_one_batch(size_t max, bool* finished) {
  ExceptionStore& store = core_->store();
  const uint64_t cb = store.chunk_bytes();
  std::vector<CowRecord> batch = store.merge_batch(max);
  if (batch.empty()) {
    *finished = true;
    return Status::Ok();
  }
  {
    std::lock_guard lk(run_mu_);
    for (auto& r : batch) merging_.insert(r.old_chunk);
  }
  // Drain writes that entered these chunks before they were marked; later
  // writers see the mark (under the chunk lock) and wait.
  for (auto& r : batch) std::unique_lock l(core_->lock_for(r.old_chunk));
  Status st;
  {
    std::shared_lock io(entry_->io_mu);
    // Read the batch's COW chunks with as few reads as possible (records of
    // one area mostly have consecutive COW chunks), then write the origin in
    // runs of consecutive origin chunks.
    std::vector<CowRecord> s = batch;
    std::sort(s.begin(), s.end(), [](auto& a, auto& b) { return a.new_chunk < b.new_chunk; });
    Scratch<uint8_t> data_scratch, run_scratch;
    auto& data = *data_scratch;
    auto& run = *run_scratch;
    data.resize(s.size() * cb);
    for (size_t i = 0; i < s.size() && st.ok();) {
      size_t j = i + 1;
      while (j < s.size() && s[j].new_chunk == s[j - 1].new_chunk + 1) j++;
      st = store.cow()
               .read(s[i].new_chunk * cb, std::span<uint8_t>(data.data() + i * cb, (j - i) * cb))
               .context("merge: reading COW");
      i = j;
    }
    // Slot of each record's data in `data`, ordered by origin chunk.
    std::vector<std::pair<uint64_t, size_t>> by_old(s.size());
    for (size_t i = 0; i < s.size(); i++) by_old[i] = {s[i].old_chunk, i};
    std::sort(by_old.begin(), by_old.end());
    for (size_t i = 0; i < by_old.size() && st.ok();) {
      size_t j = i + 1;
      bool contiguous = true;
      while (j < by_old.size() && by_old[j].first == by_old[j - 1].first + 1) {
        contiguous = contiguous && by_old[j].second == by_old[j - 1].second + 1;
        j++;
      }
      uint64_t off = by_old[i].first * cb;
      uint64_t len = std::min<uint64_t>((j - i) * cb, origin_->size() - off);
      const uint8_t* src = data.data() + by_old[i].second * cb;
      if (!contiguous) {
        run.resize((j - i) * cb);
        for (size_t k = i; k < j; k++)
          memcpy(run.data() + (k - i) * cb, data.data() + by_old[k].second * cb, cb);
        src = run.data();
      }
      // A merge write is an origin write for the other snapshots.
      entry_->save_range(off, len, core_.get());
      st = origin_->write(off, std::span<const uint8_t>(src, len)).context("merge: writing origin");
      i = j;
    }
  }
  // The origin copies must be durable before their records disappear.
  if (st.ok()) st = origin_->flush().context("merge: flushing origin");
  if (st.ok()) st = store.commit_merge(batch.size());
  {
    std::lock_guard lk(run_mu_);
    for (auto& r : batch) merging_.erase(r.old_chunk);
    run_cv_.notify_all();
  }
  return st;
}

Status MergeTarget::do_read(uint64_t offset, std::span<uint8_t> buf) {
  job_.foreground_io();
  return core_->read_view(offset, buf, *origin_, false);
}

Status MergeTarget::do_allocation(uint64_t offset, uint64_t len, AllocMap& out) {
  return core_->allocation(offset, len, out, *origin_, false);
}

void MergeTarget::wait_unmerged(uint64_t c, std::shared_lock<std::shared_mutex>& lk) {
  for (;;) {
    std::unique_lock r(run_mu_);
    if (!merging_.count(c)) return;
    lk.unlock();
    run_cv_.wait(r, [&] { return merging_.count(c) == 0; });
    r.unlock();
    lk.lock();
  }
}

Status MergeTarget::modify_view(uint64_t offset, uint64_t len, const uint8_t* data, bool fua,
                                bool may_unmap, bool io_held) {
  job_.foreground_io();
  ExceptionStore& store = core_->store();
  const uint64_t cb = store.chunk_bytes();
  for (uint64_t done = 0; done < len;) {
    uint64_t off = offset + done, c = off / cb, in = off % cb;
    uint64_t n = std::min<uint64_t>(cb - in, len - done);
    std::shared_lock lk(core_->lock_for(c));
    wait_unmerged(c, lk);
    if (auto nc = store.lookup(c)) {
      // Not merged yet: the new bytes go to the COW chunk and are merged later.
      UDM_TRY(data ? store.cow().write(*nc * cb + in, std::span<const uint8_t>(data + done, n), fua)
                   : store.cow().write_zeroes(*nc * cb + in, n, false, may_unmap));
    } else {
      std::shared_lock<std::shared_mutex> io(entry_->io_mu, std::defer_lock);
      if (!io_held) io.lock();
      entry_->save_range(off, n, core_.get());
      UDM_TRY(data ? origin_->write(off, std::span<const uint8_t>(data + done, n), fua)
                   : origin_->write_zeroes(off, n, false, may_unmap));
    }
    done += n;
  }
  // Zeroes went out without FUA (one flush for all of them).
  return !data && fua ? do_flush() : Status::Ok();
}

Status MergeTarget::write_zeroes_view(uint64_t offset, uint64_t len, bool fua, bool may_unmap,
                                      bool io_held) {
  if (core_->store().exception_count() == 0) {
    // Merged (or nothing to merge): the origin holds the whole view, and no
    // exception comes back. Like snapshot-origin.
    std::shared_lock<std::shared_mutex> io(entry_->io_mu, std::defer_lock);
    if (!io_held) io.lock();
    entry_->save_range(offset, len, core_.get());
    return origin_->write_zeroes(offset, len, fua, may_unmap);
  }
  // During the merge, chunk by chunk like a write.
  return modify_view(offset, len, nullptr, fua, may_unmap, io_held);
}

Status MergeTarget::trim_view(uint64_t offset, uint64_t len, bool io_held) {
  if (!origin_->caps().can_trim) return NotSupported("snapshot-merge: the origin cannot discard");
  // Advisory: only chunks without an exception (never saved, or merged
  // already) are discarded - their bytes live on the origin and the merge
  // never writes them again - and only where no other snapshot of the
  // origin still needs them. Chunks waiting to be merged are left alone.
  ExceptionStore& store = core_->store();
  const uint64_t cb = store.chunk_bytes(), end = offset + len;
  std::shared_lock<std::shared_mutex> io(entry_->io_mu, std::defer_lock);
  if (!io_held) io.lock();
  if (store.exception_count() == 0) return entry_->trim_unneeded(*origin_, offset, len, core_.get());
  RunJoiner origin_run(
      [&](uint64_t off, uint64_t n) { return entry_->trim_unneeded(*origin_, off, n, core_.get()); });
  for (uint64_t pos = offset; pos < end;) {
    const uint64_t c = pos / cb, e = std::min(end, (c + 1) * cb);
    if (!store.lookup(c)) UDM_TRY(origin_run.add(pos, e - pos));
    pos = e;
  }
  return origin_run.finish();
}

Status MergeTarget::do_flush() {
  UDM_TRY(origin_->flush());
  return core_->store().cow().flush();
}

// ---------------------------------------------------------------- factories

namespace {

struct CommonArgs {
  JobPolicy policy;  // snapshot-merge: paused, throttle=...
  DevicePtr origin, cow;
  std::string origin_key, cow_key;
  std::string store_type;  // P, PO, N
  uint32_t chunk = 0;
};

// <origin> <cow> <store> <chunk_size> [<#feature_args> <feature>...], as the
// kernel's snapshot and snapshot-merge read them (store type in any case).
Result<CommonArgs> parse_common(const TargetParams& p, bool origin_writable, bool transient_ok) {
  const char* store_what = transient_ok ? "<P|PO|N>" : "<P|PO>";
  TargetArgs a(p.type, p.args);
  UDM_ASSIGN_OR_RETURN(std::string origin, a.next("<origin>"));
  UDM_ASSIGN_OR_RETURN(std::string cow, a.next("<cow>"));
  UDM_ASSIGN_OR_RETURN(std::string t, a.next(store_what));
  CommonArgs c;
  c.store_type = t;
  for (auto& ch : c.store_type) ch = char(toupper(ch));
  if (c.store_type != "P" && c.store_type != "PO" && c.store_type != "N")
    return a.error(store_what,
                   fmt::format("store type '{}' must be {}", t, transient_ok ? "P, PO or N" : "P or PO"));
  if (c.store_type == "N" && !transient_ok)
    return a.error(store_what, "a transient (N) store cannot be merged");
  UDM_ASSIGN_OR_RETURN(uint64_t cs, a.next_u64("<chunk_size>"));
  if (cs != 0) UDM_TRY(validate_chunk_sectors(cs, p.type + ": <chunk_size>"));
  c.chunk = uint32_t(cs);
  // The kernel's two feature arguments are named and refused: udm's
  // discards do what docs/snapshot.md says, not what they would ask for.
  UDM_ASSIGN_OR_RETURN(OptArgs features, a.opt_group());
  if (p.type == "snapshot-merge") {
    UDM_ASSIGN_OR_RETURN(c.policy, JobPolicy::from_opts(features, p.type));
  }
  for (const char* f : {"discard_zeroes_cow", "discard_passdown_origin"}) {
    UDM_ASSIGN_OR_RETURN(bool on, features.flag(f));
    if (on)
      return NotSupported(fmt::format("{}: feature argument '{}' is not supported by udm", p.type, f));
  }
  UDM_TRY(features.done());
  UDM_TRY(a.done());
  if (!p.resolver) return Invalid(p.type + ": no device resolver");
  UDM_ASSIGN_OR_RETURN(c.origin_key, p.resolver->identity(origin));
  UDM_ASSIGN_OR_RETURN(c.cow_key, p.resolver->identity(cow));
  if (c.origin_key == c.cow_key) return a.error("<cow>", "the origin and the COW are the same device");
  UDM_ASSIGN_OR_RETURN(c.origin, p.resolver->open(origin, origin_writable));
  UDM_ASSIGN_OR_RETURN(c.cow, p.resolver->open(cow, true));
  if (p.length > c.origin->size())
    return Invalid(fmt::format("{}: segment length {} bytes exceeds the origin ({} bytes)", p.type,
                               p.length, c.origin->size()));
  return c;
}

Status check_block_sizes(const CommonArgs& a, const ExceptionStore& s, const std::string& type) {
  uint64_t cb = s.chunk_bytes();
  if (cb % a.origin->caps().logical_block || cb % a.cow->caps().logical_block)
    return Invalid(type + ": chunk size " + std::to_string(cb) +
                   " bytes is not a multiple of the devices' logical block size");
  return Status::Ok();
}

}  // namespace

Result<TargetPtr> make_origin_target(const TargetParams& p) {
  TargetArgs a("snapshot-origin", p.args);
  UDM_ASSIGN_OR_RETURN(std::string spec, a.next("<origin>"));
  UDM_ASSIGN_OR_RETURN(OptArgs opts, a.opt_group());
  UDM_ASSIGN_OR_RETURN(bool writeback, opts.flag("writeback"));
  UDM_TRY(opts.done());
  UDM_TRY(a.done());
  if (!p.resolver) return Invalid("snapshot-origin: no device resolver");
  UDM_ASSIGN_OR_RETURN(std::string key, p.resolver->identity(spec));
  UDM_ASSIGN_OR_RETURN(DevicePtr origin, p.resolver->open(spec, true));
  if (p.length > origin->size())
    return Invalid(fmt::format("snapshot-origin: segment length {} bytes exceeds the origin ({} bytes)",
                               p.length, origin->size()));
  return TargetPtr(std::make_shared<OriginTarget>(origin, origin_entry(key), p.length, writeback));
}

Result<TargetPtr> make_snapshot_target(const TargetParams& p) {
  UDM_ASSIGN_OR_RETURN(CommonArgs a, parse_common(p, /*origin_writable=*/false, /*transient_ok=*/true));
  std::unique_ptr<ExceptionStore> store;
  if (a.store_type == "N") {
    UDM_ASSIGN_OR_RETURN(store, ExceptionStore::open_transient(a.cow, a.origin->size(), a.chunk));
  } else {
    UDM_ASSIGN_OR_RETURN(store,
                         ExceptionStore::open_persistent(a.cow, a.origin->size(), a.chunk));
  }
  UDM_TRY(check_block_sizes(a, *store, p.type));
  auto core = std::make_shared<SnapshotCore>(a.origin, std::move(store), a.cow_key,
                                             a.store_type == "PO");
  return TargetPtr(
      std::make_shared<SnapshotTarget>(std::move(core), origin_entry(a.origin_key), p.length));
}

Result<TargetPtr> make_merge_target(const TargetParams& p) {
  UDM_ASSIGN_OR_RETURN(CommonArgs a, parse_common(p, /*origin_writable=*/true, /*transient_ok=*/false));
  UDM_ASSIGN_OR_RETURN(auto store, ExceptionStore::open_persistent(a.cow, a.origin->size(),
                                                                   a.chunk, false));
  if (!store->valid()) return IoError("snapshot-merge: snapshot is invalid; refusing to merge");
  UDM_TRY(check_block_sizes(a, *store, p.type));
  auto core = std::make_shared<SnapshotCore>(a.origin, std::move(store), a.cow_key, false);
  return TargetPtr(std::make_shared<MergeTarget>(a.origin, std::move(core),
                                                 origin_entry(a.origin_key), p.length, a.policy));
}

Result<std::shared_ptr<MergeTarget>> open_offline_merge(const std::string& origin,
                                                        const std::string& cow,
                                                        uint32_t chunk_sectors) {
  Resolver resolver;
  UDM_ASSIGN_OR_RETURN(DevicePtr o, resolver.open(origin, true));
  if (o->caps().read_only) return ReadOnly(origin + ": origin cannot be opened writable");
  TargetParams p;
  p.type = "snapshot-merge";
  p.length = o->size() / kSectorSize * kSectorSize;
  p.args = {origin, cow, "P", std::to_string(chunk_sectors)};
  p.resolver = &resolver;
  UDM_ASSIGN_OR_RETURN(TargetPtr t, make_merge_target(p));
  return std::static_pointer_cast<MergeTarget>(t);
}

}  // namespace udm::snapshot
