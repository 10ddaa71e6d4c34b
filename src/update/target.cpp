#include "update/target.h"

#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <thread>

#include "update/format.h"
#include "update/format_v1.h"
#include "util/log.h"

namespace udm {
using namespace update;

namespace {

// Decompressed chunks shared by concurrent readers: a chunk is decompressed
// once even when many requests wait for it (they wait on `ready`).
class ChunkCache {
 public:
  ChunkCache(BlockDevice& diff, const DiffIndex& idx, size_t capacity)
      : diff_(diff), idx_(idx), capacity_(capacity) {}

  struct Slot {
    std::vector<uint8_t> data;
    bool ready = false;
    Status status;
  };

  // Returns the decompressed chunk (shared; stays valid while held).
  Result<std::shared_ptr<Slot>> get(size_t ci) {
    std::unique_lock lk(mu_);
    auto it = map_.find(ci);
    if (it != map_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      auto slot = it->second.slot;
      cv_.wait(lk, [&] { return slot->ready; });
      if (!slot->status.ok()) return slot->status;
      return slot;
    }
    auto slot = std::make_shared<Slot>();
    lru_.push_front(ci);
    map_[ci] = Node{slot, lru_.begin()};
    evict_locked();
    lk.unlock();
    // Decompress outside the lock; others wanting this chunk wait on cv_.
    std::vector<uint8_t> scratch;
    slot->data.resize(idx_.chunk_bytes());
    Status s = read_chunk(diff_, idx_, ci, scratch, slot->data);
    lk.lock();
    slot->status = s;
    slot->ready = true;
    if (!s.ok()) {
      auto i2 = map_.find(ci);
      if (i2 != map_.end() && i2->second.slot == slot) {
        lru_.erase(i2->second.lru);
        map_.erase(i2);
      }
    }
    cv_.notify_all();
    if (!s.ok()) return s;
    return slot;
  }

 private:
  struct Node {
    std::shared_ptr<Slot> slot;
    std::list<size_t>::iterator lru;
  };
  void evict_locked() {
    while (map_.size() > capacity_) {
      size_t victim = lru_.back();
      auto it = map_.find(victim);
      if (!it->second.slot->ready) break;  // being loaded: keep (rare, cache is small)
      lru_.pop_back();
      map_.erase(it);
    }
  }
  BlockDevice& diff_;
  const DiffIndex& idx_;
  size_t capacity_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<size_t, Node> map_;
  std::list<size_t> lru_;
};

class UpdateTarget : public Target {
 public:
  UpdateTarget(DevicePtr sys, DevicePtr diff, DiffIndex idx, uint64_t length, bool bg, bool can_persist)
      : sys_(std::move(sys)), diff_(std::move(diff)), idx_(std::move(idx)), length_(length),
        bg_enabled_(bg), can_persist_(can_persist), cache_(*diff_, idx_, 64) {
    done_ = idx_.recorded_progress();
    // Progress counts whole chunks; round a foreign record down to a chunk start.
    while (done_ > 0 && done_ < idx_.entries.size() &&
           idx_.chunks[idx_.chunk_of[done_]].first_entry != done_)
      done_--;
  }
  ~UpdateTarget() override { stop_copy(); }

  std::string type() const override { return "update"; }
  uint64_t size() const override { return length_; }
  DeviceCaps caps() const override {
    DeviceCaps c;
    c.read_only = true;
    c.can_trim = false;
    c.can_write_zeroes = false;
    c.logical_block = 512;
    c.physical_block = std::max<uint32_t>(4096, idx_.block_size());
    return c;
  }
  std::string status() const override {
    return fmt::format("{} {}", done_.load(), idx_.entries.size());
  }
  void presuspend() override { stop_copy(); }
  void resume() override {
    if (bg_enabled_ && done_ < idx_.entries.size()) start_copy();
  }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    const uint64_t bs = idx_.block_size();
    uint64_t pos = off, end = off + buf.size();
    while (pos < end) {
      uint64_t block = pos / bs;
      uint64_t in_block = pos - block * bs;
      int64_t e = idx_.find(block);
      if (e < 0) {
        // Coalesce the run of unchanged blocks up to the next changed one.
        auto it = std::upper_bound(idx_.entries.begin(), idx_.entries.end(), block,
                                   [](uint64_t b, const Entry& en) { return b < en.dest; });
        uint64_t run_end = it == idx_.entries.end() ? end : std::min(end, it->dest * bs);
        UDM_TRY(sys_->read(pos, buf.subspan(pos - off, run_end - pos)));
        pos = run_end;
        continue;
      }
      const Entry& en = idx_.entries[static_cast<size_t>(e)];
      UDM_ASSIGN_OR_RETURN(auto slot, cache_.get(idx_.chunk_of[static_cast<size_t>(e)]));
      uint64_t n = std::min(end - pos, bs - in_block);
      std::memcpy(buf.data() + (pos - off), slot->data.data() + uint64_t{en.offset} * bs + in_block, n);
      pos += n;
    }
    return Status::Ok();
  }
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override {
    return ReadOnly("update target: the device is read-only while the update is applied");
  }
  Status do_trim(uint64_t, uint64_t) override {
    return ReadOnly("update target: the device is read-only while the update is applied");
  }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override {
    return ReadOnly("update target: the device is read-only while the update is applied");
  }
  Status do_flush() override { return Status::Ok(); }  // nothing of ours is volatile

