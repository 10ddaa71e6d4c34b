// The seed's usage end to end through `udm`: update-diff, the daemon, the
// update device over the FUSE export mounted read-only while the copy runs,
// status until done, reload to linear, partition == new.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <thread>

#include "common/sys_util.h"

using namespace udm::test;

TEST(UpdateE2E, Ext4ImagesDiffServeCopyReloadLinear) {
  if (!is_root()) GTEST_SKIP() << "needs root";
  TempDir t;
  std::string tree = t.file("tree");
  ASSERT_TRUE(sh("mkdir -p " + tree + "/etc " + tree + "/bin && head -c 3000000 /dev/urandom > " + tree +
                 "/bin/app && echo v1 > " + tree + "/etc/version && seq 1 100000 > " + tree + "/etc/list && "
                 "head -c 500000 /dev/urandom > " + tree + "/old-only")
                  .ok());
  auto mk = [&](const std::string& img) {
    return run({"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-U",
                "0b5f1e2a-0000-4000-8000-000000000001", "-d", tree, img, "32M"});
  };
  ASSERT_TRUE(mk(t.file("old.img")).ok());
  // New: changed, added, moved, deleted files.
  ASSERT_TRUE(sh("cd " + tree + " && echo v2 > etc/version && head -c 2000000 /dev/urandom > bin/new-app && "
                 "mv etc/list bin/list && rm old-only && dd if=/dev/urandom of=bin/app bs=4096 count=10 conv=notrunc status=none")
                  .ok());
  ASSERT_TRUE(mk(t.file("new.img")).ok());
  auto r = run({udm_bin(), "update-diff", t.file("old.img"), t.file("new.img"), "-o", t.file("diff.img"), "-a", "zstd"});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = run({udm_bin(), "update-info", t.file("diff.img")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("compression:       zstd"), std::string::npos);
  ASSERT_TRUE(sh("cp " + t.file("old.img") + " " + t.file("sys.img")).ok());

  auto d = TestDaemon::start(true, true);
  std::string sectors = std::to_string((32 << 20) / 512);
  r = d->udm({"create", "system", "--table", "0 " + sectors + " update " + t.file("sys.img") + " " + t.file("diff.img") + " 0"});
  ASSERT_TRUE(r.ok()) << r.describe();
  {
    LoopDevice loop(d->fuse_path("system"), /*read_only=*/true);
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    std::string mnt = t.file("mnt");
    mkdir(mnt.c_str(), 0755);
    Mount m(loop.device(), mnt, "ro,noload");
    ASSERT_TRUE(m.ok()) << m.error();
    EXPECT_TRUE(run({"cmp", mnt + "/bin/app", tree + "/bin/app"}).ok());
    EXPECT_TRUE(run({"cmp", mnt + "/bin/new-app", tree + "/bin/new-app"}).ok());
    EXPECT_TRUE(run({"cmp", mnt + "/bin/list", tree + "/bin/list"}).ok());
    EXPECT_TRUE(run({"cmp", mnt + "/etc/version", tree + "/etc/version"}).ok());
    EXPECT_NE(access((mnt + "/old-only").c_str(), F_OK), 0);
    EXPECT_NE(access((mnt + "/etc/list").c_str(), F_OK), 0);
  }
  std::string status;
  for (int i = 0; i < 600; i++) {
    status = d->udm({"status", "system"}).out;
    std::istringstream ss(status);
    std::string a, b, c, x, y;
    ss >> a >> b >> c >> x >> y;
    if (!x.empty() && x == y) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(d->udm({"reload", "system", "--table", "0 " + sectors + " linear " + t.file("sys.img") + " 0"}).ok());
  ASSERT_TRUE(d->udm({"resume", "system"}).ok());
  EXPECT_EQ(d->udm({"table", "system"}).out, "0 " + sectors + " linear " + t.file("sys.img") + " 0\n");
  EXPECT_EQ(d->stop(), 0);
  EXPECT_EQ(sha256_file(t.file("sys.img")), sha256_file(t.file("new.img"))) << "status was: " << status;
  // Offline apply gives the same bytes.
  ASSERT_TRUE(sh("cp " + t.file("old.img") + " " + t.file("off.img")).ok());
  r = run({udm_bin(), "update-apply", t.file("off.img"), t.file("diff.img"), "--verify", t.file("new.img")});
  EXPECT_TRUE(r.ok()) << r.describe();
}
