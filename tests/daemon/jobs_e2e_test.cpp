// Background jobs as a user drives them (issue 16): the update copy-back
// through `udm daemon` controlled by messages and table options, observed by
// `udm info --json` (consistent with `udm status`) and `udm wait` (exit 0
// done, 1 failed, 2 timeout); a pause set in the table survives
// suspend/resume and a restart of the daemon.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "common/sys_util.h"

using namespace udm::test;
using nlohmann::json;

namespace {

// "0 <len> update <done> <total>" -> {done, total}.
std::pair<uint64_t, uint64_t> status_counts(const std::string& line) {
  std::istringstream in(line);
  std::string start, len, type;
  uint64_t done = 0, total = 0;
  in >> start >> len >> type >> done >> total;
  return {done, total};
}

json job_of(const TestDaemon& d, const std::string& name) {
  auto r = d.udm({"info", name, "--json"});
  EXPECT_TRUE(r.ok()) << r.describe();
  auto j = json::parse(r.out);
  EXPECT_TRUE(j.contains("jobs")) << r.out;
  EXPECT_EQ(j["jobs"].size(), 1u) << r.out;
  return j["jobs"].empty() ? json::object() : j["jobs"][0];
}

// Every documented field, with the right JSON type, and consistent with itself.
void check_fields(const json& j) {
  for (const char* k : {"kind", "state", "unit", "throttle", "target"}) EXPECT_TRUE(j[k].is_string()) << k << ": " << j;
  for (const char* k : {"done", "total", "done_bytes", "total_bytes", "segment_start"})
    EXPECT_TRUE(j[k].is_number_unsigned()) << k << ": " << j;
  EXPECT_TRUE(j["bytes_per_second"].is_number()) << j;
  EXPECT_TRUE(j["eta_seconds"].is_number() || j["eta_seconds"].is_null()) << j;
  EXPECT_TRUE(j["paused"].is_boolean()) << j;
  EXPECT_TRUE(j["active_seconds"].is_number()) << j;
  EXPECT_GE(j["active_seconds"].get<double>(), 0) << j;
  EXPECT_LE(j["done"].get<uint64_t>(), j["total"].get<uint64_t>()) << j;
  EXPECT_LE(j["done_bytes"].get<uint64_t>(), j["total_bytes"].get<uint64_t>()) << j;
  // Units of one block each: bytes are units times the block size.
  if (j["total"].get<uint64_t>()) {
    EXPECT_EQ(j["total_bytes"].get<uint64_t>() % j["total"].get<uint64_t>(), 0u) << j;
  }
}

class JobsE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_tool("sh")) GTEST_SKIP();
    d_ = TestDaemon::start(/*fuse=*/false, /*nbd=*/false);
    ASSERT_TRUE(d_);
  }
  // An old/new pair of `blocks` 4 KiB blocks, most changed, and its diff.
  void make_pair(const std::string& format, uint64_t blocks) {
    auto old_img = random_bytes(blocks * 4096, 1);
    auto new_img = random_bytes(blocks * 4096, 2);
    std::copy(old_img.begin(), old_img.begin() + 4096 * 8, new_img.begin());  // a few unchanged
    write_file(tmp_.file("old.img"), old_img);
    write_file(tmp_.file("sys.img"), old_img);
    write_file(tmp_.file("new.img"), new_img);
    auto r = run({udm_bin(), "update-diff", "--format", format, tmp_.file("old.img"), tmp_.file("new.img"), "-o",
                      tmp_.file("diff.img"), "-a", format == "v0" ? "lz4" : "zstd"});
    ASSERT_TRUE(r.ok()) << r.describe();
    sectors_ = std::to_string(blocks * 8);
  }
  std::string table(const std::string& opts) const {
    return "0 " + sectors_ + " update " + tmp_.file("sys.img") + " " + tmp_.file("diff.img") + " " + opts;
  }
  TempDir tmp_;
  std::string sectors_;
  std::unique_ptr<TestDaemon> d_;
};

}  // namespace

