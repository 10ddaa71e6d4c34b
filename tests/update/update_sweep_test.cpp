// Power cut after every write N of the copy-back (unflushed writes dropped,
// or a random subset kept), then restart: the device always reads as the
// new image, the copy resumes from its durable record without redoing
// recorded work, and the partition ends equal to the new image.
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>

#include "io/fault_device.h"
#include "io/memory_device.h"
#include "update_util.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;

namespace {

// A window [off, off+len) of another device: the system partition and the
// diff live on one FaultDevice so one power cut hits both.
class Slice : public BlockDevice {
 public:
  Slice(DevicePtr d, uint64_t off, uint64_t len) : d_(std::move(d)), off_(off), len_(len) {}
  uint64_t size() const override { return len_; }
  DeviceCaps caps() const override { return d_->caps(); }

 protected:
  Status do_read(uint64_t o, std::span<uint8_t> b) override { return d_->read(off_ + o, b); }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override { return d_->write(off_ + o, b, fua); }
  Status do_flush() override { return d_->flush(); }

 private:
  DevicePtr d_;
  uint64_t off_, len_;
};

struct Rig {
  std::shared_ptr<FaultDevice> disk;
  MapResolver r;
  TargetPtr t;
};

Rig make_rig(std::vector<uint8_t> image, uint64_t sys_len) {
  Rig g;
  g.disk = std::make_shared<FaultDevice>(std::move(image));
  g.r.devs["sys"] = std::make_shared<Slice>(g.disk, 0, sys_len);
  g.r.devs["diff"] = std::make_shared<Slice>(g.disk, sys_len, g.disk->size() - sys_len);
  return g;
}

uint64_t copied(const Target& t) { return std::stoull(t.status()); }

}  // namespace

TEST(UpdateSweep, PowerCutAfterEveryWrite) {
  TempDir tmp;
  const uint32_t bs = 4096;
  auto [old_img, new_img] = make_pair_images(bs * 600, bs, 260, 77);
  write_file(tmp.file("o"), old_img);
  write_file(tmp.file("n"), new_img);
  DiffOptions o;
  o.progress = false;
  o.chunk_blocks = 2;  // many chunks: several progress records along the way
  auto st = make_diff(tmp.file("o"), tmp.file("n"), tmp.file("d"), o);
  ASSERT_TRUE(st.ok());
  auto diff = read_file(tmp.file("d"));
  std::vector<uint8_t> disk0 = old_img;
  disk0.insert(disk0.end(), diff.begin(), diff.end());
  const uint64_t total = st->changed_blocks;

  // Count the writes of a full uninterrupted copy-back.
  uint64_t full_writes;
  {
    Rig g = make_rig(disk0, old_img.size());
    auto t = make_update(g.r, old_img.size());
    ASSERT_TRUE(t.ok());
    (*t)->resume();
    ASSERT_EQ(wait_copied(**t), std::to_string(total) + " " + std::to_string(total));
    (*t)->presuspend();
    full_writes = g.disk->write_ops();
    ASSERT_GT(full_writes, total);
  }
  int resumed_from_record = 0;
  for (int mode = 0; mode < 2; mode++) {
    for (uint64_t n = 0; n <= full_writes; n++) {
      SCOPED_TRACE("mode " + std::to_string(mode) + " cut after write " + std::to_string(n));
      Rig g = make_rig(disk0, old_img.size());
      if (mode == 1) g.disk->set_unflushed_survival(0.5, n);
      g.disk->cut_after_writes(n);
      {
        auto t = make_update(g.r, old_img.size());
        ASSERT_TRUE(t.ok());
        (*t)->resume();
        for (int i = 0; i < 3000 && !g.disk->dead() && copied(**t) < total; i++)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        (*t)->presuspend();
      }
      if (!g.disk->dead()) g.disk->power_cut();
      // Reboot on what reached the platter.
      Rig h = make_rig(g.disk->durable_image(), old_img.size());
      auto t = make_update(h.r, old_img.size());
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      uint64_t start = copied(**t);
      if (start > 0) resumed_from_record++;
      std::vector<uint8_t> view(new_img.size());
      ASSERT_TRUE((*t)->read(0, view).ok());
      ASSERT_TRUE(view == new_img) << "device showed something other than the new image";
      uint64_t before = h.disk->write_ops();
      (*t)->resume();
      ASSERT_EQ(wait_copied(**t), std::to_string(total) + " " + std::to_string(total));
      (*t)->presuspend();
      // Work recorded as done is not redone.
      EXPECT_LE(h.disk->write_ops() - before, (total - start) + 64);
      auto img = h.disk->current_image();
      ASSERT_TRUE(std::equal(new_img.begin(), new_img.end(), img.begin())) << "partition != new";
      ASSERT_TRUE((*t)->read(0, view).ok());
      ASSERT_TRUE(view == new_img);
    }
  }
  EXPECT_GT(resumed_from_record, 0) << "no cut ever resumed from a durable record";
}

