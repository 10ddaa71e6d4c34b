// The daemon as users run it: `udm daemon` in its own process, driven by the
// `udm` verbs, its devices used by real clients over FUSE+loop and NBD.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/sys_util.h"

using namespace udm::test;

namespace {

class DaemonE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!is_root()) GTEST_SKIP() << "needs root for FUSE, loop and mount";
    d_ = TestDaemon::start(/*fuse=*/true, /*nbd=*/true);
  }
  std::unique_ptr<TestDaemon> d_;
};

}  // namespace

TEST_F(DaemonE2E, VerbsAndOutputFormats) {
  TempDir tmp;
  auto a = tmp.file("a.img"), b = tmp.file("b.img");
  make_sparse_file(a, 8 << 20);
  make_sparse_file(b, 8 << 20);
  // --socket right after the verb as well as at the end (TestDaemon::udm).
  auto r = run({udm_bin(), "create", "--socket", d_->socket, "stack", "--table",
                "0 8192 linear " + a + " 0\n8192 8192 linear " + b + " 2048"});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = d_->udm({"ls"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "stack\n");
  r = d_->udm({"status", "stack"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.out, "0 8192 linear\n8192 8192 linear\n");
  r = d_->udm({"table", "stack"});
  EXPECT_EQ(r.out, "0 8192 linear " + a + " 0\n8192 8192 linear " + b + " 2048\n");
  r = d_->udm({"info", "stack", "--json"});
  ASSERT_TRUE(r.ok()) << r.describe();
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["name"], "stack");
  EXPECT_EQ(j["size_bytes"], 16384 * 512);
  EXPECT_EQ(j["read_only"], false);
  EXPECT_EQ(j["suspended"], false);
  EXPECT_EQ(j["open_count"], 0);
  r = d_->udm({"info", "stack"});
  EXPECT_NE(r.out.find("State:             ACTIVE"), std::string::npos) << r.out;
  // Errors: clear message, non-zero exit, nothing changed.
  r = d_->udm({"create", "bad", "--table", "0 8 linear " + a + " 0\n16 8 zero"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("line 2: gap"), std::string::npos) << r.err;
  r = d_->udm({"create", "bad", "--table", "0 99999999 linear " + a + " 0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("too small"), std::string::npos) << r.err;
  EXPECT_EQ(d_->udm({"ls"}).out, "stack\n");
  r = run({udm_bin(), "ls", "--socket", d_->dir + "/nope"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("cannot reach the udm daemon"), std::string::npos) << r.err;
  // Stacking by name, reload to another table, suspend/resume.
  ASSERT_TRUE(d_->udm({"create", "top", "--table", "0 4096 linear stack 8192"}).ok());
  EXPECT_EQ(nlohmann::json::parse(d_->udm({"info", "stack", "--json"}).out)["open_count"], 1);
  r = d_->udm({"remove", "stack"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("in use"), std::string::npos);
  ASSERT_TRUE(d_->udm({"reload", "top", "--table", "0 4096 zero"}).ok());
  EXPECT_EQ(d_->udm({"table", "top"}).out, "0 4096 linear stack 8192\n");
  ASSERT_TRUE(d_->udm({"suspend", "top"}).ok());
  EXPECT_EQ(nlohmann::json::parse(d_->udm({"info", "top", "--json"}).out)["suspended"], true);
  ASSERT_TRUE(d_->udm({"resume", "top"}).ok());
  EXPECT_EQ(d_->udm({"table", "top"}).out, "0 4096 zero\n");
  EXPECT_EQ(nlohmann::json::parse(d_->udm({"info", "stack", "--json"}).out)["open_count"], 0);
  ASSERT_TRUE(d_->udm({"remove", "top"}).ok());
  ASSERT_TRUE(d_->udm({"remove", "stack"}).ok());
  EXPECT_EQ(d_->udm({"ls"}).out, "");
  EXPECT_EQ(d_->stop(), 0);
}

// The end-to-end: a device stacked from linear segments over two
// files, exported; mkfs + mount + write + read back + e2fsck through FUSE;
// the same bytes seen over NBD.
TEST_F(DaemonE2E, Ext4OnStackedLinearThroughFuseAndNbd) {
  TempDir tmp;
  auto a = tmp.file("a.img"), b = tmp.file("b.img");
  make_sparse_file(a, 40 << 20);
  make_sparse_file(b, 40 << 20);
  // 32 MiB from a (at 1 MiB) + 32 MiB from b (at 4 MiB) = 64 MiB.
  ASSERT_TRUE(d_->udm({"create", "vol", "--table",
                       "0 65536 linear " + a + " 2048\n65536 65536 linear " + b + " 8192"})
                  .ok());
  std::string file = d_->fuse_path("vol");
  ASSERT_EQ(access(file.c_str(), F_OK), 0) << "FUSE file missing";
  {
    LoopDevice loop(file);
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    auto r = run({"mkfs.ext4", "-q", "-F", loop.device()});
    ASSERT_TRUE(r.ok()) << r.describe();
    std::string mnt = tmp.file("mnt");
    ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
    {
      Mount m(loop.device(), mnt);
      ASSERT_TRUE(m.ok()) << m.error();
      auto data = random_bytes(20 << 20, 42);  // spans both backing files
      write_file(mnt + "/big.bin", data);
      write_file(mnt + "/small.txt", {'h', 'i', '\n'});
      ASSERT_TRUE(sh("sync").ok());
      ASSERT_TRUE(sh("echo 3 > /proc/sys/vm/drop_caches").ok());
      EXPECT_EQ(read_file(mnt + "/big.bin"), data);
      ASSERT_TRUE(m.unmount());
    }
    auto fsck = run({"e2fsck", "-f", "-n", loop.device()});
    EXPECT_TRUE(fsck.ok()) << fsck.describe();
  }
  // Both backing files received data.
  EXPECT_NE(read_file(a), std::vector<uint8_t>(40 << 20, 0));
  EXPECT_NE(read_file(b), std::vector<uint8_t>(40 << 20, 0));
  if (have_tool("nbdinfo")) {
    auto r = run({"nbdinfo", "--size", d_->nbd_uri("vol")});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(r.out, std::to_string(64 << 20) + "\n");
  }
  if (have_tool("nbdcopy")) {
    std::string out = tmp.file("copy.img");
    auto r = run({"nbdcopy", d_->nbd_uri("vol"), out});
    ASSERT_TRUE(r.ok()) << r.describe();
    auto fsck = run({"e2fsck", "-f", "-n", out});
    EXPECT_TRUE(fsck.ok()) << fsck.describe();
  }
  EXPECT_EQ(d_->stop(), 0);
}
