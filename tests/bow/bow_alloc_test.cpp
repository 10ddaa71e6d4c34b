// bow's allocation map: blocks free in the filesystem's view are holes
// (state 0: trimmed or zeroed with unmap; state 1: the masked blocks, bow's
// own copies in free space included), written blocks are data again; in
// state 2 the device's own map (a file: the holes punched in state 0).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "bow_test_util.h"
#include "common/sys_util.h"
#include "io/file_device.h"

using namespace udm;
using namespace udm::bow;
using namespace udm::bow::test;

namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1 << 20, kSize = 4 * kMiB;

// The map (asking again after prefixes) as "D<len> H<len> ..."; every
// zero/hole run is checked to read as zeroes.
std::string map_of(BlockDevice& d, uint64_t off, uint64_t len, uint64_t* hole_bytes = nullptr) {
  AllocMap all, m;
  uint64_t pos = off;
  while (pos < off + len) {
    Status s = d.allocation(pos, off + len - pos, m);
    if (!s.ok()) return s.to_string();
    for (auto& r : m) {
      if (r.kind != AllocKind::kData) {
        std::vector<uint8_t> got(r.length);
        if (!d.read(pos, got).ok() || got != std::vector<uint8_t>(r.length, 0))
          return fmt::format("run at {} does not read as zeroes", pos);
        if (hole_bytes) *hole_bytes += r.length;
      }
      add_alloc_run(all, r.length, r.kind);
      pos += r.length;
    }
  }
  std::string s;
  for (auto& r : all) s += fmt::format("{}{} ", "DZH"[static_cast<int>(r.kind)], r.length);
  return s;
}

}  // namespace

TEST(BowAllocation, FreeSpaceIsAHoleInEveryState) {
  udm::test::TempDir tmp;
  std::string p = tmp.file("dev.img");
  udm::test::write_file(p, pattern(kSize, 1));
  auto f = FileDevice::open(p, {.writable = true});
  ASSERT_TRUE(f.ok());
  BowOptions o;
  auto t = BowTarget::create(*f, kSize, o);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  BowTarget& b = **t;
  EXPECT_EQ(map_of(b, 0, kSize), fmt::format("D{} ", kSize));
  // State 0: a zero-out that may unmap frees [1M, 3M); a write takes a block back.
  ASSERT_TRUE(b.write_zeroes(kMiB, 2 * kMiB, false, true).ok());
  ASSERT_TRUE(b.write(2 * kMiB, pattern(4096, 2)).ok());
  const std::string state0 = fmt::format("D{} H{} D4096 H{} D{} ", kMiB, kMiB, kMiB - 4096, kMiB);
  EXPECT_EQ(map_of(b, 0, kSize), state0);
  // Unaligned and partial questions are clipped exactly.
  AllocMap m;
  ASSERT_TRUE(b.allocation(kMiB - 100, 300, m).ok());
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].length, 100u);
  EXPECT_EQ(m[1].kind, AllocKind::kHole);
  // State 1: the live block 0 moves into free space and stays a hole there;
  // a write into free space is data; a write over an in-use block backs it
  // up into free space (a hole too).
  ASSERT_TRUE(b.set_state(1).ok());
  EXPECT_EQ(map_of(b, 0, kSize), state0);
  ASSERT_TRUE(b.write(kMiB + 512 * kKiB, pattern(8192, 3)).ok());
  ASSERT_TRUE(b.write(512 * kKiB, pattern(4096, 4)).ok());
  ASSERT_TRUE(b.flush().ok());
  EXPECT_GT(b.stats().backed_up_bytes, 0u);
  EXPECT_EQ(map_of(b, 0, kSize),
            fmt::format("D{} H{} D8192 H{} D4096 H{} D{} ", kMiB, 512 * kKiB, 512 * kKiB - 8192, kMiB - 4096, kMiB));
  // State 2: pass-through, the device's map: the holes punched in state 0
  // are still there but for the blocks bow used and zeroed (block 0's live
  // copy, the backup, the intent block: a few blocks).
  ASSERT_TRUE(b.set_state(2).ok());
  uint64_t holes = 0;
  std::string m2 = map_of(b, kMiB, 2 * kMiB, &holes);
  EXPECT_EQ(m2.find("does not"), std::string::npos) << m2;
  AllocMap probe;
  ASSERT_TRUE((*f)->allocation(kMiB, 2 * kMiB, probe).ok());
  if (probe.size() == 1 && probe[0].kind == AllocKind::kData)
    GTEST_SKIP() << "the temp directory's file system does not report holes";
  EXPECT_GE(holes, 2 * kMiB - 12288 - 64 * kKiB) << m2;
  EXPECT_EQ(map_of(b, 0, kMiB), fmt::format("D{} ", kMiB));
}
