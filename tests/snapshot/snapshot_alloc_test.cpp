// The snapshot targets' allocation maps: a fresh snapshot of a sparse origin
// is as sparse as the origin (its unmapped chunks are the origin's map, depth
// 2), exceptions are the COW's map (depth 1: data, or a hole where a whole
// chunk was zeroed on a file COW), and snapshot-origin passes the origin's
// map through. Every run said zero or hole reads as zeroes.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "common/sys_util.h"
#include "io/file_device.h"
#include "snapshot/snapshot.h"
#include "snapshot_test_util.h"

using namespace udm;
using namespace udm::snapshot;
using namespace udm::snapshot::test;
using namespace udm::test;

namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1 << 20, kSize = 8 * kMiB;

std::string str(const AllocMap& m) {
  std::string s;
  for (auto& r : m) s += fmt::format("{}{}/{} ", "DZH"[static_cast<int>(r.kind)], r.length, r.depth);
  return s;
}

// The whole map (asking again after prefixes); every zero/hole run is checked to read as zeroes.
std::string full_map(BlockDevice& d) {
  AllocMap all, m;
  uint64_t pos = 0;
  while (pos < d.size()) {
    Status s = d.allocation(pos, d.size() - pos, m);
    if (!s.ok()) return s.to_string();
    for (auto& r : m) {
      if (r.kind != AllocKind::kData) {
        std::vector<uint8_t> got(r.length);
        if (!d.read(pos, got).ok() || got != std::vector<uint8_t>(r.length, 0))
          return fmt::format("run at {} does not read as zeroes", pos);
      }
      add_alloc_run(all, r.length, r.kind, r.depth);
      pos += r.length;
    }
  }
  return str(all);
}

bool fs_reports_holes(const std::string& dir_file) {
  make_sparse_file(dir_file, kMiB);
  auto f = FileDevice::open(dir_file, {.writable = true});
  if (!f.ok() || !(*f)->write(64 * kKiB, std::vector<uint8_t>(4096, 1)).ok()) return false;
  AllocMap m;
  return (*f)->allocation(0, kMiB, m).ok() && m.size() == 3;
}

}  // namespace

TEST(SnapshotAllocation, FreshSnapshotOfASparseOriginIsSparse) {
  TempDir tmp;
  if (!fs_reports_holes(tmp.file("probe"))) GTEST_SKIP() << "the temp directory's file system does not report holes";
  std::string op = tmp.file("origin.img"), cp = tmp.file("cow.img");
  make_sparse_file(op, kSize);
  make_sparse_file(cp, 2 * kSize);
  auto origin = FileDevice::open(op, {.writable = true});
  auto cow = FileDevice::open(cp, {.writable = true});
  ASSERT_TRUE(origin.ok() && cow.ok());
  ASSERT_TRUE((*origin)->write(kMiB, random_bytes(kMiB, 1)).ok());
  MapResolver res;
  res.devs["origin"] = *origin;
  res.devs["cow"] = *cow;
  auto o = make("snapshot-origin", {"origin"}, kSize, &res);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kSize, &res);
  ASSERT_TRUE(o.ok() && s.ok()) << o.status().to_string() << s.status().to_string();
  (*o)->resume();
  (*s)->resume();
  BlockDevice& snap = **s;
  BlockDevice& orig = **o;
  // Fresh: the origin's holes, its data one layer down.
  EXPECT_EQ(full_map(snap), fmt::format("H{}/0 D{}/2 H{}/0 ", kMiB, kMiB, 6 * kMiB));
  EXPECT_EQ(full_map(orig), fmt::format("H{}/0 D{}/0 H{}/0 ", kMiB, kMiB, 6 * kMiB));
  // A write to the snapshot: an exception (top layer); a whole chunk zeroed
  // with unmap over data: an exception whose COW chunk is a hole.
  ASSERT_TRUE(snap.write(4 * kMiB, random_bytes(4096, 2)).ok());
  ASSERT_TRUE(snap.write_zeroes(kMiB, 4096, false, true).ok());
  EXPECT_EQ(full_map(snap), fmt::format("H{}/0 D{}/2 H{}/0 D4096/1 H{}/0 ", kMiB + 4096, kMiB - 4096, 2 * kMiB,
                                        4 * kMiB - 4096));
  // An origin write over a hole: the snapshot saved the old (zero) chunks,
  // now exceptions holding zeroes as data; the origin has data there.
  ASSERT_TRUE(orig.write(6 * kMiB, random_bytes(64 * kKiB, 3)).ok());
  EXPECT_EQ(full_map(snap), fmt::format("H{}/0 D{}/2 H{}/0 D4096/1 H{}/0 D{}/1 H{}/0 ", kMiB + 4096, kMiB - 4096,
                                        2 * kMiB, 2 * kMiB - 4096, 64 * kKiB, 2 * kMiB - 64 * kKiB));
  EXPECT_EQ(full_map(orig), fmt::format("H{}/0 D{}/0 H{}/0 D{}/0 H{}/0 ", kMiB, kMiB, 4 * kMiB, 64 * kKiB,
                                        2 * kMiB - 64 * kKiB));
  // Unaligned questions are clipped exactly.
  AllocMap m;
  ASSERT_TRUE(snap.allocation(kMiB + 4000, 200, m).ok());
  EXPECT_EQ(str(m), "H96/0 D104/2 ");
}

