// The writer's round trip over the shared OTA pairs (../shared/data/ota-small),
// both versions, every compression: long under sanitizers, so labelled nosan
// (the same code runs under ASan on smaller images in acow_test.cpp).
#include <gtest/gtest.h>

#include "android_cow/acow_test_util.h"

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

}  // namespace
