// End to end with build/udm: an ext4 pair written as an Android COW by
// `udm update-diff --format android-cow-v3`, served by android-cow-merge in
// the daemon through the FUSE export and a loop device (every file compared
// while the merge runs), the base equal to the new image afterwards; the
// merge's background-job controls through the daemon (messages, table
// options, `udm info --json`, `udm wait`); and the tools on the shared
// vectors.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/sys_util.h"

namespace udm::test {
namespace {

std::string ok(const CmdResult& r) { return r.ok() ? std::string() : r.describe(); }

// Files of the tree under `root`, relative path -> sha256.
std::map<std::string, std::string> tree_sums(const std::string& root) {
  std::map<std::string, std::string> m;
  for (auto& e : std::filesystem::recursive_directory_iterator(root))
    if (e.is_regular_file()) m[std::filesystem::relative(e.path(), root).string()] = sha256_file(e.path().string());
  return m;
}

TEST(AndroidCowE2E, Ext4ThroughFuseWhileMerging) {
  if (!is_root() || !have_tool("mkfs.ext4") || !have_tool("losetup")) GTEST_SKIP() << "needs root, mkfs.ext4, losetup";
  TempDir t;
  // Old and new trees: changed, added, deleted, moved and similar files.
  const std::string od = t.file("old"), nd = t.file("new");
  ASSERT_EQ(ok(sh("mkdir -p " + od + "/d " + nd)), "");
  for (int i = 0; i < 24; i++) write_file(od + "/d/f" + std::to_string(i), random_bytes(20000 + i * 9000, 40 + i));
  write_file(od + "/text", std::vector<uint8_t>(300000, 'a'));
  ASSERT_EQ(ok(sh("cp -a " + od + "/. " + nd + "/")), "");
  for (int i = 0; i < 6; i++) write_file(nd + "/d/f" + std::to_string(i), random_bytes(30000 + i * 5000, 90 + i));
  ASSERT_EQ(ok(sh("rm " + nd + "/d/f7 && mv " + nd + "/d/f8 " + nd + "/moved && mkdir " + nd + "/e")), "");
  for (int i = 0; i < 5; i++) write_file(nd + "/e/g" + std::to_string(i), random_bytes(50000, 200 + i));
  {
    auto txt = std::vector<uint8_t>(300000, 'a');
    txt[1000] = 'b';
    write_file(nd + "/text", txt);
  }
  for (auto [dir, img] : {std::pair{od, "old.img"}, std::pair{nd, "new.img"}})
    ASSERT_EQ(ok(run({"mkfs.ext4", "-q", "-F", "-b", "4096", "-d", dir, "-U", "0a0a0a0a-0000-4000-8000-000000000001",
                      "-E", "hash_seed=0a0a0a0a-0000-4000-8000-000000000002", t.file(img), "32M"})),
              "");
  ASSERT_EQ(ok(run({udm_bin(), "update-diff", t.file("old.img"), t.file("new.img"), "-o", t.file("new.cow"), "--format",
                    "android-cow-v3", "-a", "zstd", "--cow-unit", "64k"})),
            "");
  auto info = run({udm_bin(), "android-cow-info", t.file("new.cow")});
  ASSERT_TRUE(info.ok()) << info.describe();
  EXPECT_NE(info.out.find("Android COW v3"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("safe in place"), std::string::npos) << info.out;
  ASSERT_EQ(ok(sh("cp " + t.file("old.img") + " " + t.file("base.img"))), "");

  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  const std::string sect = std::to_string((32u << 20) / 512);
  auto c = d->udm({"create", "sys", "--table",
                   "0 " + sect + " android-cow-merge " + t.file("base.img") + " " + t.file("new.cow")});
  ASSERT_TRUE(c.ok()) << c.describe();
  ASSERT_TRUE(wait_for_file(d->fuse_path("sys")));
  const auto want = tree_sums(nd);
  {
    LoopDevice loop(d->fuse_path("sys"), true);
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    auto fsck = run({"e2fsck", "-fn", loop.device()});
    EXPECT_TRUE(fsck.ok()) << fsck.describe();
    std::string mnt = t.file("mnt");
    ::mkdir(mnt.c_str(), 0755);
    Mount m(loop.device(), mnt, "ro,noload");
    ASSERT_TRUE(m.ok()) << m.error();
    EXPECT_EQ(tree_sums(mnt), want);
  }
  std::string st;
  for (int i = 0; i < 2400; i++) {
    auto s = d->udm({"status", "sys"});
    ASSERT_TRUE(s.ok()) << s.describe();
    st = s.out;
    std::istringstream in(st);
    std::string a, b, type, merged, total;
    in >> a >> b >> type >> merged >> total;
    if (!merged.empty() && merged == total) break;
    usleep(25000);
  }
  ASSERT_NE(st.find("android-cow-merge"), std::string::npos) << st;
  ASSERT_TRUE(d->udm({"remove", "sys"}).ok());
  EXPECT_EQ(d->stop(), 0);
  EXPECT_EQ(sha256_file(t.file("base.img")), sha256_file(t.file("new.img"))) << st;
}

// "0 <len> android-cow-merge <merged> <total>[ failed]" -> {merged, total}.
std::pair<uint64_t, uint64_t> merge_counts(const std::string& line) {
  std::istringstream in(line);
  std::string start, len, type;
  uint64_t merged = 0, total = 0;
  in >> start >> len >> type >> merged >> total;
  return {merged, total};
}

nlohmann::json merge_job(TestDaemon& d, const std::string& name) {
  auto r = d.udm({"info", name, "--json"});
  EXPECT_TRUE(r.ok()) << r.describe();
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["jobs"].size(), 1u) << r.out;
  return j["jobs"].empty() ? nlohmann::json::object() : j["jobs"][0];
}

// The issue-16 controls of the merge as a user drives them: a table with
// `paused throttle=auto` stays put across suspend/resume and a daemon
// restart (udm wait times out: 2), refusals name the argument, the JSON
// job agrees with the status line, and after resume `udm wait` returns 0
// with the base equal to the new image; a merge over a failing base makes
// `udm wait` say 1.
TEST(AndroidCowE2E, MergeJobControlsInfoAndWait) {
  if (!have_tool("sh")) GTEST_SKIP();
  TempDir t;
  const uint64_t blocks = 1024;
  auto old_img = random_bytes(blocks * 4096, 61);
  auto new_img = old_img;
  auto novel = random_bytes(blocks * 4096, 62);
  for (uint64_t b = 0; b < blocks; b += 2) std::memcpy(&new_img[b * 4096], &novel[b * 4096], 4096);  // REPLACE
  for (uint64_t b = 1; b < 200; b += 2) std::memcpy(&new_img[b * 4096], &old_img[(b + 400) * 4096], 4096);  // COPY
  write_file(t.file("old.img"), old_img);
  write_file(t.file("base.img"), old_img);
  write_file(t.file("new.img"), new_img);
  ASSERT_EQ(ok(run({udm_bin(), "update-diff", t.file("old.img"), t.file("new.img"), "-o", t.file("new.cow"), "--format",
                    "android-cow-v3", "-a", "lz4"})),
            "");
  const std::string sect = std::to_string(blocks * 8);
  auto table = [&](const std::string& base, const std::string& opts) {
    return "0 " + sect + " android-cow-merge " + base + " " + t.file("new.cow") + (opts.empty() ? "" : " " + opts);
  };
  auto d = TestDaemon::start(false, false);
  ASSERT_TRUE(d);
  auto c = d->udm({"create", "sys", "--table", table(t.file("base.img"), "2 paused throttle=auto")});
  ASSERT_TRUE(c.ok()) << c.describe();
  auto j = merge_job(*d, "sys");
  EXPECT_EQ(j["kind"], "android-cow-merge");
  EXPECT_EQ(j["unit"], "operations");
  EXPECT_EQ(j["state"], "paused");
  EXPECT_EQ(j["paused"], true);
  EXPECT_EQ(j["throttle"], "auto");
  EXPECT_EQ(j["done"], 0u);
  EXPECT_EQ(j["done_bytes"], 0u);
  EXPECT_TRUE(j["eta_seconds"].is_null()) << j;
  EXPECT_TRUE(j["bytes_per_second"].is_number()) << j;
  auto [m0, total] = merge_counts(d->udm({"status", "sys"}).out);
  EXPECT_EQ(m0, 0u);
  EXPECT_EQ(j["total"].get<uint64_t>(), total);
  EXPECT_GT(total, 500u);
  EXPECT_GE(j["total_bytes"].get<uint64_t>(), total * 4096);  // a v3 REPLACE op may write several blocks
  auto w = d->udm({"wait", "sys", "--timeout", "0.3"});
  EXPECT_EQ(w.exit_code, 2) << w.describe();
  ASSERT_TRUE(d->udm({"suspend", "sys"}).ok());
  ASSERT_TRUE(d->udm({"resume", "sys"}).ok());
  EXPECT_EQ(d->udm({"wait", "sys", "--timeout", "0.2"}).exit_code, 2);
  EXPECT_EQ(merge_counts(d->udm({"status", "sys"}).out).first, 0u);
  EXPECT_EQ(sha256_file(t.file("base.img")), sha256_file(t.file("old.img")));
  auto bad = d->udm({"message", "sys", "0", "throttle", "fast"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("android-cow-merge: throttle: 'fast' is not a rate"), std::string::npos) << bad.err;
  bad = d->udm({"create", "bad", "--table", table(t.file("old.img"), "1 throttle=0")});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("android-cow-merge: throttle: 0 MiB/s is out of range"), std::string::npos) << bad.err;

  // A daemon restart with the same table: still paused.
  ASSERT_EQ(d->stop(), 0);
  d = TestDaemon::start(false, false);
  ASSERT_TRUE(d->udm({"create", "sys", "--table", table(t.file("base.img"), "2 paused throttle=auto")}).ok());
  EXPECT_EQ(d->udm({"wait", "sys", "--timeout", "0.2"}).exit_code, 2);
  EXPECT_EQ(merge_job(*d, "sys")["state"], "paused");
  ASSERT_TRUE(d->udm({"message", "sys", "0", "throttle", "off"}).ok());
  ASSERT_TRUE(d->udm({"message", "sys", "0", "resume"}).ok());
  w = d->udm({"wait", "sys", "--timeout", "120"});
  ASSERT_EQ(w.exit_code, 0) << w.describe();
  j = merge_job(*d, "sys");
  EXPECT_EQ(j["state"], "done");
  EXPECT_EQ(j["done"], j["total"]);
  EXPECT_EQ(j["done_bytes"], j["total_bytes"]);
  EXPECT_EQ(j["eta_seconds"], 0.0);
  EXPECT_EQ(j["throttle"], "off");
  auto [m1, t1] = merge_counts(d->udm({"status", "sys"}).out);
  EXPECT_EQ(m1, t1);
  EXPECT_EQ(j["done"].get<uint64_t>(), m1);
  ASSERT_TRUE(d->udm({"remove", "sys"}).ok());
  EXPECT_EQ(sha256_file(t.file("base.img")), sha256_file(t.file("new.img")));

  // A base that fails every I/O (an error device): the job fails, wait
  // says 1. (The merged COW records its end: a fresh one.)
  ASSERT_TRUE(d->udm({"create", "ro", "--table", "0 " + sect + " error"}).ok());
  ASSERT_EQ(ok(run({udm_bin(), "update-diff", t.file("old.img"), t.file("new.img"), "-o", t.file("new.cow"), "--format",
                    "android-cow-v3", "-a", "lz4"})),
            "");
  c = d->udm({"create", "broken", "--table", table("ro", "")});
  ASSERT_TRUE(c.ok()) << c.describe();
  w = d->udm({"wait", "broken", "--timeout", "120"});
  EXPECT_EQ(w.exit_code, 1) << w.describe();
  j = merge_job(*d, "broken");
  EXPECT_EQ(j["state"], "failed");
  EXPECT_TRUE(j["error"].is_string()) << j;
  EXPECT_NE(d->udm({"status", "broken"}).out.find(" failed"), std::string::npos);
  ASSERT_TRUE(d->udm({"remove", "broken"}).ok());
  EXPECT_EQ(d->stop(), 0);
}

TEST(AndroidCowCli, ApplyAndInfoOnSharedVectors) {
  const std::string dir = shared_dir() + "/data/android-cow";
  if (!std::filesystem::exists(dir + "/base.img.zst") || !have_tool("zstd")) GTEST_SKIP() << "no " << dir;
  TempDir t;
  ASSERT_EQ(ok(run({"zstd", "-qd", "--long=24", dir + "/base.img.zst", "-o", t.file("base.img")})), "");
  struct V {
    const char* name;
    std::vector<std::string> extra;
    const char* sha;
  };
  for (const V& v : {V{"v2-zstd-seq", {}, "855279349289be2e007e54e22df82ce093f98476dd0ccb1573c3779a1f772a0d"},
                     V{"v3-lz4-resume", {}, "855279349289be2e007e54e22df82ce093f98476dd0ccb1573c3779a1f772a0d"},
                     V{"v2-none-crash", {"--label", "7"}, "feea99be518f596bd9e9d4074f65acc530d5be8319d4926e26d42d282464aefd"}}) {
    ASSERT_EQ(ok(sh("cp " + t.file("base.img") + " " + t.file("b.img") + " && cp " + dir + "/" + v.name + ".cow " +
                    t.file("c.cow") + " && chmod u+w " + t.file("c.cow"))),
              "");
    std::vector<std::string> a = {udm_bin(), "android-cow-apply", t.file("b.img"), t.file("c.cow")};
    a.insert(a.end(), v.extra.begin(), v.extra.end());
    auto r = run(a);
    ASSERT_TRUE(r.ok()) << v.name << ": " << r.describe();
    EXPECT_EQ(sha256_file(t.file("b.img")), v.sha) << v.name;
    // Again: nothing left to merge, the result stays.
    r = run(a);
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_NE(r.out.find("resumed at"), std::string::npos) << r.out;
    EXPECT_EQ(sha256_file(t.file("b.img")), v.sha) << v.name;
  }
  auto r = run({udm_bin(), "android-cow-info", dir + "/v2-none-crash.cow"});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("label"), std::string::npos) << r.err;
  r = run({udm_bin(), "android-cow-info", dir + "/v2-none-crash.cow", "--label", "7"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("footer:            no"), std::string::npos) << r.out;
  r = run({udm_bin(), "android-cow-info", dir + "/v3-gz-seq.cow"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("sequence data:     216 blocks"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("count 14, max 4"), std::string::npos) << r.out;
  r = run({udm_bin(), "update-diff", t.file("base.img"), t.file("base.img"), "-o", t.file("x.cow"), "--format",
           "android-cow-v2", "--cow-unit", "64k"});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("android-cow-v3"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace udm::test
