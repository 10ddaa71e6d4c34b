// Power-cut sweep over the merge: base and COW on one FaultDisk; the merge
// runs until write N cuts the power (unflushed writes dropped); the stack is
// rebuilt on what the disks kept; the view must be the new image, and the
// merge, restarted, must finish with the base equal to it. Every N.
// The same through the android-cow-merge target with the background-job
// controls in the middle (throttle=auto backing off for reads, a pause
// half-way): issue 16.
#include <gtest/gtest.h>

#include "android_cow/acow_image.h"
#include "android_cow/acow_test_util.h"
#include "android_cow/acow_writer.h"
#include "common/job_wait.h"
#include "io/fault_device.h"
#include "io/memory_device.h"

#include <chrono>
#include <thread>

using namespace udm;
using namespace udm::acow;
using namespace udm::acow::test;

namespace {

// Under the sanitizers (5-10x slower: each cut re-reads and compares the whole
// image) the sweep takes about 64 evenly spread cuts plus the first and last
// few; the release build cuts after every write.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

struct Sweep {
  std::vector<uint8_t> base, cow, want;
  std::optional<uint64_t> label;
  uint32_t batch = 1024;
};

// Runs the merge over fault devices with a cut after `n` writes (or none).
// Returns the number of write operations the whole merge took when it finished.
uint64_t run_cut(const Sweep& s, uint64_t n, bool cut, std::vector<uint8_t>& base_out, std::vector<uint8_t>& cow_out) {
  auto disk = std::make_shared<FaultDisk>();
  auto base = std::make_shared<FaultDevice>(disk, s.base);
  auto cow = std::make_shared<FaultDevice>(disk, s.cow);
  auto img = CowImage::open(cow, base->size(), base->size(), s.label, true);
  EXPECT_TRUE(img.ok()) << img.status().to_string();
  if (!img.ok()) return 0;
  if (cut) disk->cut_after_writes(n);
  while ((*img)->merged() < (*img)->total()) {
    auto r = (*img)->merge_step(*base, *cow, s.batch);
    if (!r.ok()) break;
  }
  base_out = base->durable_image();
  cow_out = cow->durable_image();
  return disk->write_ops();
}

void sweep(const Sweep& s, const std::string& what) {
  std::vector<uint8_t> b, c;
  const uint64_t writes = run_cut(s, 0, false, b, c);
  ASSERT_TRUE(b == s.want) << what << ": the uncut merge is wrong";
  ASSERT_GT(writes, 2u);
  const uint64_t stride = kSanitized && writes > 128 ? writes / 64 : 1;
  for (uint64_t n = 0; n <= writes; n = (n < 8 || n + 8 >= writes) ? n + 1 : std::min(n + stride, writes - 8)) {
    run_cut(s, n, true, b, c);
    // Rebuilt on what survived: the view is the new image.
    auto base = std::make_shared<MemoryDevice>(b);
    auto cow = std::make_shared<MemoryDevice>(c);
    auto img = CowImage::open(cow, base->size(), base->size(), s.label, true);
    ASSERT_TRUE(img.ok()) << what << " cut after " << n << ": " << img.status().to_string();
    std::vector<uint8_t> view(base->size());
    ASSERT_TRUE((*img)->read(*base, 0, view).ok());
    ASSERT_TRUE(view == s.want) << what << ": the view after a cut at write " << n << " (merged "
                                << (*img)->merged() << ") is not the new image";
    // The restarted merge finishes with the base equal to it.
    while ((*img)->merged() < (*img)->total()) ASSERT_TRUE((*img)->merge_step(*base, *cow, s.batch).ok());
    ASSERT_TRUE(base->contents() == s.want) << what << ": merge restarted after a cut at write " << n;
  }
}

TEST(AndroidCowSweep, SharedVectorsEveryCut) {
  if (!have_vectors()) GTEST_SKIP() << "no " << vec_dir();
  // A sequence-data vector per version, in small batches so that there are
  // many records to cut between.
#ifdef ACOW_SWEEP_LONG
  for (const char* name : {"v3-zstd-64k"}) {
#else
  for (const char* name : {"v2-zstd-seq"}) {
#endif
    Sweep s;
    s.base = base_image();
    s.cow = udm::test::read_file(vec_dir() + "/" + name + ".cow");
    std::vector<uint8_t> all(s.base.size());
    {
      auto base = std::make_shared<MemoryDevice>(s.base, true);
      auto img = CowImage::open(std::make_shared<MemoryDevice>(s.cow, true), all.size(), all.size(), std::nullopt, false);
      ASSERT_TRUE(img.ok());
      ASSERT_TRUE((*img)->read(*base, 0, all).ok());
    }
    s.want = all;
    s.batch = 64;
    sweep(s, name);
  }
}

#ifndef ACOW_SWEEP_LONG
TEST(AndroidCowSweep, WriterOutputWithSelfXorEveryCut) {
  // Blocks similar to their old selves become XOR ops reading their own
  // block: the merge stashes their old bytes in the scratch area first.
  const uint32_t bs = 4096;
  const uint64_t blocks = 64;
  auto old_img = udm::test::random_bytes(blocks * bs, 5);
  auto nw = old_img;
  for (uint64_t b = 0; b < 8; b++) std::memcpy(nw.data() + (b + 20) * bs, old_img.data() + (b + 19) * bs, bs);  // shift
  for (uint64_t b = 40; b < 48; b++) nw[b * bs + 17] ^= 0x33;                                                     // similar
  std::memcpy(nw.data() + 50 * bs, old_img.data() + 51 * bs, bs);                                                 // swap
  std::memcpy(nw.data() + 51 * bs, old_img.data() + 50 * bs, bs);
  for (int v : {2, 3}) {
    WriterOptions o;
    o.version = v;
    WriterStats st;
    auto cow = make_cow(old_img, nw, o, &st);
    ASSERT_TRUE(cow.ok()) << cow.status().to_string();
    ASSERT_GE(st.self_xor, 8u);
    {
      // One stash record holds a batch's self-reading ops (each used to be
      // merged alone): the eight similar blocks are in the writer's first
      // wave with the shift's last COPY, and merge as one batch.
      auto base = std::make_shared<MemoryDevice>(old_img);
      auto cd = std::make_shared<MemoryDevice>(*cow);
      auto img = CowImage::open(cd, base->size(), base->size(), std::nullopt, true);
      ASSERT_TRUE(img.ok());
      uint64_t steps = 0, first = 0;
      while ((*img)->merged() < (*img)->total()) {
        ASSERT_TRUE((*img)->merge_step(*base, *cd).ok());
        steps++;
        if (steps == 1) first = (*img)->merged();
      }
      EXPECT_GE(first, st.self_xor + 1) << "the first batch did not take every self-reading op of its wave";
      EXPECT_GT(steps, 1u);
      EXPECT_TRUE(base->contents() == nw);
    }
    Sweep s{old_img, *cow, nw, std::nullopt, 4};
    sweep(s, "writer v" + std::to_string(v));
  }
}
#endif

#ifndef ACOW_SWEEP_LONG
// The merge target (background thread) with `throttle=auto` in its table:
// whole-image reads racing the first quarter of the merge make it back off
// to a trickle in small batches; half-way it is paused (a read while paused
// must show the new image, nothing may merge), then resumed. A cut after
// every write N (mode 0: unflushed writes dropped; mode 1: each survives
// with p = 0.5); rebuilt with the same table on what the disks kept, the
// view is the new image and the merge finishes with the base equal to it.
TEST(AndroidCowSweep, MergeTargetThrottledAndPausedMidwayEveryCut) {
  const uint32_t bs = 4096;
  const uint64_t blocks = 64;
  auto old_img = udm::test::random_bytes(blocks * bs, 7);
  auto nw = old_img;
  auto novel = udm::test::random_bytes(8 * bs, 8);
  for (uint64_t b = 20; b < 32; b++) std::memcpy(nw.data() + b * bs, old_img.data() + (b - 1) * bs, bs);  // shift
  for (uint64_t b = 40; b < 48; b++) nw[b * bs + 17] ^= 0x33;                                                // similar
  std::memcpy(nw.data() + 2 * bs, novel.data(), 8 * bs);                                                      // novel
  std::memset(nw.data() + 56 * bs, 0, 4 * bs);                                                                // zeros
  WriterOptions o;
  o.version = 3;
  WriterStats wst;
  auto cow = make_cow(old_img, nw, o, &wst);
  ASSERT_TRUE(cow.ok()) << cow.status().to_string();
  ASSERT_GT(wst.self_xor, 0u);
  const std::vector<std::string> table_opts = {"1", "throttle=auto"};
  auto make = [&](MapResolver& r) {
    TargetParams p;
    p.type = "android-cow-merge";
    p.length = old_img.size();
    p.args = {"base", "cow"};
    p.args.insert(p.args.end(), table_opts.begin(), table_opts.end());
    p.resolver = &r;
    return make_merge_target(p);
  };
  auto job = [](const Target& t) { return t.jobs().at(0); };
  uint64_t pauses = 0, throttled_seen = 0, reads = 0, cuts = 0, resumed = 0;
  // One run; returns the writes it made. Leaves what the disks kept.
  auto run = [&](std::optional<uint64_t> cut, int mode, std::vector<uint8_t>& b_out, std::vector<uint8_t>& c_out) -> uint64_t {
    auto disk = std::make_shared<FaultDisk>();
    auto base = std::make_shared<FaultDevice>(disk, old_img);
    auto cd = std::make_shared<FaultDevice>(disk, *cow);
    if (mode == 1) disk->set_unflushed_survival(0.5, cut.value_or(0));
    MapResolver r;
    r.devs["base"] = base;
    r.devs["cow"] = cd;
    auto t = make(r);
    EXPECT_TRUE(t.ok()) << t.status().to_string();
    if (!t.ok()) return 0;
    Target& tg = **t;
    const uint64_t total = job(tg).total;
    if (cut) disk->cut_after_writes(*cut);
    tg.resume();
    bool paused_once = false;
    std::vector<uint8_t> view(nw.size());
    for (int i = 0; i < 200000; i++) {
      JobInfo j = job(tg);
      if (j.state == "done" || j.state == "failed") break;
      if (j.state == "throttled") throttled_seen++;
      if (!paused_once && j.done >= total / 2) {
        paused_once = true;
        EXPECT_TRUE(tg.message({"pause"}).ok());
        // A batch under way when the pause came may still land (slowly under
        // the sanitizers); then the worker parks (or fails at the cut, or
        // ends) and nothing moves.
        const auto stopped = wait_job_stopped([&] { return job(tg); });
        EXPECT_TRUE(stopped) << "the merge did not stop within 10 s of the pause";
        const bool parked = stopped && stopped->parked;
        const uint64_t at = job(tg).done;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        EXPECT_EQ(job(tg).done, at) << "merged while paused";
        if (!disk->dead()) {  // (the batch under way may have hit the cut)
          EXPECT_TRUE(tg.read(0, view).ok());
          EXPECT_TRUE(view == nw) << "the view while paused is not the new image";
        }
        EXPECT_TRUE(tg.message({"resume"}).ok());
        if (parked) pauses++;  // held by the pause (not stopped by the cut, not at its end)
      } else if (j.done < total / 4 && !disk->dead()) {
        // Foreground reads: throttle=auto trickles.
        if (tg.read(0, view).ok()) {
          EXPECT_TRUE(view == nw) << "the view during the merge is not the new image";
          reads++;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
    tg.presuspend();
    if (cut && disk->dead()) cuts++;
    b_out = base->durable_image();
    c_out = cd->durable_image();
    return disk->write_ops();
  };
  std::vector<uint8_t> b, c;
  const uint64_t writes = run(std::nullopt, 0, b, c);
  ASSERT_TRUE(b == nw) << "the uncut merge is wrong";
  ASSERT_GT(writes, 2u);
  // Batches follow timing (throttled or not), so a run may take a few more
  // writes than the uncut one: cut a little past it too.
  const uint64_t last = writes + 8;
  const uint64_t stride = kSanitized ? std::max<uint64_t>(1, last / 24) : 1;
  for (int mode = 0; mode < 2; mode++) {
    for (uint64_t n = 0; n <= last; n += stride) {
      SCOPED_TRACE("mode " + std::to_string(mode) + ", cut after write " + std::to_string(n));
      run(n, mode, b, c);
      if (HasFailure()) return;
      // Rebuilt with the same table on what survived.
      MapResolver r;
      auto base = std::make_shared<MemoryDevice>(b);
      r.devs["base"] = base;
      r.devs["cow"] = std::make_shared<MemoryDevice>(c);
      auto t = make(r);
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      if (job(**t).done > 0) resumed++;
      std::vector<uint8_t> view(nw.size());
      ASSERT_TRUE((*t)->read(0, view).ok());
      ASSERT_TRUE(view == nw) << "the view after the cut (merged " << job(**t).done << ") is not the new image";
      // The table's policy holds after the restart; finish at full speed
      // (the read just made counts as foreground I/O for a tenth of a second).
      ASSERT_EQ(job(**t).throttle, "auto");
      ASSERT_TRUE((*t)->message({"throttle", "off"}).ok());
      (*t)->resume();
      for (int i = 0; i < 30000 && job(**t).state != "done"; i++) std::this_thread::sleep_for(std::chrono::microseconds(100));
      ASSERT_EQ(job(**t).state, "done");
      (*t)->presuspend();
      ASSERT_TRUE(base->contents() == nw) << "the merge restarted after the cut did not finish with the new image";
    }
  }
  std::cerr << "throttled+paused android-cow-merge sweep: " << writes << " writes uncut, " << cuts << " runs cut, "
            << resumed << " resumed from a record, " << pauses << " paused mid-way, " << reads << " racing reads, "
            << throttled_seen << " throttled observations\n";
  EXPECT_GT(cuts, writes) << "fewer cuts than write points";
  EXPECT_GT(resumed, 0u);
  EXPECT_GT(pauses, 0u);
  EXPECT_GT(reads, 0u);
  EXPECT_GT(throttled_seen, 0u) << "throttle=auto never held the merge back while reads raced it";
}
#endif

}  // namespace
