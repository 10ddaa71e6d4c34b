// End to end: an ext4 filesystem on an lsmt stack with a writable top layer,
// exported through the daemon's FUSE export and a loop device: mkfs, write
// files, e2fsck; then commit the RW layer, compress it to ZFile, stack it
// read-only on the base and find the same files.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>

#include "common/sys_util.h"

namespace udm::test {
namespace {

TEST(OverlaybdE2E, Ext4OnLsmtStackThroughFuse) {
  if (!is_root() || !have_tool("mkfs.ext4") || !have_tool("losetup")) GTEST_SKIP() << "needs root, mkfs.ext4, losetup";
  TempDir t;
  const uint64_t kSize = 256ull << 20;
  // Base layer: a raw image with a little data, converted and compressed.
  {
    std::vector<uint8_t> raw(kSize, 0);
    auto r = random_bytes(1 << 20, 9);
    std::copy(r.begin(), r.end(), raw.begin() + (200ull << 20));
    write_file(t.file("base.raw"), raw);
  }
  auto ok = [](const CmdResult& r) { return r.ok() ? std::string() : r.describe(); };
  ASSERT_EQ(ok(run({udm_bin(), "overlaybd", "from-raw", t.file("base.raw"), t.file("base.zfile"), "-z",
                    "--uuid", "0BA5E000-0000-4000-8000-000000000001"})), "");
  ASSERT_EQ(ok(run({udm_bin(), "overlaybd", "create", t.file("rw.data"), t.file("rw.index"), "--size", "256M",
                    "--parent-uuid", "0BA5E000-0000-4000-8000-000000000001"})), "");
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  std::string sect = std::to_string(kSize / 512);
  auto c = d->udm({"create", "obdrw", "--table",
                   "0 " + sect + " lsmt " + t.file("base.zfile") + " rw " + t.file("rw.data") + " " + t.file("rw.index")});
  ASSERT_TRUE(c.ok()) << c.describe();
  if (!wait_for_file(d->fuse_path("obdrw"))) GTEST_SKIP() << "FUSE export did not show the device";
  std::map<std::string, std::string> sums;
  {
    LoopDevice loop(d->fuse_path("obdrw"));
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    ASSERT_EQ(ok(run({"mkfs.ext4", "-q", "-F", loop.device()})), "");
    std::string mnt = t.file("mnt");
    ::mkdir(mnt.c_str(), 0755);
    {
      Mount m(loop.device(), mnt);
      ASSERT_TRUE(m.ok()) << m.error();
      ::mkdir((mnt + "/dir").c_str(), 0755);
      for (int i = 0; i < 12; i++) {
        std::string name = "dir/file" + std::to_string(i);
        write_file(mnt + "/" + name, random_bytes((i + 1) * 37000 + i, 100 + i));
        sums[name] = sha256_file(mnt + "/" + name);
      }
      ASSERT_EQ(ok(run({"rm", "-f", mnt + "/dir/file3"})), "");  // freed blocks -> discards
      sums.erase("dir/file3");
      ASSERT_EQ(ok(sh("sync && fstrim " + mnt + " || true")), "");
      ASSERT_TRUE(m.unmount());
    }
    auto fsck = run({"e2fsck", "-fn", loop.device()});
    EXPECT_TRUE(fsck.ok()) << fsck.describe();
  }
  ASSERT_TRUE(d->udm({"remove", "obdrw"}).ok());
  // Commit, compress, and stack read-only.
  ASSERT_EQ(ok(run({udm_bin(), "overlaybd", "commit", t.file("rw.data"), t.file("rw.index"), t.file("l2.lsmt"),
                    "--uuid", "0BA5E000-0000-4000-8000-000000000002"})), "");
  ASSERT_EQ(ok(run({udm_bin(), "overlaybd", "compress", t.file("l2.lsmt"), t.file("l2.zfile"), "--algorithm", "zstd",
                    "--bs", "16"})), "");
  auto info = run({udm_bin(), "overlaybd", "info", t.file("base.zfile"), t.file("l2.zfile")});
  ASSERT_TRUE(info.ok()) << info.describe();
  EXPECT_NE(info.out.find("matches layer below"), std::string::npos) << info.out;
  c = d->udm({"create", "obdro", "--readonly", "--table",
              "0 " + sect + " lsmt " + t.file("base.zfile") + " " + t.file("l2.zfile")});
  ASSERT_TRUE(c.ok()) << c.describe();
  ASSERT_TRUE(wait_for_file(d->fuse_path("obdro")));
  {
    LoopDevice loop(d->fuse_path("obdro"), true);
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    auto fsck = run({"e2fsck", "-fn", loop.device()});
    EXPECT_TRUE(fsck.ok()) << fsck.describe();
    std::string mnt = t.file("mnt2");
    ::mkdir(mnt.c_str(), 0755);
    Mount m(loop.device(), mnt, "ro,noload");
    ASSERT_TRUE(m.ok()) << m.error();
    for (auto& [name, sum] : sums) EXPECT_EQ(sha256_file(mnt + "/" + name), sum) << name;
    EXPECT_NE(::access((mnt + "/dir/file3").c_str(), F_OK), 0);
  }
  ASSERT_TRUE(d->udm({"remove", "obdro"}).ok());
  EXPECT_EQ(d->stop(), 0);
}


// The command-line tools on the reference's samples (no daemon needed).
TEST(OverlaybdCli, CompressDecompressInfoMatchReference) {
  TempDir t;
  std::string d = shared_dir() + "/data/overlaybd";
  auto r = run({udm_bin(), "overlaybd", "compress", d + "/base.lsmt", t.file("b.zfile"), "--overwrite-header"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(sha256_file(t.file("b.zfile")), sha256_file(d + "/base.lz4.zfile"));
  r = run({udm_bin(), "overlaybd", "compress", d + "/base.lsmt", t.file("b.zstd"), "--overwrite-header",
           "--algorithm", "zstd"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(sha256_file(t.file("b.zstd")), sha256_file(d + "/base.zstd.zfile"));
  r = run({udm_bin(), "overlaybd", "decompress", d + "/base.zstd.zfile", t.file("b.lsmt")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(sha256_file(t.file("b.lsmt")), sha256_file(d + "/base.lsmt"));
  r = run({udm_bin(), "overlaybd", "compress", d + "/l2.lsmt", t.file("l2.tar"), "-t", "--bs", "64"});
  ASSERT_TRUE(r.ok()) << r.describe();
  // GNU tar reads the wrapper: its member is exactly the plain ZFile.
  r = run({udm_bin(), "overlaybd", "compress", d + "/l2.lsmt", t.file("l2.plain"), "--bs", "64"});
  ASSERT_TRUE(r.ok()) << r.describe();
  if (have_tool("tar")) {
    r = sh("cd " + t.path() + " && mkdir x && tar -C x -xf l2.tar && ls x");
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_NE(r.out.find("overlaybd.commit"), std::string::npos) << r.out;
    EXPECT_EQ(sha256_file(t.file("x/overlaybd.commit")), sha256_file(t.file("l2.plain")));
  }
  r = run({udm_bin(), "overlaybd", "info", d + "/base.zstd.zfile", t.file("l2.tar"), d + "/l3.lsmt"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("tar wrapper"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("6 entries (3 data, 3 zeroed), 250 padding"), std::string::npos) << r.out;
  size_t first = r.out.find("matches layer below");
  ASSERT_NE(first, std::string::npos) << r.out;
  EXPECT_NE(r.out.find("matches layer below", first + 1), std::string::npos) << r.out;
  // Refusals name the problem.
  r = run({udm_bin(), "overlaybd", "compress", d + "/base.lsmt", t.file("x"), "--bs", "3"});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("--bs"), std::string::npos) << r.err;
  r = run({udm_bin(), "overlaybd", "info", d + "/gen_data.py"});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("magic"), std::string::npos) << r.err;
}

// The targets inside the daemon: table lines, udm devices as layers, status.
TEST(OverlaybdDaemon, TargetsAndStatus) {
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(false, false);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon not available: " << e.what();
  }
  std::string dd = shared_dir() + "/data/overlaybd";
  std::string lsmt_len = std::to_string(3334144 / 512);
  auto r = d->udm({"create", "zb", "--table", "0 " + lsmt_len + " zfile " + dd + "/base.zstd.zfile"});
  ASSERT_TRUE(r.ok()) << r.describe();
  // A layer given as a udm device name (the zfile device above).
  r = d->udm({"create", "stack", "--table", "0 131072 lsmt zb " + dd + "/l2.lsmt " + dd + "/l3.lsmt"});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = d->udm({"status", "stack"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("lsmt 3 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" ro"), std::string::npos) << r.out;
  r = d->udm({"status", "zb"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("zfile zstd 4096 814"), std::string::npos) << r.out;
  // Refusals: bad chain, length beyond the virtual size, not a ZFile.
  r = d->udm({"create", "bad1", "--table", "0 131072 lsmt " + dd + "/base.lsmt " + dd + "/l3.lsmt"});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("parent_uuid"), std::string::npos) << r.describe();
  r = d->udm({"create", "bad2", "--table", "0 131073 lsmt " + dd + "/base.lsmt"});
  EXPECT_FALSE(r.ok());
  r = d->udm({"create", "bad3", "--table", "0 8 zfile " + dd + "/base.lsmt"});
  EXPECT_FALSE(r.ok());
  ASSERT_TRUE(d->udm({"remove", "stack"}).ok());
  ASSERT_TRUE(d->udm({"remove", "zb"}).ok());
  EXPECT_EQ(d->stop(), 0);
}

}  // namespace
}  // namespace udm::test
