// The power-cut sweep of the v1 copy-back, shared by update_sweep_test and
// update_fs_test, and the leak check it runs at every point.
//
// The system partition and the diff are two windows (Slice) of one
// FaultDevice, so one power cut hits both. For every cut point N (every
// write, or every stride-th for big pairs):
//   1. a write gate lets the copy-back make exactly N writes and refuses the
//      next one; the target, still alive, must read as NEW (every block
//      alone and unaligned spans too) — the copy-back's intermediate state;
//   2. process crash: a new target over what reached the disk cache
//      (current image) reads as NEW, finishes the copy, the partition is NEW;
//   3. power cut: unflushed writes dropped (mode 0) or half of them kept
//      (mode 1); a new target over the durable image reads as NEW before and
//      after it resumes, the partition ends NEW, the system device past the
//      new image's end is untouched, and a clean restart says "done".
// Any block that reads wrong is named with what it holds instead: the old
// content, a SAVE's parked copy, zeroes (zero parking), another block's new
// content (a stash or misplaced block), or the system device's bytes past the
// old image.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <iostream>
#include <string_view>
#include <unordered_map>

#include "common/job_wait.h"
#include "io/fault_device.h"
#include "update/format_v1_io.h"
#include "update_util.h"

namespace udm::test {

// Writes allowed through every Slice sharing it; the first refused one sets `hit`.
struct WriteGate {
  std::atomic<int64_t> left{INT64_MAX};
  std::atomic<bool> hit{false};
};

// A window [off, off+len) of another device.
class Slice : public BlockDevice {
 public:
  Slice(DevicePtr d, uint64_t off, uint64_t len, std::shared_ptr<WriteGate> gate = nullptr)
      : d_(std::move(d)), off_(off), len_(len), gate_(std::move(gate)) {}
  uint64_t size() const override { return len_; }
  DeviceCaps caps() const override { return d_->caps(); }

 protected:
  Status do_read(uint64_t o, std::span<uint8_t> b) override { return d_->read(off_ + o, b); }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override {
    if (gate_ && gate_->left.fetch_sub(1) <= 0) {
      gate_->hit = true;
      return IoError("write gate closed");
    }
    return d_->write(off_ + o, b, fua);
  }
  Status do_flush() override { return d_->flush(); }

 private:
  DevicePtr d_;
  uint64_t off_, len_;
  std::shared_ptr<WriteGate> gate_;
};

struct Rig {
  std::shared_ptr<FaultDevice> disk;
  std::shared_ptr<WriteGate> gate = std::make_shared<WriteGate>();
  MapResolver r;
};

inline Rig make_rig(std::vector<uint8_t> image, uint64_t sys_len) {
  Rig g;
  g.disk = std::make_shared<FaultDevice>(std::move(image));
  g.r.devs["sys"] = std::make_shared<Slice>(g.disk, 0, sys_len, g.gate);
  g.r.devs["diff"] = std::make_shared<Slice>(g.disk, sys_len, g.disk->size() - sys_len, g.gate);
  return g;
}

inline uint64_t copied(const Target& t) { return std::stoull(t.status()); }

// Names what a block read through the update target holds when it is not
// the new image's block.
class LeakCheck {
 public:
  LeakCheck(const std::vector<uint8_t>& old_img, const std::vector<uint8_t>& new_img, const std::vector<uint8_t>& sys0,
            std::span<const uint8_t> diff, uint32_t bs)
      : old_(old_img), new_(new_img), sys0_(sys0), bs_(bs) {
    for (uint64_t b = 0; b < old_.size() / bs; b++) old_at_.emplace(key(old_.data() + b * bs), b);
    for (uint64_t b = 0; b < new_.size() / bs; b++) new_at_.emplace(key(new_.data() + b * bs), b);
    auto idx = update::load_v1_bytes(diff);
    if (idx.ok())
      for (const auto& op : idx->ops)
        if (op.type == update::OpType::Save) parked_[op.dest] = op.src;
  }

