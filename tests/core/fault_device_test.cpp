#include <algorithm>
#include <gtest/gtest.h>

#include "io/fault_device.h"

using namespace udm;

namespace {
std::vector<uint8_t> bytes(size_t n, uint8_t v) { return std::vector<uint8_t>(n, v); }
}  // namespace

TEST(FaultDevice, UnflushedWritesAreLostOnPowerCut) {
  FaultDevice d(8192);
  ASSERT_TRUE(d.write(0, bytes(512, 1)).ok());
  ASSERT_TRUE(d.flush().ok());
  ASSERT_TRUE(d.write(512, bytes(512, 2)).ok());
  ASSERT_TRUE(d.write(1024, bytes(512, 3), /*fua=*/true).ok());
  std::vector<uint8_t> b(512);
  ASSERT_TRUE(d.read(512, b).ok());
  EXPECT_EQ(b, bytes(512, 2));  // reads see the cache
  d.power_cut();
  EXPECT_TRUE(d.dead());
  EXPECT_EQ(d.read(0, b).code(), EIO);
  auto img = d.durable_image();
  EXPECT_EQ(img[0], 1);
  EXPECT_EQ(img[512], 0);   // unflushed: dropped
  EXPECT_EQ(img[1024], 3);  // FUA: durable
  d.revive();
  ASSERT_TRUE(d.read(512, b).ok());
  EXPECT_EQ(b, bytes(512, 0));
}

TEST(FaultDevice, CutAfterNWrites) {
  FaultDevice d(4096);
  d.cut_after_writes(2);
  EXPECT_TRUE(d.write(0, bytes(512, 1)).ok());
  EXPECT_TRUE(d.trim(512, 512).ok());
  EXPECT_EQ(d.write(1024, bytes(512, 1)).code(), EIO);
  EXPECT_TRUE(d.dead());
  EXPECT_EQ(d.write_ops(), 2u);
  EXPECT_EQ(d.durable_image(), bytes(4096, 0));
}

TEST(FaultDevice, SurvivalKeepsASubsetOfUnflushedWrites) {
  int kept = 0;
  for (uint64_t seed = 0; seed < 40; seed++) {
    FaultDevice d(4096);
    d.set_unflushed_survival(0.5, seed);
    ASSERT_TRUE(d.write(0, bytes(512, 9)).ok());
    d.power_cut();
    kept += d.durable_image()[0] == 9;
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, 40);
}

// A disk may persist part of a write that spans several 4 KiB units: in
// survival mode each aligned unit is drawn alone (one write op for the cut
// counter). Within one unit a write survives whole or not at all.
TEST(FaultDevice, ALongUnflushedWriteCanSurviveInPart) {
  int torn = 0, whole = 0, none = 0;
  for (uint64_t seed = 0; seed < 40; seed++) {
    FaultDevice d(4 * 4096);
    d.set_unflushed_survival(0.5, seed);
    ASSERT_TRUE(d.write(2048, bytes(3 * 4096, 7)).ok());  // units 0 (half), 1, 2, 3 (half)
    ASSERT_TRUE(d.write(4096 + 100, bytes(200, 8)).ok());  // inside unit 1
    EXPECT_EQ(d.write_ops(), 2u);
    d.power_cut();
    auto img = d.durable_image();
    int units = 0;
    for (uint64_t u = 0; u < 4; u++) {
      const uint64_t lo = std::max<uint64_t>(u * 4096, 2048), hi = std::min<uint64_t>((u + 1) * 4096, 2048 + 3 * 4096);
      // The unit's piece of the long write is all there or all absent (the
      // small write over unit 1 may cover some of it).
      bool all = true, any = false;
      for (uint64_t b = lo; b < hi; b++) {
        if (b >= 4096 + 100 && b < 4096 + 300) continue;
        all &= img[b] == 7;
        any |= img[b] == 7;
      }
      EXPECT_EQ(all, any) << "seed " << seed << " unit " << u;
      units += all;
    }
    EXPECT_TRUE(img[4096 + 100] == 8 ? img[4096 + 299] == 8 : img[4096 + 299] != 8) << "seed " << seed;
    torn += units > 0 && units < 4;
    whole += units == 4;
    none += units == 0;
  }
  EXPECT_GT(torn, 0);
  EXPECT_GT(whole + none, 0);
}

TEST(FaultDevice, InjectedErrors) {
  FaultDevice d(4096);
  d.fail_reads(1024, 512, EIO, 1);
  d.fail_writes(0, 512, ENOSPC);
  std::vector<uint8_t> b(512);
  EXPECT_EQ(d.read(1024, b).code(), EIO);
  EXPECT_TRUE(d.read(1024, b).ok());  // count exhausted
  EXPECT_EQ(d.write(256, b).code(), ENOSPC);
  EXPECT_TRUE(d.write(512, b).ok());
  d.clear_failures();
  EXPECT_TRUE(d.write(0, b).ok());
  EXPECT_EQ(d.read(4000, b).code(), EINVAL);
}
