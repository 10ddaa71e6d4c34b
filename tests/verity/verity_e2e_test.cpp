// End to end: an ext4 image (mkfs.ext4 -d over a tree of files) formatted
// with veritysetup, served by `udm daemon --verity-certs C
// --require-signatures` as a verity device whose root hash is signed with the
// openssl command; an unsigned table is refused; the signed one is mounted
// read-only over loop on the FUSE export and every file is compared with the
// tree; then a corrupted block of the image shows up as EIO and status C.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>

#include "common/sys_util.h"

using namespace udm::test;

namespace {

std::string ok(const CmdResult& r) { return r.ok() ? std::string() : r.describe(); }

TEST(VerityE2E, SignedExt4ImageMountedThroughFuse) {
  if (!is_root() || !have_tool("mkfs.ext4") || !have_tool("losetup") || !have_tool("veritysetup") ||
      !have_tool("openssl"))
    GTEST_SKIP() << "needs root, mkfs.ext4, losetup, veritysetup, openssl";
  TempDir t;
  std::string tree = t.file("tree"), img = t.file("ext4.img"), hash = t.file("ext4.hash");
  ::mkdir(tree.c_str(), 0755);
  ::mkdir((tree + "/sub").c_str(), 0755);
  std::map<std::string, std::string> sums;
  for (int i = 0; i < 20; i++) {
    std::string name = (i % 2 ? "sub/f" : "f") + std::to_string(i);
    write_file(tree + "/" + name, random_bytes(1000 + i * 40000, 50 + i));
    sums[name] = sha256_file(tree + "/" + name);
  }
  ASSERT_EQ(ok(sh("truncate -s 24M " + img + " && mkfs.ext4 -q -F -d " + tree + " " + img)), "");
  auto f = run({"veritysetup", "format", img, hash});
  ASSERT_TRUE(f.ok()) << f.describe();
  auto p = f.out.find("Root hash:");
  ASSERT_NE(p, std::string::npos);
  p = f.out.find_first_not_of(" \t", p + 10);
  std::string root = f.out.substr(p, 64);
  // Sign the root hash (hex, no newline) as the kernel docs and systemd do.
  ASSERT_EQ(ok(sh("cd " + t.path() + " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                  "-days 30 -subj /CN=udm-e2e -keyout k.pem -out c.crt 2>&1 && printf %s " + root +
                  " > root.hex && openssl smime -sign -nocerts -noattr -binary -in root.hex -inkey k.pem -signer "
                  "c.crt -outform der -out root.p7s")),
            "");
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false, {"--verity-certs", t.file("c.crt"), "--require-signatures"});
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  auto unsigned_table = run({udm_bin(), "verity-table", img, hash, root});
  ASSERT_TRUE(unsigned_table.ok()) << unsigned_table.describe();
  auto refused = d->udm({"create", "v0", "--table", unsigned_table.out});
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.err.find("require"), std::string::npos) << refused.describe();
  auto table = run({udm_bin(), "verity-table", img, hash, root, "--root-hash-signature", t.file("root.p7s")});
  ASSERT_TRUE(table.ok()) << table.describe();
  ASSERT_EQ(ok(d->udm({"create", "v", "--table", table.out})), "");
  ASSERT_TRUE(wait_for_file(d->fuse_path("v")));
  auto st = d->udm({"status", "v"});
  EXPECT_NE(st.out.find("verity V - "), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("sig=verified"), std::string::npos) << st.out;
  std::string mnt = t.file("mnt");
  ::mkdir(mnt.c_str(), 0755);
  {
    LoopDevice loop(d->fuse_path("v"), true);
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    Mount m(loop.device(), mnt, "ro,noload");
    ASSERT_TRUE(m.ok()) << m.error();
    for (auto& [name, sum] : sums) EXPECT_EQ(sha256_file(mnt + "/" + name), sum) << name;
    ASSERT_TRUE(m.unmount());
  }
  EXPECT_EQ(sha256_file(d->fuse_path("v")), sha256_file(img)) << "the whole device reads as the image";
  // Corrupt one data block under the live device: that block fails, status C.
  ASSERT_EQ(ok(sh("printf X | dd of=" + img + " bs=1 seek=$((4096*4000+9)) conv=notrunc status=none")), "");
  auto rd = sh("dd if=" + d->fuse_path("v") + " of=/dev/null bs=4096 skip=4000 count=1 iflag=direct 2>&1");
  EXPECT_FALSE(rd.ok()) << rd.describe();
  auto rd2 = sh("dd if=" + d->fuse_path("v") + " of=/dev/null bs=4096 skip=3999 count=1 iflag=direct 2>&1");
  EXPECT_TRUE(rd2.ok()) << rd2.describe();
  st = d->udm({"status", "v"});
  EXPECT_NE(st.out.find("verity C - "), std::string::npos) << st.out;
  ASSERT_TRUE(d->udm({"remove", "v"}).ok());
  EXPECT_EQ(d->stop(), 0);
}

}  // namespace
