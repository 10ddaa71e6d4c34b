// Power cut after every write N of the copy-back (unflushed writes dropped,
// or a random subset kept), then restart: the device always reads as the
// new image, the copy resumes from its durable record without redoing
// recorded work, and the partition ends equal to the new image.
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>
#include <tuple>

#include "io/fault_device.h"
#include "io/memory_device.h"
#include "common/sys_util.h"
#include "update_util.h"
#include "v1_sweep.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;

namespace {

// A format v0 diff over a made pair; the rigs start from disk0 (the old
// image, then the diff).
struct V0Case {
  std::vector<uint8_t> old_img, new_img, disk0;
  uint64_t total = 0;  // changed blocks: the status when the copy-back is done is "total total"
  std::string done() const { return std::to_string(total) + " " + std::to_string(total); }
};
void make_v0_case(TempDir& tmp, uint64_t blocks, uint64_t changed, uint64_t seed, V0Case* c) {
  const uint32_t bs = 4096;
  std::tie(c->old_img, c->new_img) = make_pair_images(bs * blocks, bs, changed, seed);
  write_file(tmp.file("o"), c->old_img);
  write_file(tmp.file("n"), c->new_img);
  DiffOptions o;
  o.progress = false;
  o.chunk_blocks = 2;  // many chunks: several progress records along the way
  auto st = make_diff(tmp.file("o"), tmp.file("n"), tmp.file("d"), o);
  ASSERT_TRUE(st.ok());
  auto diff = read_file(tmp.file("d"));
  c->disk0 = c->old_img;
  c->disk0.insert(c->disk0.end(), diff.begin(), diff.end());
  c->total = st->changed_blocks;
}

// The writes of a full uninterrupted copy-back.
void count_full_writes(const V0Case& c, const std::vector<std::string>& opts, uint64_t* writes) {
  Rig g = make_rig(c.disk0, c.old_img.size());
  auto t = make_update(g.r, c.old_img.size(), true, opts);
  ASSERT_TRUE(t.ok());
  (*t)->resume();
  ASSERT_EQ(wait_copied(**t), c.done());
  (*t)->presuspend();
  *writes = g.disk->write_ops();
  ASSERT_GT(*writes, c.total);
}

// Reboot on what reached the platter: the device reads as the new image,
// the copy resumes from its durable record without redoing recorded work,
// and the partition ends equal to the new image. *start: where it resumed.
void reboot_and_finish(const V0Case& c, const std::vector<uint8_t>& durable, const std::vector<std::string>& opts,
                       uint64_t* start) {
  Rig h = make_rig(durable, c.old_img.size());
  auto t = make_update(h.r, c.old_img.size(), true, opts);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  *start = copied(**t);
  std::vector<uint8_t> view(c.new_img.size());
  ASSERT_TRUE((*t)->read(0, view).ok());
  ASSERT_TRUE(view == c.new_img) << "device showed something other than the new image";
  const uint64_t before = h.disk->write_ops();
  (*t)->resume();
  ASSERT_EQ(wait_copied(**t), c.done());
  (*t)->presuspend();
  // Work recorded as done is not redone.
  EXPECT_LE(h.disk->write_ops() - before, (c.total - *start) + 64);
  auto img = h.disk->current_image();
  ASSERT_TRUE(std::equal(c.new_img.begin(), c.new_img.end(), img.begin())) << "partition != new";
  ASSERT_TRUE((*t)->read(0, view).ok());
  ASSERT_TRUE(view == c.new_img);
}

}  // namespace