TEST_F(JobsE2E, PausedInTableSurvivesSuspendResumeAndRestartThenWaitFinishes) {
  make_pair("v1", 512);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(d_->udm({"create", "sys", "--table", table("2 paused throttle=auto")}).ok());
  json j = job_of(*d_, "sys");
  check_fields(j);
  EXPECT_EQ(j["kind"], "update-copy-back");
  EXPECT_EQ(j["state"], "paused");
  EXPECT_EQ(j["paused"], true);
  EXPECT_EQ(j["throttle"], "auto");
  EXPECT_EQ(j["done"], 0u);
  EXPECT_TRUE(j["eta_seconds"].is_null());
  // Consistent with status.
  auto st = d_->udm({"status", "sys"});
  auto [done, total] = status_counts(st.out);
  EXPECT_EQ(j["done"].get<uint64_t>(), done) << st.out;
  EXPECT_EQ(j["total"].get<uint64_t>(), total) << st.out;
  EXPECT_GT(total, 400u);
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), total * 4096);
  // Paused: wait times out (2), nothing moves, across suspend/resume.
  auto w = d_->udm({"wait", "sys", "--timeout", "0.3"});
  EXPECT_EQ(w.exit_code, 2) << w.describe();
  EXPECT_NE(w.err.find("not done"), std::string::npos) << w.err;
  EXPECT_EQ(w.out, "") << "no progress bar when stdout is not a terminal";
  ASSERT_TRUE(d_->udm({"suspend", "sys"}).ok());
  ASSERT_TRUE(d_->udm({"resume", "sys"}).ok());
  EXPECT_EQ(d_->udm({"wait", "sys", "--timeout", "0.2"}).exit_code, 2);
  EXPECT_EQ(status_counts(d_->udm({"status", "sys"}).out).first, 0u);
  EXPECT_EQ(sha256_file(tmp_.file("sys.img")), sha256_file(tmp_.file("old.img")));
  // The text form of info shows the job.
  auto info = d_->udm({"info", "sys"});
  EXPECT_NE(info.out.find("Job:               update-copy-back paused 0/"), std::string::npos) << info.out;
  // Bad control words are refused naming the argument; nothing changes.
  auto bad = d_->udm({"message", "sys", "0", "throttle", "fast"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("update: throttle: 'fast' is not a rate"), std::string::npos) << bad.err;
  bad = d_->udm({"message", "sys", "0", "throttle"});
  EXPECT_NE(bad.err.find("update: throttle: give <MiB/s>, auto or off"), std::string::npos) << bad.err;
  bad = d_->udm({"create", "bad", "--table", table("1 throttle=0")});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("update: throttle: 0 MiB/s is out of range"), std::string::npos) << bad.err;
  EXPECT_EQ(job_of(*d_, "sys")["throttle"], "auto");

  // Restart the daemon; the same table keeps the job paused.
  ASSERT_EQ(d_->stop(), 0);
  d_ = TestDaemon::start(false, false);
  ASSERT_TRUE(d_->udm({"create", "sys", "--table", table("2 paused throttle=auto")}).ok());
  EXPECT_EQ(d_->udm({"wait", "sys", "--timeout", "0.2"}).exit_code, 2);
  EXPECT_EQ(job_of(*d_, "sys")["state"], "paused");

  // Resume: it runs to the end; wait says 0, JSON and status agree.
  ASSERT_TRUE(d_->udm({"message", "sys", "0", "throttle", "off"}).ok());
  ASSERT_TRUE(d_->udm({"message", "sys", "0", "resume"}).ok());
  w = d_->udm({"wait", "sys", "--timeout", "120"});
  ASSERT_EQ(w.exit_code, 0) << w.describe();
  j = job_of(*d_, "sys");
  check_fields(j);
  EXPECT_EQ(j["state"], "done");
  EXPECT_EQ(j["done"], j["total"]);
  EXPECT_EQ(j["done_bytes"], j["total_bytes"]);
  EXPECT_EQ(j["eta_seconds"], 0.0);
  EXPECT_EQ(j["paused"], false);
  EXPECT_EQ(j["throttle"], "off");
  auto [d2, t2] = status_counts(d_->udm({"status", "sys"}).out);
  EXPECT_EQ(d2, t2);
  EXPECT_EQ(j["done"].get<uint64_t>(), d2);
  ASSERT_TRUE(d_->udm({"remove", "sys"}).ok());
  EXPECT_EQ(sha256_file(tmp_.file("sys.img")), sha256_file(tmp_.file("new.img")));
  EXPECT_EQ(d_->stop(), 0);
}

TEST_F(JobsE2E, WaitSaysFailedWhenTheDeviceBelowFails) {
  // A v0 copy-back onto an error target: every write fails, the job fails.
  make_pair("v0", 64);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(d_->udm({"create", "broken", "--table", "0 " + sectors_ + " error"}).ok());
  ASSERT_TRUE(d_->udm({"create", "upd", "--table",
                       "0 " + sectors_ + " update broken " + tmp_.file("diff.img") + " 0"})
                  .ok());
  auto w = d_->udm({"wait", "upd", "--timeout", "120"});
  EXPECT_EQ(w.exit_code, 1) << w.describe();
  EXPECT_NE(w.err.find("background job failed"), std::string::npos) << w.err;
  json j = job_of(*d_, "upd");
  check_fields(j);
  EXPECT_EQ(j["state"], "failed");
  EXPECT_TRUE(j["error"].is_string()) << j;
  EXPECT_TRUE(j["eta_seconds"].is_null());
  // No such device: 3 (could not ask), not a job's verdict.
  EXPECT_EQ(d_->udm({"wait", "nope", "--timeout", "1"}).exit_code, 3);
  // A device without jobs is done at once.
  ASSERT_TRUE(d_->udm({"create", "plain", "--table", "0 8 zero"}).ok());
  EXPECT_EQ(d_->udm({"wait", "plain"}).exit_code, 0);
  EXPECT_EQ(json::parse(d_->udm({"info", "plain", "--json"}).out)["jobs"], json::array());
  ASSERT_TRUE(d_->udm({"remove", "upd"}).ok());
  EXPECT_EQ(d_->stop(), 0);
}