// The re-check that replaces chunk locks: while the origin's data chunks are
// punched to holes (each punch first saves the old chunk into the snapshot),
// every zero or hole run the snapshot reports must read as zeroes from the
// snapshot - asking the origin after a punch, without the re-check, would
// report the punched hole for a chunk the snapshot still reads as data.
TEST(SnapshotAllocation, OriginPunchesRacingTheMapNeverShowAsSnapshotHoles) {
  TempDir tmp;
  if (!fs_reports_holes(tmp.file("probe"))) GTEST_SKIP() << "the temp directory's file system does not report holes";
  constexpr uint64_t kOrigin = 4 * kMiB;
  std::string op = tmp.file("origin.img"), cp = tmp.file("cow.img");
  write_file(op, random_bytes(kOrigin, 5));  // all data
  make_sparse_file(cp, 2 * kOrigin);
  auto origin = FileDevice::open(op, {.writable = true});
  auto cow = FileDevice::open(cp, {.writable = true});
  ASSERT_TRUE(origin.ok() && cow.ok());
  MapResolver res;
  res.devs["origin"] = *origin;
  res.devs["cow"] = *cow;
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &res);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &res);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  BlockDevice& snap = **s;
  BlockDevice& orig = **o;
  std::atomic<bool> stop{false};
  std::thread puncher([&] {
    // Every chunk in a scattered order, 4 KiB each, unmapped.
    for (uint64_t i = 0; i < kOrigin / 4096 && !stop; i++) {
      uint64_t c = (i * 193) % (kOrigin / 4096);
      EXPECT_TRUE(orig.write_zeroes(c * 4096, 4096, false, true).ok());
    }
  });
  int maps = 0;
  uint64_t hole_bytes_seen = 0;
  while (maps < 2000) {
    AllocMap m;
    uint64_t pos = 0;
    bool bad = false;
    while (pos < kOrigin && !bad) {
      ASSERT_TRUE(snap.allocation(pos, kOrigin - pos, m).ok());
      for (auto& r : m) {
        if (r.kind != AllocKind::kData) {
          hole_bytes_seen += r.length;
          std::vector<uint8_t> got(r.length);
          ASSERT_TRUE(snap.read(pos, got).ok());
          if (got != std::vector<uint8_t>(r.length, 0)) {
            ADD_FAILURE() << "a " << (r.kind == AllocKind::kHole ? "hole" : "zero") << " run at " << pos << "+"
                          << r.length << " reads data from the snapshot";
            bad = true;
            break;
          }
        }
        pos += r.length;
      }
    }
    maps++;
    if (bad) break;
    AllocMap om;
    ASSERT_TRUE(orig.allocation(0, kOrigin, om).ok());
    if (om.size() == 1 && om[0].kind == AllocKind::kHole) break;  // every chunk punched
  }
  stop = true;
  puncher.join();
  // The snapshot never saw a hole (its view is the old, all-data origin) ...
  EXPECT_EQ(hole_bytes_seen, 0u);
  // ... while the origin did become holes under it.
  AllocMap om;
  ASSERT_TRUE(orig.allocation(0, kOrigin, om).ok());
  EXPECT_NE(om[0].kind, AllocKind::kData);
  EXPECT_GT(maps, 1);
  std::vector<uint8_t> all(kOrigin);
  ASSERT_TRUE(snap.read(0, all).ok());
  EXPECT_EQ(all, random_bytes(kOrigin, 5));
}
