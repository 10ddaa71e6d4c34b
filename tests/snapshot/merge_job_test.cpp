// snapshot-merge as a background job (device/background_job.h): feature
// arguments and messages (bad values refused naming the argument), a pause
// from the table holding across suspend/resume, a rate throttle bounding
// progress, the figures consistent with the status.
#include <gtest/gtest.h>

#include <thread>

#include "common/sys_util.h"
#include "io/memory_device.h"
#include "snapshot/snapshot.h"
#include "snapshot_test_util.h"

using namespace udm;
using namespace udm::snapshot;
using namespace udm::snapshot::test;
using namespace udm::test;

namespace {

constexpr uint64_t kOrigin = 4 << 20;
constexpr uint64_t kChunks = 300;  // chunks written after the snapshot (4 KiB each)

struct Rig {
  MapResolver r;
  std::shared_ptr<MemoryDevice> origin;
  std::vector<uint8_t> before;  // the snapshot's view: what the merge restores
};

// An origin, a persistent snapshot of it in "cow", then kChunks chunks of
// the origin overwritten (each saved into the COW first).
void make_rig(Rig& g) {
  g.origin = std::make_shared<MemoryDevice>(random_bytes(kOrigin, 1));
  g.before = g.origin->contents();
  g.r.devs["origin"] = g.origin;
  g.r.devs["cow"] = std::make_shared<MemoryDevice>(4 << 20);
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &g.r);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &g.r);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  auto data = random_bytes(4096, 2);
  for (uint64_t c = 0; c < kChunks; c++) ASSERT_TRUE((*o)->write(c * 3 % 1024 * 4096, data).ok());
}

JobInfo job(const Target& t) {
  auto j = t.jobs();
  EXPECT_EQ(j.size(), 1u);
  return j.empty() ? JobInfo{} : j[0];
}

}  // namespace

TEST(MergeJob, FeatureArgumentsAndMessages) {
  Rig g;
  make_rig(g);
  ASSERT_FALSE(HasFatalFailure());
  auto err = [&](std::vector<std::string> args) { return make("snapshot-merge", args, kOrigin, &g.r).status().message(); };
  EXPECT_EQ(err({"origin", "cow", "P", "8", "1", "throttle=fast"}),
            "snapshot-merge: throttle: 'fast' is not a rate: give MiB/s (a positive number), auto or off");
  EXPECT_NE(err({"origin", "cow", "P", "8", "2", "paused", "paused"}).find("snapshot-merge: paused: given twice"),
            std::string::npos);
  // Only snapshot-merge has a job: a snapshot refuses the options.
  auto s = make("snapshot", {"origin", "cow", "P", "8", "1", "paused"}, kOrigin, &g.r);
  EXPECT_NE(s.status().message().find("unknown optional argument 'paused'"), std::string::npos) << s.status().to_string();
  auto m = make("snapshot-merge", {"origin", "cow", "P", "8", "2", "throttle=auto", "paused"}, kOrigin, &g.r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  JobInfo j = job(**m);
  EXPECT_EQ(j.kind, "snapshot-merge");
  EXPECT_EQ(j.unit, "chunks");
  EXPECT_EQ(j.throttle, "auto");
  EXPECT_TRUE(j.paused);
  EXPECT_EQ(j.state, "paused");
  EXPECT_EQ(j.total, kChunks);
  EXPECT_EQ(j.total_bytes, kChunks * 4096);
  EXPECT_EQ((*m)->message({"throttle", "-3"}).status().message(),
            "snapshot-merge: throttle: '-3' is not a rate: give MiB/s (a positive number), auto or off");
  EXPECT_EQ((*m)->message({"pause", "1"}).status().message(), "snapshot-merge: pause: takes no arguments");
  EXPECT_EQ((*m)->message({"state", "1"}).status().code(), EINVAL);
  ASSERT_TRUE((*m)->message({"throttle", "3"}).ok());
  EXPECT_EQ(job(**m).throttle, "3");
}

TEST(MergeJob, PausedInTableHoldsAcrossSuspendResumeThenCompletes) {
  Rig g;
  make_rig(g);
  ASSERT_FALSE(HasFatalFailure());
  auto m = make("snapshot-merge", {"origin", "cow", "P", "8", "1", "paused"}, kOrigin, &g.r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  auto* mt = static_cast<MergeTarget*>(m->get());
  const std::string st0 = (*m)->status();
  (*m)->resume();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(mt->remaining(), kChunks) << "paused in the table, yet it merged";
  (*m)->presuspend();
  (*m)->resume();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(mt->remaining(), kChunks) << "suspend/resume lost the pause";
  EXPECT_EQ((*m)->status(), st0);
  EXPECT_EQ(job(**m).state, "paused");
  // The view is the snapshot's while paused.
  std::vector<uint8_t> got(kOrigin);
  ASSERT_TRUE((*m)->read(0, got).ok());
  EXPECT_TRUE(got == g.before);
  // A slow rate, then resume: progress stays under the ceiling.
  ASSERT_TRUE((*m)->message({"throttle", "0.1"}).ok());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE((*m)->message({"resume"}).ok());
  std::string state;
  for (int i = 0; i < 3000 && state != "throttled"; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    state = job(**m).state;
  }
  EXPECT_EQ(state, "throttled");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  JobInfo j = job(**m);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LE(static_cast<double>(j.done_bytes), 0.1 * (1 << 20) * (s + 0.1) + 0.1 * (1 << 20) / 10)
      << "0.1 MiB/s, merged " << j.done_bytes << " bytes in " << s << " s";
  EXPECT_LT(j.done, kChunks);
  EXPECT_EQ(j.done, kChunks - mt->remaining());
  ASSERT_TRUE((*m)->message({"throttle", "off"}).ok());
  ASSERT_TRUE(mt->wait().ok());
  j = job(**m);
  EXPECT_EQ(j.state, "done");
  EXPECT_EQ(j.done, kChunks);
  EXPECT_EQ(j.done_bytes, kChunks * 4096);
  ASSERT_TRUE(j.eta_seconds);
  EXPECT_EQ(*j.eta_seconds, 0);
  EXPECT_EQ(mt->remaining(), 0u);
  EXPECT_TRUE(g.origin->contents() == g.before) << "the merge did not restore the snapshot's view";
}
