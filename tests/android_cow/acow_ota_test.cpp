// The writer's round trip over the shared OTA pairs (../shared/data/ota-small),
// both versions, every compression: long under sanitizers, so labelled nosan
// (the same code runs under ASan on smaller images in acow_test.cpp).
#include <gtest/gtest.h>

#include "android_cow/acow_test_util.h"
#include "common/sys_util.h"

using namespace udm;
using namespace udm::acow;
using namespace udm::acow::test;

namespace {

TEST(AndroidCowWriter, OtaPairs) {
  const std::string dir = ota_dir();
  if (!std::filesystem::exists(dir + "/old.img.zst")) GTEST_SKIP() << "no " << dir;
  auto old_img = load_zst(dir + "/old.img.zst");
  for (const char* n : {"new-inplace", "new-rebuilt"}) {
    auto nw = load_zst(dir + "/" + std::string(n) + ".img.zst");
    ASSERT_EQ(nw.size(), old_img.size());
    for (int v : {2, 3})
      for (Comp c : {Comp::None, Comp::Gz, Comp::Brotli, Comp::Lz4, Comp::Zstd}) {
        // Every compression on one pair, zstd on the other (CI time).
        if ((c != Comp::Zstd || v != 3) && std::string(n) == "new-rebuilt") continue;
        WriterOptions o;
        o.version = v;
        o.compression = c;
        o.unit = v == 3 ? 65536 : 4096;
        round_trip(old_img, nw, o, fmt::format("{} v{} {}", n, v, comp_name(c)));
      }
  }
}

// The demo's pair (scripts/demo-update): two ext4 images of a small system
// tree, with changed, added, moved and deleted files, made by mkfs.ext4 -d.
TEST(AndroidCowWriter, DemoExt4Pair) {
  using udm::test::sh;
  if (!udm::test::have_tool("mkfs.ext4")) GTEST_SKIP() << "mkfs.ext4 missing (scripts/setup)";
  udm::test::TempDir tmp;
  const std::string w = tmp.path();
  auto r = sh("set -e; cd '" + w + R"('
mkdir -p tree/usr/bin tree/etc tree/usr/lib
for i in $(seq 1 24); do head -c $((i * 13000)) /dev/urandom > tree/usr/bin/tool$i; done
for i in $(seq 1 12); do seq 1 $((i * 20000)) > tree/usr/lib/lib$i.txt; done
echo VERSION=1 > tree/etc/os-release; seq 1 50000 > tree/etc/services
U=6e0c6f1a-0b0b-4c4c-9d9d-000000000001
mkfs.ext4 -q -F -U $U -E lazy_itable_init=0,lazy_journal_init=0 -d tree old.img 32M
echo VERSION=2 > tree/etc/os-release
for i in 3 7 11; do dd if=/dev/urandom of=tree/usr/bin/tool$i bs=4096 count=3 conv=notrunc status=none; done
head -c 3000000 /dev/urandom > tree/usr/bin/newtool
mv tree/etc/services tree/usr/lib/services
rm tree/usr/bin/tool20 tree/usr/lib/lib5.txt
mkfs.ext4 -q -F -U $U -E lazy_itable_init=0,lazy_journal_init=0 -d tree new.img 32M
)");
  ASSERT_TRUE(r.ok()) << r.describe();
  auto old_img = udm::test::read_file(w + "/old.img");
  auto nw = udm::test::read_file(w + "/new.img");
  ASSERT_EQ(old_img.size(), nw.size());
  ASSERT_NE(old_img, nw);
  for (int v : {2, 3})
    for (Comp c : {Comp::None, Comp::Gz, Comp::Brotli, Comp::Lz4, Comp::Zstd}) {
      WriterOptions o;
      o.version = v;
      o.compression = c;
      o.unit = v == 3 ? 65536 : 4096;
      round_trip(old_img, nw, o, fmt::format("demo ext4 v{} {}", v, comp_name(c)));
    }
}

}  // namespace
