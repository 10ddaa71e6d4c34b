// FaultGrowFile: FaultDevice's crash model (io/fault_model.h) for growable
// files, several files on one FaultDisk losing power together.
#include <gtest/gtest.h>

#include "io/fault_device.h"
#include "io/fault_grow_file.h"

using namespace udm;

namespace {
std::vector<uint8_t> bytes(size_t n, uint8_t v) { return std::vector<uint8_t>(n, v); }
std::vector<uint8_t> cat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
}  // namespace

TEST(FaultGrowFile, UnsyncedWritesAndGrowthAreLostOnPowerCut) {
  FaultGrowFile f;
  ASSERT_TRUE(f.pwrite(0, bytes(512, 1)).ok());
  ASSERT_TRUE(f.sync().ok());
  ASSERT_TRUE(f.pwrite(0, bytes(100, 2)).ok());     // overwrite, unsynced
  ASSERT_TRUE(f.pwrite(1024, bytes(512, 3)).ok());  // growth past a gap, unsynced
  EXPECT_EQ(f.size(), 1536u);
  std::vector<uint8_t> b(512);
  ASSERT_TRUE(f.pread(512, b).ok());
  EXPECT_EQ(b, bytes(512, 0));  // the gap reads as zeros
  ASSERT_TRUE(f.pread(1024, b).ok());
  EXPECT_EQ(b, bytes(512, 3));  // reads see the cache
  f.disk().power_cut();
  EXPECT_TRUE(f.disk().dead());
  EXPECT_EQ(f.pread(0, b).code(), EIO);
  EXPECT_EQ(f.pwrite(0, b).code(), EIO);
  EXPECT_EQ(f.sync().code(), EIO);
  EXPECT_EQ(f.durable(), bytes(512, 1));  // the size at the last sync, its contents
  f.disk().revive();
  EXPECT_EQ(f.size(), 512u);
  ASSERT_TRUE(f.pread(0, b).ok());
  EXPECT_EQ(b, bytes(512, 1));
  ASSERT_TRUE(f.pread(512, b).ok());
  EXPECT_EQ(b, bytes(512, 0));  // past the end
}

// cut_after_writes counts pwrite() calls over every file of the disk, not
// syncs; the cut fails that write and all I/O after it on every file.
TEST(FaultGrowFile, CutAfterNWritesCountsWritesOfEveryFileNotSyncs) {
  auto disk = std::make_shared<FaultDisk>();
  FaultGrowFile a(disk), b(disk);
  disk->cut_after_writes(3);
  EXPECT_TRUE(a.pwrite(0, bytes(512, 1)).ok());
  EXPECT_TRUE(a.sync().ok());
  EXPECT_TRUE(b.pwrite(0, bytes(512, 2)).ok());
  EXPECT_TRUE(b.sync().ok());
  EXPECT_TRUE(a.pwrite(512, bytes(512, 3)).ok());
  EXPECT_TRUE(a.sync().ok());
  EXPECT_EQ(disk->write_ops(), 3u);
  EXPECT_EQ(disk->flushes(), 3u);
  EXPECT_EQ(b.pwrite(512, bytes(512, 4)).code(), EIO);
  EXPECT_TRUE(disk->dead());
  std::vector<uint8_t> x(512);
  EXPECT_EQ(a.pread(0, x).code(), EIO);
  EXPECT_EQ(b.sync().code(), EIO);
  EXPECT_EQ(disk->write_ops(), 3u);
  EXPECT_EQ(a.durable(), cat(bytes(512, 1), bytes(512, 3)));
  EXPECT_EQ(b.durable(), bytes(512, 2));
}

// Survival mode: each unsynced write survives or not; one that survives
// past the synced size extends the durable size (the gap reads as zeros).
TEST(FaultGrowFile, SurvivalKeepsASubsetAndItsGrowth) {
  int kept = 0, dropped = 0;
  for (uint64_t seed = 0; seed < 40; seed++) {
    FaultGrowFile f;
    f.disk().set_unflushed_survival(0.5, seed);
    ASSERT_TRUE(f.pwrite(0, bytes(512, 1)).ok());
    ASSERT_TRUE(f.sync().ok());
    ASSERT_TRUE(f.pwrite(1024, bytes(512, 9)).ok());
    f.disk().power_cut();
    auto d = f.durable();
    if (d.size() == 512) {
      EXPECT_EQ(d, bytes(512, 1));
      dropped++;
    } else {
      EXPECT_EQ(d, cat(cat(bytes(512, 1), bytes(512, 0)), bytes(512, 9)));
      kept++;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(dropped, 0);
}

// durable() before a cut is what the cut then leaves, for every file of the
// disk (the same draws in the same order), and a FaultDevice on the same
// disk loses power with the files.
TEST(FaultGrowFile, DurableBeforeTheCutIsWhatTheCutLeaves) {
  for (uint64_t seed = 0; seed < 20; seed++) {
    auto disk = std::make_shared<FaultDisk>();
    disk->set_unflushed_survival(0.5, seed);
    FaultGrowFile a(disk), b(disk);
    FaultDevice dev(disk, bytes(4096, 0));
    for (int k = 0; k < 6; k++) {
      ASSERT_TRUE(a.pwrite(512 * k, bytes(512, 10 + k)).ok());
      ASSERT_TRUE(b.pwrite(512 * k, bytes(512, 20 + k)).ok());
      ASSERT_TRUE(dev.write(512 * k, bytes(512, 30 + k)).ok());
    }
    auto pa = a.durable(), pb = b.durable(), pd = dev.durable_image();
    disk->power_cut();
    EXPECT_TRUE(dev.dead());
    EXPECT_EQ(a.durable(), pa) << seed;
    EXPECT_EQ(b.durable(), pb) << seed;
    EXPECT_EQ(dev.durable_image(), pd) << seed;
  }
}
