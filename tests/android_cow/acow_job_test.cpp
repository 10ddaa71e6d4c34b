// The android-cow-merge merge as a background job (device/background_job.h,
// issue 16): table options and messages (bad values refused naming the
// argument; the read-only view takes neither), a pause that holds across
// suspend/resume and a restart (progress in num_merge_ops), a rate throttle
// that bounds progress, a failing base that makes the job "failed", and the
// job's figures consistent with the dm-style status. The power-cut sweep with
// throttling and a pause in the middle is in acow_sweep_test.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "android_cow/acow_test_util.h"
#include "io/fault_device.h"

using namespace udm;
using namespace udm::acow;
using namespace udm::acow::test;

namespace {

constexpr uint32_t kBs = 4096;

struct Pair {
  std::vector<uint8_t> old_img, new_img, cow;
  uint64_t ops = 0;  // data ops = merge order length
};

// `blocks` blocks; new: a shifted run (COPY in a needed order), changed
// bytes in place (XOR), novel blocks (REPLACE), zeros. v3, 4 KiB units:
// every op writes one block.
Pair build(uint64_t blocks, uint64_t seed) {
  Pair p;
  p.old_img = udm::test::random_bytes(blocks * kBs, seed);
  p.new_img = p.old_img;
  auto novel = udm::test::random_bytes(blocks * kBs, seed + 100);
  const uint64_t q = blocks / 4;
  for (uint64_t b = 1; b < q; b++) std::memcpy(&p.new_img[b * kBs], &p.old_img[(b - 1) * kBs], kBs);  // shift
  for (uint64_t b = q; b < 2 * q; b++) p.new_img[b * kBs + 99] ^= 0x5a;                                 // similar
  std::memcpy(&p.new_img[2 * q * kBs], novel.data(), q * kBs);                                          // novel
  std::memset(&p.new_img[3 * q * kBs], 0, 8 * kBs);                                                     // zeros
  WriterOptions o;
  o.version = 3;
  o.unit = kBs;
  WriterStats st;
  auto cow = make_cow(p.old_img, p.new_img, o, &st);
  EXPECT_TRUE(cow.ok()) << cow.status().to_string();
  if (cow.ok()) p.cow = *cow;
  p.ops = st.copy + st.xor_ops + st.replace_ops + st.zero;
  EXPECT_GT(st.copy, 0u);
  EXPECT_GT(st.xor_ops, 0u);
  return p;
}

Result<TargetPtr> make_merge(MapResolver& r, uint64_t length, std::vector<std::string> opts, bool merge = true) {
  TargetParams p;
  p.type = merge ? "android-cow-merge" : "android-cow";
  p.length = length;
  p.args = {"base", "cow"};
  if (!opts.empty()) {
    p.args.push_back(std::to_string(opts.size()));
    p.args.insert(p.args.end(), opts.begin(), opts.end());
  }
  p.resolver = &r;
  return merge ? make_merge_target(p) : make_view_target(p);
}

uint64_t merged(const Target& t) { return std::stoull(t.status()); }

JobInfo job(const Target& t) {
  auto j = t.jobs();
  EXPECT_EQ(j.size(), 1u);
  return j.empty() ? JobInfo{} : j[0];
}

std::string wait_merged(Target& t, int seconds = 60) {
  std::string s;
  for (int i = 0; i < seconds * 100; i++) {
    s = t.status();
    auto sp = s.find(' ');
    if (sp != std::string::npos && s.substr(0, sp) == s.substr(sp + 1)) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return s;
}

}  // namespace

TEST(AndroidCowMergeJob, TableOptionsAndMessages) {
  Pair p = build(64, 3);
  MapResolver r;
  r.devs["base"] = std::make_shared<MemoryDevice>(p.old_img);
  r.devs["cow"] = std::make_shared<MemoryDevice>(p.cow);
  auto err = [&](std::vector<std::string> opts, bool merge = true) {
    auto t = make_merge(r, p.old_img.size(), opts, merge);
    EXPECT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), EINVAL);
    return t.status().message();
  };
  EXPECT_EQ(err({"throttle=fast"}),
            "android-cow-merge: throttle: 'fast' is not a rate: give MiB/s (a positive number), auto or off");
  EXPECT_EQ(err({"throttle=0"}), "android-cow-merge: throttle: 0 MiB/s is out of range (more than 0, at most 1000000)");
  EXPECT_EQ(err({"throttle=-1"}),
            "android-cow-merge: throttle: '-1' is not a rate: give MiB/s (a positive number), auto or off");
  EXPECT_NE(err({"paused", "paused"}).find("android-cow-merge: paused: given twice"), std::string::npos);
  EXPECT_NE(err({"pause"}).find("unknown optional argument 'pause' (known: label=<value>, paused, throttle=<value>)"),
            std::string::npos)
      << err({"pause"});
  // The view runs no job: it refuses the job's options and messages.
  EXPECT_NE(err({"paused"}, false).find("android-cow: unknown optional argument 'paused' (known: label=<value>)"),
            std::string::npos)
      << err({"paused"}, false);
  auto view = make_merge(r, p.old_img.size(), {}, false);
  ASSERT_TRUE(view.ok()) << view.status().to_string();
  EXPECT_TRUE((*view)->jobs().empty());
  EXPECT_EQ((*view)->message({"pause"}).status().code(), EINVAL);

  auto t = make_merge(r, p.old_img.size(), {"throttle=auto", "paused"});
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  JobInfo j = job(**t);
  EXPECT_EQ(j.kind, "android-cow-merge");
  EXPECT_EQ(j.unit, "operations");
  EXPECT_EQ(j.throttle, "auto");
  EXPECT_TRUE(j.paused);
  EXPECT_EQ(j.state, "paused");
  EXPECT_EQ(j.done, 0u);
  EXPECT_EQ(j.total, p.ops);
  EXPECT_EQ(j.total_bytes, p.ops * kBs);
  EXPECT_FALSE(j.eta_seconds);
  EXPECT_EQ((*t)->status(), fmt::format("0 {}", p.ops));
  // Messages: the same words as every job; refusals name the argument.
  Target& tg = **t;
  EXPECT_EQ(tg.message({"throttle", "1.5x"}).status().message(),
            "android-cow-merge: throttle: '1.5x' is not a rate: give MiB/s (a positive number), auto or off");
  EXPECT_EQ(tg.message({"throttle"}).status().message(), "android-cow-merge: throttle: give <MiB/s>, auto or off");
  EXPECT_EQ(tg.message({"resume", "x"}).status().message(), "android-cow-merge: resume: takes no arguments");
  EXPECT_EQ(tg.message({"pause", "now"}).status().message(), "android-cow-merge: pause: takes no arguments");
  EXPECT_EQ(tg.message({"frobnicate"}).status().code(), EINVAL);
  EXPECT_EQ(job(tg).throttle, "auto") << "a refused message changed the policy";
  ASSERT_TRUE(tg.message({"throttle", "8"}).ok());
  EXPECT_EQ(job(tg).throttle, "8");
  ASSERT_TRUE(tg.message({"throttle", "0.5"}).ok());
  EXPECT_EQ(job(tg).throttle, "0.5");
  ASSERT_TRUE(tg.message({"throttle", "off"}).ok());
  EXPECT_EQ(job(tg).throttle, "off");
  ASSERT_TRUE(tg.message({"resume"}).ok());
  EXPECT_FALSE(job(tg).paused);
  ASSERT_TRUE(tg.message({"pause"}).ok());
  EXPECT_TRUE(job(tg).paused);
  // Options together with label=N.
  auto l = make_merge(r, p.old_img.size(), {"throttle=2.5", "label=0"});
  EXPECT_FALSE(l.ok()) << "this COW has no label 0";
  auto ok = make_merge(r, p.old_img.size(), {"throttle=2.5"});
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(job(**ok).throttle, "2.5");
  EXPECT_FALSE(job(**ok).paused);
}

