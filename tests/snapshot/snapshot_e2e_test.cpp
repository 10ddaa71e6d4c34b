// Tools through the udm binary: fiemap on a real preallocated file on ext4.
#include <gtest/gtest.h>

#include <sstream>

#include "common/sys_util.h"

using namespace udm::test;

TEST(SnapshotE2E, FiemapOnExt4) {
  TempDir t;
  ASSERT_TRUE(sh("truncate -s 64M " + t.file("fs.img") + " && mkfs.ext4 -q " + t.file("fs.img")).ok());
  LoopDevice loop(t.file("fs.img"));
  ASSERT_FALSE(loop.device().empty()) << loop.error();
  ASSERT_TRUE(sh("mkdir -p " + t.file("mnt")).ok());
  Mount m(loop.device(), t.file("mnt"));
  ASSERT_TRUE(m.error().empty()) << m.error();
  std::string f = t.file("mnt") + "/cow.img";
  ASSERT_TRUE(sh("fallocate -l 4M " + f).ok());
  auto r = run({udm_bin(), "fiemap", f});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("unwritten"), std::string::npos) << r.describe();
  ASSERT_TRUE(sh("dd if=/dev/urandom of=" + f + " bs=1M count=4 conv=notrunc status=none").ok());
  r = run({udm_bin(), "fiemap", f});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  // The table maps the file: reading the device ranges gives the file's bytes.
  uint64_t total = 0;
  std::istringstream in(r.out);
  std::string line;
  std::string cat;
  while (std::getline(in, line)) {
    std::istringstream l(line);
    uint64_t start, len, phys;
    std::string type, dev;
    l >> start >> len >> type >> dev >> phys;
    EXPECT_EQ(type, "linear");
    EXPECT_EQ(start, total);
    total += len;
    cat += "dd if=" + dev + " bs=512 skip=" + std::to_string(phys) + " count=" + std::to_string(len) +
           " status=none; ";
  }
  EXPECT_EQ(total, 8192u);
  auto a = sh("(" + cat + ") | sha256sum | cut -d' ' -f1");
  auto b = sh("sha256sum " + f + " | cut -d' ' -f1");
  EXPECT_EQ(a.out, b.out);
}

TEST(SnapshotE2E, CowSizeAndInspect) {
  auto r = run({udm_bin(), "cow-size", "--chunk-size", "4096", "--changed-chunks", "256"});
  EXPECT_EQ(r.out, std::to_string(259 * 4096) + "\n") << r.describe();
  r = run({udm_bin(), "cow-size", "--chunk-size", "4K", "--changed-bytes", "4097"});
  EXPECT_EQ(r.out, std::to_string(4 * 4096) + "\n") << r.describe();
}