// Format v1: the ordered copy-back with COPY chains and cycles, DELTA
// operations that read their own block (stash) and REPLACE chunks. A power
// cut after every write N (unflushed writes dropped, or half of them kept),
// reboot: the device reads as new before and after resuming, and the
// partition ends equal to new. The sweep itself, for a diff already made
// from old_img to new_img:
static void v1_sweep(const std::vector<uint8_t>& old_img, const std::vector<uint8_t>& new_img, const std::string& diff_path,
              const DiffV1Stats& st_) {
  const DiffV1Stats* st = &st_;
  auto diff = read_file(diff_path);
  std::vector<uint8_t> disk0 = old_img;
  disk0.insert(disk0.end(), diff.begin(), diff.end());
  const uint64_t total = st->ops;
  const std::string done_status = std::to_string(total) + " " + std::to_string(total);

  uint64_t full_writes;
  {
    Rig g = make_rig(disk0, old_img.size());
    auto t = make_update(g.r, old_img.size());
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    (*t)->resume();
    ASSERT_EQ(wait_copied(**t), done_status);
    (*t)->presuspend();
    full_writes = g.disk->write_ops();
    ASSERT_GT(full_writes, total);
    auto img = g.disk->current_image();
    ASSERT_TRUE(std::equal(new_img.begin(), new_img.end(), img.begin()));
  }
  int resumed_from_record = 0, reads_during = 0;
  for (int mode = 0; mode < 2; mode++) {
    for (uint64_t n = 0; n <= full_writes; n++) {
      SCOPED_TRACE("mode " + std::to_string(mode) + " cut after write " + std::to_string(n));
      Rig g = make_rig(disk0, old_img.size());
      if (mode == 1) g.disk->set_unflushed_survival(0.5, n);
      g.disk->cut_after_writes(n);
      std::vector<uint8_t> view(new_img.size());
      {
        auto t = make_update(g.r, old_img.size());
        ASSERT_TRUE(t.ok());
        (*t)->resume();
        // Reads while the copy-back runs (until the power goes).
        for (int i = 0; i < 3000 && !g.disk->dead() && copied(**t) < total; i++) {
          if ((*t)->read(0, view).ok() && !g.disk->dead()) {
            ASSERT_TRUE(view == new_img) << "device showed something other than new during the copy-back";
            reads_during++;
          }
        }
        (*t)->presuspend();
      }
      if (!g.disk->dead()) g.disk->power_cut();
      Rig h = make_rig(g.disk->durable_image(), old_img.size());
      auto t = make_update(h.r, old_img.size());
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      uint64_t start = copied(**t);
      if (start > 0) resumed_from_record++;
      ASSERT_TRUE((*t)->read(0, view).ok());
      ASSERT_TRUE(view == new_img) << "after the cut the device showed something other than new";
      (*t)->resume();
      ASSERT_EQ(wait_copied(**t), done_status);
      (*t)->presuspend();
      auto img = h.disk->current_image();
      ASSERT_TRUE(std::equal(new_img.begin(), new_img.end(), img.begin())) << "partition != new";
      ASSERT_TRUE((*t)->read(0, view).ok());
      ASSERT_TRUE(view == new_img);
      // And once more after a clean restart on the durable state.
      Rig k = make_rig(h.disk->durable_image(), old_img.size());
      auto t2 = make_update(k.r, old_img.size());
      ASSERT_TRUE(t2.ok()) << t2.status().to_string();
      EXPECT_EQ((*t2)->status(), done_status);
      ASSERT_TRUE((*t2)->read(0, view).ok());
      ASSERT_TRUE(view == new_img);
    }
  }
  EXPECT_GT(resumed_from_record, 0) << "no cut ever resumed from a durable record";
  EXPECT_GT(reads_during, 0);
}

TEST(UpdateSweep, V1PowerCutAfterEveryWrite) {
  TempDir tmp;
  const uint32_t bs = 4096;
  auto [old_img, new_img] = make_v1_pair(160, bs, 21);
  write_file(tmp.file("o"), old_img);
  write_file(tmp.file("n"), new_img);
  DiffV1Options o;
  o.progress = false;
  o.level = 3;
  o.chunk_blocks = 3;
  auto st = make_diff_v1(tmp.file("o"), tmp.file("n"), tmp.file("d"), o);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  ASSERT_GT(st->copy, 0u);
  ASSERT_GT(st->stash_ops, 0u);
  ASSERT_GT(st->replace, 0u);
  ASSERT_LT(st->delta_frames, st->delta) << "no DELTA frame holds more than one block";
  ASSERT_GT(st->xor_ops, 0u);
  std::cerr << "v1 sweep diff: COPY " << st->copy << " SAVE " << st->save_ops << " DELTA " << st->delta << " in "
            << st->delta_frames << " frames, XOR " << st->xor_ops << " (self "
            << st->stash_ops << ") REPLACE " << st->replace << " ZERO " << st->zero << "\n";
  v1_sweep(old_img, new_img, tmp.file("d"), *st);
}

// Cycles with nowhere to park inside the update (no REPLACE or ZERO
// operation whose old block is unread): every SAVE parks its block in the
// image's zero free space and a held-back ZERO operation restores it. The
// same power-cut sweep: the parked blocks must never show through.
TEST(UpdateSweep, V1ZeroParkingPowerCutAfterEveryWrite) {
  TempDir tmp;
  const uint32_t bs = 4096;
  auto [old_img, new_img] = make_v1_cycle_pair(48, bs, 5);
  write_file(tmp.file("o"), old_img);
  write_file(tmp.file("n"), new_img);
  DiffV1Options o;
  o.progress = false;
  o.level = 3;
  auto st = make_diff_v1(tmp.file("o"), tmp.file("n"), tmp.file("d"), o);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  ASSERT_GT(st->zero_parks, 0u);
  EXPECT_EQ(st->converted, 0u) << "a cycle was broken by REPLACE although zero blocks were free";
  EXPECT_EQ(st->replace, 0u);
  std::cerr << "v1 zero-parking sweep diff: COPY " << st->copy << " SAVE " << st->save_ops << " (in zero blocks "
            << st->zero_parks << ") ZERO " << st->zero << "\n";
  v1_sweep(old_img, new_img, tmp.file("d"), *st);
}
