// The `update` target over a v0 diff (format_v0.h).
//
// Reads of blocks the diff changes are served from the diff: their chunk is
// decompressed once into the process's block cache (io/block_cache.h; one
// decode however many readers wait for it) and kept there while it is used.
// Other reads pass to the system device, runs of unchanged blocks in one read.
// A background thread copies the changed blocks onto the system device.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "device/allocation.h"
#include "device/target_kit.h"
#include "io/block_cache.h"
#include "update/format_v0_io.h"
#include "update/target_versions.h"
#include "util/log.h"

namespace udm::update {

namespace {

class UpdateTargetV0 : public ReadOnlyTarget {
 public:
  UpdateTargetV0(DevicePtr sys, DevicePtr diff, DiffIndex idx, uint64_t length, bool bg, bool can_persist,
                 JobPolicy policy)
      : sys_(std::move(sys)), diff_(std::move(diff)), idx_(std::move(idx)), length_(length),
        bg_enabled_(bg), can_persist_(can_persist), job_("update-copy-back", "blocks", policy) {
    done_ = idx_.recorded_progress();
    // Progress counts whole chunks; round a foreign record down to a chunk start.
    while (done_ > 0 && done_ < idx_.entries.size() &&
           idx_.chunks[idx_.chunk_of[done_]].first_entry != done_)
      done_--;
    job_.set_total(idx_.entries.size(), idx_.entries.size() * idx_.block_size());
    job_.set_done(done_, done_ * idx_.block_size());
  }
  ~UpdateTargetV0() override {
    stop_copy();
    cache_->drop_owner(owner_);
  }

  std::string type() const override { return "update"; }
  uint64_t size() const override { return length_; }
  DeviceCaps caps() const override {
    DeviceCaps c = ReadOnlyTarget::caps();
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
  Result<std::string> message(const std::vector<std::string>& args) override {
    return copy_back_message(job_, bg_enabled_, args, [this](const auto& a) { return ReadOnlyTarget::message(a); });
  }
  std::vector<JobInfo> jobs() const override { return copy_back_jobs(job_, bg_enabled_); }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    job_.foreground_io();
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
      UDM_ASSIGN_OR_RETURN(BlockCache::Block chunk, get_chunk(idx_.chunk_of[static_cast<size_t>(e)]));
      uint64_t n = std::min(end - pos, bs - in_block);
      std::memcpy(buf.data() + (pos - off), chunk->data() + uint64_t{en.offset} * bs + in_block, n);
      pos += n;
    }
    return Status::Ok();
  }
  // What reads return, without reading: a run of unchanged blocks is the
  // system device's map (holes of a sparse system file stay holes); a block
  // the diff changes is data (v0 has no zero operation). The copy-back only
  // writes changed blocks, so the unchanged ones never change under the
  // question. At most 1 GiB is described per call.
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override {
    const uint64_t bs = idx_.block_size();
    uint64_t pos = off, end = off + std::min<uint64_t>(len, uint64_t{1} << 30);
    while (pos < end && out.size() < kMaxAllocRuns) {
      uint64_t block = pos / bs;
      if (idx_.find(block) < 0) {
        auto it = std::upper_bound(idx_.entries.begin(), idx_.entries.end(), block,
                                   [](uint64_t b, const Entry& en) { return b < en.dest; });
        uint64_t run_end = it == idx_.entries.end() ? end : std::min(end, it->dest * bs);
        uint64_t covered = 0;
        UDM_TRY(append_allocation(*sys_, pos, run_end - pos, out, 0, covered));
        pos += covered;
        if (pos < run_end) break;  // the map is full
        continue;
      }
      uint64_t n = std::min(end - pos, bs - pos % bs);
      add_alloc_run(out, n, AllocKind::kData);
      pos += n;
    }
    return Status::Ok();
  }

 private:
  // The decompressed chunk, shared through the block cache.
  Result<BlockCache::Block> get_chunk(size_t ci) {
    return cache_->get(owner_, ci, [this, ci]() -> Result<std::vector<uint8_t>> {
      std::vector<uint8_t> data(idx_.chunk_bytes()), scratch;
      UDM_TRY(read_chunk(*diff_, idx_, ci, scratch, data));
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
    auto last_persist = std::chrono::steady_clock::now();
    Status s;
    job_.started();
    // A pause makes the progress so far durable first.
    auto on_pause = [&] {
      if (s.ok() && done_ != persisted) {
        s = persist(done_);
        persisted = done_;
        since = 0;
      }
    };
    while (!stop_ && done_ < idx_.entries.size()) {
      size_t ci = idx_.chunk_of[done_];
      const Chunk& c = idx_.chunks[ci];
      if (!job_.admit(uint64_t{c.n_entries} * bs, stop_, on_pause) || !s.ok()) break;
      s = read_chunk(*diff_, idx_, ci, scratch, chunk);
      if (!s.ok()) break;
      for (uint32_t i = 0; i < c.n_entries && s.ok(); i++) {
        const Entry& e = idx_.entries[c.first_entry + i];
        s = sys_->write(e.dest * bs, std::span<const uint8_t>(chunk.data() + uint64_t{e.offset} * bs, bs));
      }
      if (!s.ok()) break;
      done_ = c.first_entry + c.n_entries;
      job_.set_done(done_, done_ * bs);
      // Every kPersistEvery chunks, and at least once a second while the
      // copy moves (a throttled job crawls; a crash then costs a second's work).
      if (++since >= kPersistEvery || done_ == idx_.entries.size() ||
          std::chrono::steady_clock::now() - last_persist >= std::chrono::seconds(1)) {
        s = persist(done_);
        if (!s.ok()) break;
        persisted = done_;
        since = 0;
        last_persist = std::chrono::steady_clock::now();
      }
    }
    if (s.ok() && done_ != persisted) s = persist(done_);
    if (!s.ok()) log::error("update: background copy stopped: {}", s.to_string());
    job_.finished(s);
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
  std::shared_ptr<BlockCache> cache_ = BlockCache::shared();
  const uint64_t owner_ = BlockCache::new_owner();
  std::atomic<uint64_t> done_{0};
  BackgroundJob job_;
  std::atomic<bool> stop_{false};
  std::mutex thread_mu_;
  std::thread thread_;
};

}  // namespace

Result<TargetPtr> make_update_target_v0(UpdateDevices d) {
  auto idx = load_diff(*d.diff);
  if (!idx.ok()) return idx.status().context("update: diff " + d.diff_name);
  uint64_t bs = idx->block_size();
  if (d.length > d.sys->size())
    return Invalid(fmt::format("update: segment of {} bytes is larger than the system device ({} bytes)", d.length,
                               d.sys->size()));
  if (d.length % bs)
    return Invalid(fmt::format("update: segment length {} is not a multiple of the diff's block size {}", d.length, bs));
  if (!idx->entries.empty() && idx->entries.back().dest >= d.length / bs)
    return Invalid(fmt::format("update: the diff changes block {} but the segment has only {} blocks",
                               idx->entries.back().dest, d.length / bs));
  bool can_persist = !d.diff->caps().read_only;
  if (!can_persist)
    log::warn("update: diff {} is read-only: copy progress will not survive a restart", d.diff_name);
  return TargetPtr(std::make_shared<UpdateTargetV0>(std::move(d.sys), std::move(d.diff), std::move(idx).value(),
                                                    d.length, d.bg, can_persist, d.policy));
}

}  // namespace udm::update