TEST(UpdateSweep, PowerCutAfterEveryWrite) {
  TempDir tmp;
  V0Case c;
  ASSERT_NO_FATAL_FAILURE(make_v0_case(tmp, 600, 260, 77, &c));
  const auto& [old_img, new_img] = std::tie(c.old_img, c.new_img);
  const auto& disk0 = c.disk0;
  const uint64_t total = c.total;
  uint64_t full_writes;
  ASSERT_NO_FATAL_FAILURE(count_full_writes(c, {}, &full_writes));
  int resumed_from_record = 0, reads_during = 0, reads_before = 0;
  for (int mode = 0; mode < 2; mode++) {
    for (uint64_t n = 0; n <= full_writes; n++) {
      SCOPED_TRACE("mode " + std::to_string(mode) + " cut after write " + std::to_string(n));
      Rig g = make_rig(disk0, old_img.size());
      if (mode == 1) g.disk->set_unflushed_survival(0.5, n);
      g.disk->cut_after_writes(n);
      {
        auto t = make_update(g.r, old_img.size());
        ASSERT_TRUE(t.ok());
        std::vector<uint8_t> live(new_img.size());
        if (mode == 0) {  // before the copy-back starts (a slow build may never see it running)
          ASSERT_TRUE((*t)->read(0, live).ok());
          ASSERT_TRUE(live == new_img) << "device showed something other than new before the copy-back";
          reads_before++;
        }
        (*t)->resume();
        // Reads race the copy-back (mode 0) until the power goes: always new.
        for (int i = 0; i < 3000 && !g.disk->dead() && copied(**t) < total; i++) {
          if (mode == 0 && (*t)->read(0, live).ok() && !g.disk->dead()) {
            ASSERT_TRUE(live == new_img) << "device showed something other than new during the copy-back";
            reads_during++;
          } else {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
        }
        (*t)->presuspend();
      }
      if (!g.disk->dead()) g.disk->power_cut();
      uint64_t start;
      ASSERT_NO_FATAL_FAILURE(reboot_and_finish(c, g.disk->durable_image(), {}, &start));
      if (start > 0) resumed_from_record++;
    }
  }
  EXPECT_GT(resumed_from_record, 0) << "no cut ever resumed from a durable record";
  EXPECT_GT(reads_before, 0);
  // How many reads raced the copy-back depends on speed (ThreadSanitizer
  // builds may see none); each one that did was checked above.
  RecordProperty("reads_during_copy_back", reads_during);
}

// Format v0's copy-back as the daemon runs it under a policy: a rate
// throttle in the table, reads racing it, a pause once it has started
// (checked still, the device read while paused, then resumed); a cut after
// every write, unflushed writes dropped or kept at random; after the reboot
// the device is the new image and the copy finishes.
TEST(UpdateSweep, V0PowerCutThrottledAndPausedMidway) {
  TempDir tmp;
  V0Case c;
  ASSERT_NO_FATAL_FAILURE(make_v0_case(tmp, 200, 90, 78, &c));
  const auto& [old_img, new_img] = std::tie(c.old_img, c.new_img);
  const auto& disk0 = c.disk0;
  const uint64_t total = c.total;
  const std::vector<std::string> policy = {"throttle=8"};  // MiB/s: ~40 ms per run (v1's sweep runs `auto`)
  uint64_t full_writes;
  ASSERT_NO_FATAL_FAILURE(count_full_writes(c, policy, &full_writes));
  uint64_t pauses = 0, resumed = 0, points = 0, reads = 0;
  for (int mode = 0; mode < 2; mode++) {
    for (uint64_t n = 0; n <= full_writes; n++) {
      SCOPED_TRACE("mode " + std::to_string(mode) + " cut after write " + std::to_string(n));
      points++;
      Rig g = make_rig(disk0, old_img.size());
      if (mode == 1) g.disk->set_unflushed_survival(0.5, n + 1000);
      g.disk->cut_after_writes(n);
      {
        auto t = make_update(g.r, old_img.size(), true, policy);
        ASSERT_TRUE(t.ok());
        std::vector<uint8_t> live(new_img.size());
        (*t)->resume();
        bool paused_once = false;
        int run_reads = 0;
        for (int i = 0; i < 30000 && !g.disk->dead() && copied(**t) < total; i++) {
          if (!paused_once && copied(**t) > 0) {
            paused_once = true;
            ASSERT_TRUE((*t)->message({"pause"}).ok());
            // The block under way may land; then the worker parks (or fails
            // at the cut, or ends) and nothing moves.
            const auto stopped = wait_job_stopped([&] { return (*t)->jobs().at(0); });
            ASSERT_TRUE(stopped) << "the copy-back did not stop within 10 s of the pause";
            const bool parked = stopped->parked;
            const uint64_t at = copied(**t);
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            ASSERT_EQ(copied(**t), at) << "the copy-back went on while paused";
            if (!g.disk->dead()) {
              ASSERT_TRUE((*t)->read(0, live).ok());
              ASSERT_TRUE(live == new_img) << "device showed something other than new while paused";
            }
            ASSERT_TRUE((*t)->message({"resume"}).ok());
            if (parked) pauses++;  // held by the pause (not stopped by the cut, not at its end)
          } else if (mode == 0 && run_reads < 8 && (*t)->read(0, live).ok() && !g.disk->dead()) {
            run_reads++;  // a few reads racing the copy-back
            ASSERT_TRUE(live == new_img) << "device showed something other than new during the copy-back";
            reads++;
          } else {
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
        }
        (*t)->presuspend();
      }
      if (!g.disk->dead()) g.disk->power_cut();
      uint64_t start;
      ASSERT_NO_FATAL_FAILURE(reboot_and_finish(c, g.disk->durable_image(), policy, &start));
      if (start > 0) resumed++;
    }
  }
  std::cerr << "v0 throttled+paused sweep: " << points << " cut points over " << full_writes << " writes, " << pauses
            << " paused mid-way, " << resumed << " resumed from a record, " << reads << " racing reads\n";
  EXPECT_GT(pauses, points / 4);
  EXPECT_GT(resumed, 0u);
  EXPECT_GT(reads, 0u);
}

// Format v1: the ordered copy-back with COPY chains and cycles, DELTA
// operations that read their own block (stash), SAVE parking and REPLACE
// chunks, through the sweep of v1_sweep.h (every write a cut point).
static SweepResult sweep(const std::vector<uint8_t>& old_img, const std::vector<uint8_t>& new_img,
                         const std::string& diff_path, const DiffV1Stats& st, SweepOpts opt = {}) {
  SweepResult r;
  v1_sweep(old_img, new_img, diff_path, st.ops + st.verity_blocks, 4096, opt, &r);
  std::cerr << "sweep: " << r.points << " cut points over " << r.full_writes << " writes, " << r.live_checks
            << " live checks, " << r.resumed_from_record << " resumed from a record (" << r.batch_recoveries
            << " finishing a logged batch), " << r.reads_during << " racing reads\n";
  return r;
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
  // Every operation that reads its own block finds a scratch block: no
  // stash, each goes through a logged batch of its own.
  ASSERT_EQ(st->stash_blocks, 0u);
  std::cerr << "v1 sweep diff: COPY " << st->copy << " SAVE " << st->save_ops << " DELTA " << st->delta << " in "
            << st->delta_frames << " frames, XOR " << st->xor_ops << " (self "
            << st->stash_ops << ") REPLACE " << st->replace << " ZERO " << st->zero << "\n";
  sweep(old_img, new_img, tmp.file("d"), *st);
}

// The same sweep with the copy-back under `throttle=auto` (the racing reads
// of mode 0 make it trickle) and paused once half-way (the pause writes a
// checkpoint, then reads while paused, then resume): a cut anywhere, inside
// the pause's checkpoint too, must still leave the new image (issue 16).
TEST(UpdateSweep, V1PowerCutThrottledAndPausedMidway) {
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
  SweepOpts opt;
  opt.opts = {"throttle=auto"};
  opt.pause_midway = true;
  opt.stride = 2;
  SweepResult r;
  v1_sweep(old_img, new_img, tmp.file("d"), st->ops, bs, opt, &r);
  std::cerr << "throttled+paused sweep: " << r.points << " cut points over " << r.full_writes << " writes, "
            << r.pauses << " paused mid-way, " << r.resumed_from_record << " resumed from a record\n";
  EXPECT_GT(r.pauses, 0u);
}

// A verity area the device regenerates (flag VERITY_TREE, the images' trees
// with different random salts): written after the last operation, then
// flushed; a cut anywhere - before the area, in its write, before its flush
// - leaves a device that reads as the new image, area included, and a
// partition that ends as the new image (a restart rewrites the area).
TEST(UpdateSweep, V1VerityRegeneratedPowerCutAfterEveryWrite) {
  TempDir tmp;
  auto [o, n] = make_v1_pair(160, 4096, 23);
  auto vo = with_verity(o, random_bytes(32, 1));
  auto vn = with_verity(n, random_bytes(32, 2));
  DiffV1Options opt;
  opt.progress = false;
  opt.level = 3;
  opt.chunk_blocks = 3;
  opt.verity_hash_offset = vn.hash_offset;
  auto st = make_v1_diff(tmp, vo.img, vn.img, opt);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  ASSERT_GT(st->verity_blocks, 0u);
  ASSERT_GT(st->copy, 0u);
  sweep(vo.img, vn.img, tmp.file("diff"), *st);
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
  sweep(old_img, new_img, tmp.file("d"), *st);
}

// A shift (new block b = old block b+1: each COPY reads the block the next
// one overwrites, a barrier at every operation) followed by fresh blocks
// nothing reads: the copy-back logs its barrier batches into the fresh
// blocks' places (checkpoint state 2, format_v1.h V1ScratchPlanner). The
// sweep must cut inside such batches and finish them from the scratch.
TEST(UpdateSweep, V1LoggedBatchPowerCutAfterEveryWrite) {
  TempDir tmp;
  const uint32_t bs = 4096;
  const uint64_t shift = 40, fresh = 88, blocks = shift + fresh;
  auto old_img = random_bytes(blocks * bs, 5);
  std::vector<uint8_t> new_img(old_img.size());
  for (uint64_t b = 0; b < shift; b++) std::memcpy(&new_img[b * bs], &old_img[(b + 1) * bs], bs);
  auto fr = random_bytes(fresh * bs, 6);
  std::memcpy(&new_img[shift * bs], fr.data(), fr.size());
  write_file(tmp.file("o"), old_img);
  write_file(tmp.file("n"), new_img);
  DiffV1Options o;
  o.progress = false;
  o.level = 1;
  o.chunk_blocks = 16;
  // Without chunk references the generator holds REPLACE operations back to
  // the end of the order: the scratch supply. (With them, REPLACE goes first
  // so its references stay intact, and this pair would have no scratch.)
  o.chunk_refs = false;
  auto st = make_diff_v1(tmp.file("o"), tmp.file("n"), tmp.file("d"), o);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  std::cerr << "logged-batch sweep diff: COPY " << st->copy << " REPLACE " << st->replace << " barriers "
            << st->barriers << "\n";
  ASSERT_GE(st->copy, shift - 1);
  auto r = sweep(old_img, new_img, tmp.file("d"), *st);
  EXPECT_GT(r.batch_recoveries, 0u) << "no cut ever left a logged batch to finish";
  if (HasFatalFailure()) return;

  // A logged batch whose scratch no longer matches its record (a bad
  // sector, a foreign write): refused, naming the batch, nothing written;
  // `udm update-info` says a batch is pending.
  const auto diff = read_file(tmp.file("d"));
  const uint64_t sys_len = old_img.size();
  std::vector<uint8_t> disk0 = old_img;
  disk0.insert(disk0.end(), diff.begin(), diff.end());
  bool found = false;
  for (int64_t n = 1; n < 400 && !found; n++) {
    Rig g = make_rig(disk0, sys_len);
    g.gate->left = n;
    {
      auto t = make_update(g.r, new_img.size());
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      (*t)->resume();
      for (int i = 0; i < 20000 && !g.gate->hit && copied(**t) < st->ops; i++)
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      (*t)->presuspend();
    }
    g.disk->power_cut();
    auto img = g.disk->durable_image();
    auto idx = update::load_v1_bytes(std::span<const uint8_t>(img).subspan(sys_len));
    ASSERT_TRUE(idx.ok()) << idx.status().to_string();
    if (idx->h.ckpt_state != 2) continue;
    found = true;
    auto scratch = update::V1ScratchPlanner(*idx).scratch(idx->h.ckpt_done, idx->h.ckpt_batch_end,
                                                           idx->h.ckpt_batch_end - idx->h.ckpt_done);
    ASSERT_EQ(scratch.size(), idx->h.ckpt_batch_end - idx->h.ckpt_done);
    img[scratch.back() * bs + 17] ^= 0x40;
    const std::vector<uint8_t> before = img;
    Rig h = make_rig(img, sys_len);
    auto t = make_update(h.r, new_img.size());
    ASSERT_FALSE(t.ok()) << "a logged batch that fails its checksum was finished";
    EXPECT_NE(t.status().message().find("does not match its checksum"), std::string::npos) << t.status().to_string();
    EXPECT_TRUE(h.disk->current_image() == before) << "something was written";
    write_file(tmp.file("pending"), std::vector<uint8_t>(img.begin() + static_cast<ptrdiff_t>(sys_len), img.end()));
    auto info = run({udm_bin(), "update-info", tmp.file("pending")});
    EXPECT_TRUE(info.ok()) << info.describe();
    EXPECT_NE(info.out.find("a logged batch up to operation " + std::to_string(idx->h.ckpt_batch_end)),
              std::string::npos)
        << info.out;
  }
  EXPECT_TRUE(found) << "no cut left a durable logged batch";
}

namespace {
DiffV1Stats make_v1(TempDir& tmp, const std::vector<uint8_t>& o, const std::vector<uint8_t>& n) {
  write_file(tmp.file("o"), o);
  write_file(tmp.file("n"), n);
  DiffV1Options opt;
  opt.progress = false;
  opt.level = 3;
  opt.chunk_blocks = 8;
  auto st = make_diff_v1(tmp.file("o"), tmp.file("n"), tmp.file("d"), opt);
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  return st.ok() ? *st : DiffV1Stats{};
}
}  // namespace

// In-place edits of the last blocks and nothing else: every operation reads
// its own block and none finds a scratch block (each later one reads its
// own), so the diff carries the stash and the copy-back stashes each block
// before it overwrites it. The same sweep.
TEST(UpdateSweep, V1StashPowerCutAfterEveryWrite) {
  TempDir tmp;
  const uint32_t bs = 4096;
  auto old_img = random_bytes(64 * bs, 31);
  auto new_img = old_img;
  for (uint64_t b = 56; b < 64; b++)
    for (size_t k = 0; k < 24; k++) new_img[b * bs + 64 + 151 * k] ^= static_cast<uint8_t>(1 + b + k);
  auto st = make_v1(tmp, old_img, new_img);
  ASSERT_EQ(st.ops, 8u);
  ASSERT_EQ(st.stash_ops, 8u);
  ASSERT_EQ(st.stash_blocks, 1u);
  auto r = sweep(old_img, new_img, tmp.file("d"), st);
  EXPECT_GT(r.resumed_from_record, 0u);
}

// More operations than blocks (every block changes, cycles broken by SAVE):
// the diff loads and survives the sweep; no parked block ever shows.
TEST(UpdateSweep, V1SaveHeavyPowerCutAfterEveryWrite) {
  TempDir tmp;
  auto [o, n] = make_save_heavy_pair(64, 4096, 3);
  auto st = make_v1(tmp, o, n);
  ASSERT_EQ(st.changed_blocks, 64u);
  ASSERT_GT(st.save_ops, 0u);
  ASSERT_GT(st.ops, st.blocks) << "the pair should need more operations than blocks";
  sweep(o, n, tmp.file("d"), st);
}

// 90-100 % of the blocks change: shuffled runs, a long rotation cycle,
// swaps, edits, shifts, repeated content. Every write a cut point.
TEST(UpdateSweep, V1ChurnPowerCutAfterEveryWrite) {
  for (uint64_t seed : {3u, 4u}) {  // seed 3: the whole image rotated; 4: shuffled runs
    SCOPED_TRACE("seed " + std::to_string(seed));
    TempDir tmp;
    auto p = make_churn_pair(96, 96, 4096, seed);
    ASSERT_GE(p.changed * 10, 96u * 9);
    auto st = make_v1(tmp, p.old_img, p.new_img);
    std::cerr << "churn seed " << seed << ": " << p.changed << "/96 changed, ops " << st.ops << " (COPY " << st.copy
              << " SAVE " << st.save_ops << " XOR " << st.xor_ops << " DELTA " << st.delta << " REPLACE " << st.replace
              << " ZERO " << st.zero << ")\n";
    sweep(p.old_img, p.new_img, tmp.file("d"), st);
    if (HasFatalFailure()) return;
  }
}

// Images of different sizes: the update device is the new image's size; the
// system device (larger than both, random bytes past the old image) never
// shows its bytes past the old image's end and is never written past the
// new image's end.
TEST(UpdateSweep, V1NewLargerPowerCutAfterEveryWrite) {
  TempDir tmp;
  auto p = make_churn_pair(72, 100, 4096, 5);
  auto st = make_v1(tmp, p.old_img, p.new_img);
  ASSERT_EQ(st.blocks, 100u);
  ASSERT_EQ(st.old_blocks, 72u);
  SweepOpts opt;
  opt.sys_extra_blocks = 6;
  sweep(p.old_img, p.new_img, tmp.file("d"), st, opt);
}

TEST(UpdateSweep, V1NewSmallerPowerCutAfterEveryWrite) {
  TempDir tmp;
  auto p = make_churn_pair(100, 72, 4096, 7);
  auto st = make_v1(tmp, p.old_img, p.new_img);
  ASSERT_EQ(st.blocks, 72u);
  ASSERT_EQ(st.old_blocks, 100u);
  SweepOpts opt;
  opt.sys_extra_blocks = 6;
  sweep(p.old_img, p.new_img, tmp.file("d"), st, opt);
}

// REPLACE chunks compressed against old reference blocks (flag CHUNK_REFS):
// the references must hold their old content until the chunk's last block
// is applied, across every cut; collages, shifted runs and compressed
// content next to moves, cycles, edits and zero blocks.
TEST(UpdateSweep, V1ChunkRefsPowerCutAfterEveryWrite) {
  for (uint64_t seed : {1u, 2u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    TempDir tmp;
    auto [o, n] = make_v1_ref_pair(160, 4096, seed);
    auto st = make_v1(tmp, o, n);
    ASSERT_GT(st.chunk_ref_blocks, 0u);
    ASSERT_GT(st.chunk_new_ref_blocks, 0u);  // references to moved blocks (flag CHUNK_NEW_REFS) too
    ASSERT_GT(st.replace, st.chunks);
    std::cerr << "chunk-refs seed " << seed << ": REPLACE " << st.replace << " in " << st.chunks << " chunks with "
              << st.chunk_ref_blocks << " reference blocks (" << st.chunk_new_ref_blocks << " moved), COPY " << st.copy << " SAVE " << st.save_ops << " XOR "
              << st.xor_ops << " DELTA " << st.delta << "\n";
    sweep(o, n, tmp.file("d"), st);
    if (HasFatalFailure()) return;
  }
}