 private:
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
    thread_.join();
  }

  // Copy chunk after chunk onto the system device. Durability: every
  // kPersistEvery chunks (and at suspend/completion) the system device is
  // flushed FIRST, then the count of finished entries is written to the
  // diff's superblock with FUA. After a crash the copy resumes from the last
  // record; blocks copied after it are copied again (idempotent). Reads never
  // depend on the copy: changed blocks always come from the diff.
  void copy_loop() {
    constexpr int kPersistEvery = 32;
    std::vector<uint8_t> chunk(idx_.chunk_bytes()), scratch;
    const uint64_t bs = idx_.block_size();
    uint64_t persisted = done_;
    int since = 0;
    Status s;
    while (!stop_ && done_ < idx_.entries.size()) {
      size_t ci = idx_.chunk_of[done_];
      const Chunk& c = idx_.chunks[ci];
      s = read_chunk(*diff_, idx_, ci, scratch, chunk);
      if (!s.ok()) break;
      for (uint32_t i = 0; i < c.n_entries && s.ok(); i++) {
        const Entry& e = idx_.entries[c.first_entry + i];
        s = sys_->write(e.dest * bs, std::span<const uint8_t>(chunk.data() + uint64_t{e.offset} * bs, bs));
      }
      if (!s.ok()) break;
      done_ = c.first_entry + c.n_entries;
      if (++since >= kPersistEvery || done_ == idx_.entries.size()) {
        s = persist(done_);
        if (!s.ok()) break;
        persisted = done_;
        since = 0;
      }
    }
    if (s.ok() && done_ != persisted) s = persist(done_);
    if (!s.ok()) log::error("update: background copy stopped: {}", s.to_string());
  }

  Status persist(uint64_t done) {
    UDM_TRY(sys_->flush());  // the copied blocks first ...
    if (!can_persist_) return Status::Ok();
    return write_progress(*diff_, idx_, done);  // ... then the record that says so
  }

  DevicePtr sys_, diff_;
  DiffIndex idx_;
  uint64_t length_;
  bool bg_enabled_;
  bool can_persist_;
  ChunkCache cache_;
  std::atomic<uint64_t> done_{0};
  std::atomic<bool> stop_{false};
  std::mutex thread_mu_;
  std::thread thread_;
};

}  // namespace

Result<TargetPtr> make_update_target(const TargetParams& p) {
  if (p.args.size() < 3)
    return Invalid(fmt::format("update: expected at least 3 arguments, got {}", p.args.size()));
  UDM_ASSIGN_OR_RETURN(uint64_t nopt, parse_u64_arg(p.args[2], "update: #opt_args"));
  if (nopt != p.args.size() - 3)
    return Invalid(fmt::format("update: #opt_args says {} but {} optional argument(s) follow", nopt, p.args.size() - 3));
  bool bg = true;
  for (size_t i = 3; i < p.args.size(); i++) {
    if (p.args[i] == "no_bg_update") bg = false;
    else return Invalid("update: unknown optional argument '" + p.args[i] + "' (known: no_bg_update)");
  }
  UDM_ASSIGN_OR_RETURN(DevicePtr sys, p.resolver->open(p.args[0], true));
  if (sys->caps().read_only && bg)
    return ReadOnly("update: system device " + p.args[0] + " is read-only; use no_bg_update to serve without copying");
  UDM_ASSIGN_OR_RETURN(DevicePtr diff, p.resolver->open(p.args[1], true));
  auto ver = diff_version(*diff);
  if (!ver.ok()) return ver.status().context("update: diff " + p.args[1]);
  if (*ver == 1) return make_update_target_v1(std::move(sys), std::move(diff), p.args[1], p.length, bg);
  auto idx = load_diff(*diff);
  if (!idx.ok()) return idx.status().context("update: diff " + p.args[1]);
  uint64_t bs = idx->block_size();
  if (p.length > sys->size())
    return Invalid(fmt::format("update: segment of {} bytes is larger than the system device ({} bytes)", p.length, sys->size()));
  if (p.length % bs)
    return Invalid(fmt::format("update: segment length {} is not a multiple of the diff's block size {}", p.length, bs));
  if (!idx->entries.empty() && idx->entries.back().dest >= p.length / bs)
    return Invalid(fmt::format("update: the diff changes block {} but the segment has only {} blocks",
                               idx->entries.back().dest, p.length / bs));
  bool can_persist = !diff->caps().read_only;
  if (!can_persist)
    log::warn("update: diff {} is read-only: copy progress will not survive a restart", p.args[1]);
  return TargetPtr(std::make_shared<UpdateTarget>(std::move(sys), std::move(diff), std::move(idx).value(),
                                                  p.length, bg, can_persist));
}

}  // namespace udm