TEST(AndroidCowMergeJob, PauseHoldsAcrossSuspendResumeAndRestart) {
  Pair p = build(512, 5);
  MapResolver r;
  auto base = std::make_shared<MemoryDevice>(p.old_img);
  auto cow = std::make_shared<MemoryDevice>(p.cow);
  r.devs["base"] = base;
  r.devs["cow"] = cow;
  uint64_t mid = 0;
  {
    auto t = make_merge(r, p.old_img.size(), {"paused"});
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    Target& tg = **t;
    tg.resume();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(merged(tg), 0u) << "paused in the table, yet it merged";
    EXPECT_TRUE(base->contents() == p.old_img);
    tg.presuspend();
    tg.resume();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(merged(tg), 0u) << "suspend/resume lost the pause";
    EXPECT_EQ(job(tg).state, "paused");
    // Run a little at a trickle, then pause.
    ASSERT_TRUE(tg.message({"throttle", "0.2"}).ok());
    ASSERT_TRUE(tg.message({"resume"}).ok());
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 6000 && merged(tg) < 8; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    // 8 ops of 4 KiB at 0.2 MiB/s: well under a second (a batch sized before
    // the pause, at full speed, must not be charged to the new throttle).
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
    ASSERT_TRUE(tg.message({"pause"}).ok());
    // The batch under way finishes, the progress is recorded, then the
    // worker parks: wait for that rather than a fixed time.
    for (int i = 0; i < 3000 && !job(tg).parked; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(job(tg).parked) << "the worker did not park within 30 s of the pause";
    mid = merged(tg);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(merged(tg), mid) << "merged while paused";
    EXPECT_GE(mid, 8u);
    EXPECT_LT(mid, p.ops);
    JobInfo j = job(tg);
    EXPECT_EQ(j.state, "paused");
    EXPECT_EQ(j.done, mid);
    EXPECT_EQ(j.done_bytes, mid * kBs);
    EXPECT_EQ(tg.status(), std::to_string(j.done) + " " + std::to_string(j.total));
    std::vector<uint8_t> view(p.new_img.size());
    ASSERT_TRUE(tg.read(0, view).ok());
    EXPECT_TRUE(view == p.new_img) << "a paused merge must still show the new image";
    // The progress is in the COW header (num_merge_ops), not only in memory.
    MemoryDevice cd(cow->contents(), true);
    auto f = parse_cow(cd);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->h.num_merge_ops, mid);
  }
  {
    // Restart with the table's pause: starts from the record, stays put.
    auto t = make_merge(r, p.old_img.size(), {"paused"});
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    Target& tg = **t;
    EXPECT_EQ(merged(tg), mid);
    EXPECT_EQ(job(tg).done, mid);
    tg.resume();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(merged(tg), mid);
    std::vector<uint8_t> view(p.new_img.size());
    ASSERT_TRUE(tg.read(0, view).ok());
    EXPECT_TRUE(view == p.new_img);
    ASSERT_TRUE(tg.message({"resume"}).ok());
    EXPECT_EQ(wait_merged(tg), std::to_string(p.ops) + " " + std::to_string(p.ops));
    for (int i = 0; i < 100 && job(tg).state != "done"; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    JobInfo j = job(tg);
    EXPECT_EQ(j.state, "done");
    EXPECT_EQ(j.done, j.total);
    EXPECT_EQ(j.done_bytes, j.total_bytes);
    ASSERT_TRUE(j.eta_seconds);
    EXPECT_EQ(*j.eta_seconds, 0);
    tg.presuspend();
  }
  EXPECT_TRUE(base->contents() == p.new_img);
}

TEST(AndroidCowMergeJob, RateThrottleBoundsProgress) {
  Pair p = build(512, 9);
  MapResolver r;
  auto base = std::make_shared<MemoryDevice>(p.old_img);
  r.devs["base"] = base;
  r.devs["cow"] = std::make_shared<MemoryDevice>(p.cow);
  // 0.25 MiB/s: 64 blocks a second, with a bucket of a tenth of a second.
  auto t = make_merge(r, p.old_img.size(), {"throttle=0.25"});
  ASSERT_TRUE(t.ok());
  Target& tg = **t;
  const auto t0 = std::chrono::steady_clock::now();
  tg.resume();
  std::string state;
  for (int i = 0; i < 3000 && state != "throttled"; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    state = job(tg).state;
  }
  EXPECT_EQ(state, "throttled");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const uint64_t done = merged(tg);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // A ceiling whatever the machine's speed: the bucket plus rate x time plus
  // one batch (a tenth of a second's worth, at least one block).
  const double ceiling = (0.25 * (1 << 20) * (s + 0.2)) / kBs + 1;
  EXPECT_LE(static_cast<double>(done), ceiling) << "throttled to 0.25 MiB/s, merged " << done << " ops in " << s << " s";
  EXPECT_GT(done, 0u);
  EXPECT_LT(done, p.ops);
  JobInfo j = job(tg);
  EXPECT_LE(j.bytes_per_second, 0.25 * (1 << 20) * 2) << "moving average far above the throttle";
  ASSERT_TRUE(tg.message({"throttle", "off"}).ok());
  EXPECT_EQ(wait_merged(tg), std::to_string(p.ops) + " " + std::to_string(p.ops));
  tg.presuspend();
  EXPECT_TRUE(base->contents() == p.new_img);
}

TEST(AndroidCowMergeJob, FailingBaseMakesTheJobFailedAndAReloadRetries) {
  Pair p = build(128, 11);
  MapResolver r;
  auto base = std::make_shared<FaultDevice>(p.old_img);
  auto cow = std::make_shared<MemoryDevice>(p.cow);
  r.devs["base"] = base;
  r.devs["cow"] = cow;
  base->fail_writes(0, p.old_img.size(), EIO);
  {
    auto t = make_merge(r, p.old_img.size(), {});
    ASSERT_TRUE(t.ok());
    Target& tg = **t;
    tg.resume();
    JobInfo j;
    for (int i = 0; i < 3000 && j.state != "failed"; i++) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      j = job(tg);
    }
    EXPECT_EQ(j.state, "failed");
    EXPECT_FALSE(j.error.empty());
    EXPECT_FALSE(j.eta_seconds);
    EXPECT_EQ(tg.status(), fmt::format("0 {} failed", p.ops));
    std::vector<uint8_t> view(p.new_img.size());
    ASSERT_TRUE(tg.read(0, view).ok());
    EXPECT_TRUE(view == p.new_img);
    tg.presuspend();
  }
  base->clear_failures();
  auto t = make_merge(r, p.old_img.size(), {});
  ASSERT_TRUE(t.ok());
  (*t)->resume();
  EXPECT_EQ(wait_merged(**t), fmt::format("{0} {0}", p.ops));
  (*t)->presuspend();
  EXPECT_TRUE(base->current_image() == p.new_img);
}