  std::string describe(uint64_t b, const uint8_t* got) const {
    std::string s = "block " + std::to_string(b) + " reads ";
    if (std::all_of(got, got + bs_, [](uint8_t c) { return c == 0; })) return s + "zeroes (zero parking or never written)";
    if (auto p = parked_.find(b); p != parked_.end() && std::memcmp(got, old_.data() + p->second * bs_, bs_) == 0)
      return s + "the parked copy of old block " + std::to_string(p->second) + " (a SAVE's)";
    if ((b + 1) * bs_ <= old_.size() && std::memcmp(got, old_.data() + b * bs_, bs_) == 0)
      return s + "its OLD content (the update did not show)";
    if ((b + 1) * bs_ <= sys0_.size() && (b + 1) * bs_ > old_.size() && std::memcmp(got, sys0_.data() + b * bs_, bs_) == 0)
      return s + "the system device's bytes past the old image's end";
    if (auto it = new_at_.find(key(got)); it != new_at_.end())
      return s + "the new content of block " + std::to_string(it->second) + " (a stash or a misplaced block)";
    if (auto it = old_at_.find(key(got)); it != old_at_.end())
      return s + "the old content of block " + std::to_string(it->second) + " (stale or parked data)";
    return s + "bytes found in neither image";
  }

  // The whole device in one read, then (per_block) every block alone in a
  // shuffled order and unaligned 512-byte-granular spans. Failures name the
  // first few wrong blocks; returns false if any.
  bool check(Target& t, const std::string& when, bool per_block, uint64_t seed = 1) const {
    if (t.size() != new_.size()) {
      ADD_FAILURE() << when << ": device is " << t.size() << " bytes, the new image " << new_.size();
      return false;
    }
    std::vector<uint8_t> view(new_.size());
    Status st = t.read(0, view);
    if (!st.ok()) {
      ADD_FAILURE() << when << ": read failed: " << st.to_string();
      return false;
    }
    int bad = 0;
    for (uint64_t b = 0; b < view.size() / bs_ && bad < 3; b++)
      if (std::memcmp(view.data() + b * bs_, new_.data() + b * bs_, bs_) != 0) {
        ADD_FAILURE() << when << " (one read of the device): " << describe(b, view.data() + b * bs_);
        bad++;
      }
    if (bad || !per_block) return bad == 0;
    const uint64_t blocks = view.size() / bs_;
    std::vector<uint64_t> order(blocks);
    for (uint64_t b = 0; b < blocks; b++) order[b] = b;
    std::mt19937_64 rng(seed);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<uint8_t> blk(bs_);
    for (uint64_t b : order) {
      st = t.read(b * bs_, blk);
      if (!st.ok() || std::memcmp(blk.data(), new_.data() + b * bs_, bs_) != 0) {
        ADD_FAILURE() << when << " (block read alone): "
                      << (st.ok() ? describe(b, blk.data()) : "read failed: " + st.to_string());
        if (++bad >= 3) return false;
      }
    }
    for (int i = 0; i < 16 && bad == 0; i++) {
      uint64_t off = (rng() % (view.size() / 512)) * 512;
      uint64_t len = std::min<uint64_t>(view.size() - off, 512 * (1 + rng() % (3 * bs_ / 512)));
      std::vector<uint8_t> span(len);
      st = t.read(off, span);
      if (!st.ok() || std::memcmp(span.data(), new_.data() + off, len) != 0) {
        ADD_FAILURE() << when << ": unaligned read [" << off << ", +" << len << ") differs from the new image";
        bad++;
      }
    }
    return bad == 0;
  }

 private:
  static std::string_view sv(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }
  size_t key(const uint8_t* p) const { return std::hash<std::string_view>{}(sv(p, bs_)); }
  const std::vector<uint8_t>& old_;
  const std::vector<uint8_t>& new_;
  const std::vector<uint8_t>& sys0_;
  uint32_t bs_;
  std::unordered_multimap<size_t, uint64_t> old_at_, new_at_;
  std::unordered_map<uint64_t, uint64_t> parked_;  // parking block -> old block parked there
};

struct SweepOpts {
  uint64_t stride = 1;            // cut after every stride-th write (1 = every write)
  uint64_t sys_extra_blocks = 0;  // system device blocks past max(old, new), random bytes
  bool racing_reads = true;       // mode 0: whole-device reads racing the copy-back
  std::vector<std::string> opts;  // table options of the swept targets (throttle=..., device/background_job.h)
  bool pause_midway = false;      // pause (message) once half the operations are copied, check, resume
};
struct SweepResult {
  uint64_t full_writes = 0, points = 0, resumed_from_record = 0, reads_during = 0, live_checks = 0;
  uint64_t pauses = 0;  // runs paused in the middle (pause_midway)
  // Restarts whose diff recorded a logged batch (checkpoint state 2) to finish.
  uint64_t batch_recoveries = 0;
};

// A sweep over one diff (already made from old_img to new_img); total_ops is
// the diff's operation count. ASSERTs inside: callers check HasFatalFailure().
inline void v1_sweep(const std::vector<uint8_t>& old_img, const std::vector<uint8_t>& new_img, const std::string& diff_path,
                     uint64_t total_ops, uint32_t bs, const SweepOpts& opt, SweepResult* res) {
  SweepResult r;
  const auto diff = read_file(diff_path);
  ASSERT_TRUE(diff.size() >= 8 && std::memcmp(diff.data(), "update", 6) == 0)
      << diff_path << ": " << diff.size() << " bytes, not an update diff";
  const uint64_t sys_len = std::max(old_img.size(), new_img.size()) + opt.sys_extra_blocks * bs;
  // The system device: the old image, then bytes no image has.
  std::vector<uint8_t> sys0 = old_img;
  if (sys_len > old_img.size()) {
    auto junk = random_bytes(sys_len - old_img.size(), 0xdead);
    sys0.insert(sys0.end(), junk.begin(), junk.end());
  }
  std::vector<uint8_t> disk0 = sys0;
  disk0.insert(disk0.end(), diff.begin(), diff.end());
  const LeakCheck leak(old_img, new_img, sys0, diff, bs);
  const std::string done_status = std::to_string(total_ops) + " " + std::to_string(total_ops);
  const uint64_t new_len = new_img.size();

  // The partition after a finished copy-back: the new image, then the
  // system device's old bytes (nothing is written past the new image).
  auto check_partition = [&](const std::vector<uint8_t>& img, const std::string& when) {
    ASSERT_TRUE(std::equal(new_img.begin(), new_img.end(), img.begin())) << when << ": partition != new";
    ASSERT_TRUE(std::equal(sys0.begin() + static_cast<ptrdiff_t>(new_len), sys0.end(), img.begin() + static_cast<ptrdiff_t>(new_len)))
        << when << ": the copy-back wrote past the new image's end";
  };
  auto wait_done = [&](Target& t) {  // like wait_copied, polling finer (many waits per sweep)
    for (int i = 0; i < 300000 && copied(t) < total_ops; i++) std::this_thread::sleep_for(std::chrono::microseconds(100));
    return t.status();
  };
  auto finish = [&](Rig& h, Target& t, const std::string& when) {
    t.resume();
    ASSERT_EQ(wait_done(t), done_status) << when;
    t.presuspend();
    check_partition(h.disk->current_image(), when);
    ASSERT_TRUE(leak.check(t, when + ", after completion", false));
  };
  {
    Rig g = make_rig(disk0, sys_len);
    auto t = make_update(g.r, new_len);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    ASSERT_TRUE(leak.check(**t, "fresh target", true));
    finish(g, **t, "uninterrupted copy-back");
    r.full_writes = g.disk->write_ops();
    // Runs of operations share a write; the records add some.
    ASSERT_GT(r.full_writes, 1u);
  }
  const uint64_t stride = std::max<uint64_t>(1, opt.stride);
  for (int mode = 0; mode < 2; mode++) {
    for (uint64_t n = 0; n <= r.full_writes; n = (n == r.full_writes ? n + 1 : std::min(n + stride, r.full_writes))) {
      const std::string at = "mode " + std::to_string(mode) + ", after write " + std::to_string(n);
      SCOPED_TRACE(at);
      r.points++;
      Rig g = make_rig(disk0, sys_len);
      if (mode == 1) g.disk->set_unflushed_survival(0.5, n);
      g.gate->left = static_cast<int64_t>(n);
      {
        auto t = make_update(g.r, new_len, true, opt.opts);
        ASSERT_TRUE(t.ok()) << t.status().to_string();
        (*t)->resume();
        std::vector<uint8_t> view(new_len);
        bool paused_once = false;
        for (int i = 0; i < 30000 && !g.gate->hit && copied(**t) < total_ops; i++) {
          if (opt.pause_midway && !paused_once && copied(**t) >= total_ops / 2) {
            // Pause (the copy-back checkpoints), read while paused, resume.
            paused_once = true;
            ASSERT_TRUE((*t)->message({"pause"}).ok());
            // The piece of work under way (one operation, or a logged batch
            // of them) finishes and the worker parks (or fails at the write
            // gate, or ends); then nothing moves.
            const auto stopped = wait_job_stopped([&] { return (*t)->jobs().at(0); });
            ASSERT_TRUE(stopped) << "the copy-back did not stop within 10 s of the pause";
            const bool parked = stopped->parked;
            const uint64_t at_pause = copied(**t);
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            ASSERT_EQ(copied(**t), at_pause) << "the copy-back went on while paused";
            ASSERT_TRUE((*t)->read(0, view).ok());
            ASSERT_TRUE(view == new_img) << "device showed something other than new while paused";
            ASSERT_TRUE((*t)->message({"resume"}).ok());
            if (parked) r.pauses++;  // held by the pause (not stopped by the gate, not at its end)
          }
          if (mode == 0 && opt.racing_reads && (*t)->read(0, view).ok()) {
            ASSERT_TRUE(view == new_img) << "device showed something other than new during the copy-back";
            r.reads_during++;
          } else {
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
        }
        (*t)->presuspend();
        // The copy-back stopped after exactly n writes; the live target
        // still serves the new image from that intermediate state.
        ASSERT_TRUE(leak.check(**t, "live target stopped " + at, true, n));
        r.live_checks++;
      }
      if (mode == 0) {  // process crash: every write that reached the disk stays
        Rig c = make_rig(g.disk->current_image(), sys_len);
        auto t = make_update(c.r, new_len, true, opt.opts);
        ASSERT_TRUE(t.ok()) << t.status().to_string();
        ASSERT_TRUE(leak.check(**t, "restart after a process crash " + at, false));
        finish(c, **t, "finish after a process crash " + at);
      }
      g.disk->power_cut();
      {
        const auto img = g.disk->durable_image();
        auto hdr = update::decode_v1_header(std::span<const uint8_t>(img).subspan(sys_len, update::kV1HeaderSize));
        ASSERT_TRUE(hdr.ok()) << at << ": " << hdr.status().to_string();
        if (hdr->ckpt_state == 2) r.batch_recoveries++;
      }
      Rig h = make_rig(g.disk->durable_image(), sys_len);
      auto t = make_update(h.r, new_len, true, opt.opts);
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      if (copied(**t) > 0) r.resumed_from_record++;
      ASSERT_TRUE(leak.check(**t, "reboot after a power cut " + at, n % 7 == 0, n));
      finish(h, **t, "finish after a power cut " + at);
      Rig k = make_rig(h.disk->durable_image(), sys_len);
      auto t2 = make_update(k.r, new_len);
      ASSERT_TRUE(t2.ok()) << t2.status().to_string();
      EXPECT_EQ((*t2)->status(), done_status);
      ASSERT_TRUE(leak.check(**t2, "clean restart after completion " + at, false));
    }
  }
  EXPECT_GT(r.resumed_from_record, 0u) << "no cut ever resumed from a durable record";
  if (res) *res = r;
}

}  // namespace udm::test
