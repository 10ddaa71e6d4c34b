// The update target's allocation map over a sparse system file: blocks the
// update leaves alone are the system file's map (holes stay holes), blocks a
// v1 ZERO operation writes are zero (before and after the copy-back applied
// them), every other changed block is data; v0 (no zero operation) reports
// its changed blocks as data. Every zero/hole run reads as zeroes.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "common/sys_util.h"
#include "io/file_device.h"
#include "io/memory_device.h"
#include "update/differ.h"
#include "update_util.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;

namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1 << 20, kSize = 4 * kMiB;

std::string map_of(BlockDevice& d) {
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
  std::string s;
  for (auto& r : all) s += fmt::format("{}{} ", "DZH"[static_cast<int>(r.kind)], r.length);
  return s;
}

// old: data in [0, 1M), zeroes after. new: two blocks at 256K zeroed, a block
// at 512K and one at 2M changed.
struct Pair {
  std::vector<uint8_t> old_img, new_img;
  Pair() {
    old_img.assign(kSize, 0);
    auto d = random_bytes(kMiB, 1);
    std::copy(d.begin(), d.end(), old_img.begin());
    new_img = old_img;
    std::fill(new_img.begin() + 256 * kKiB, new_img.begin() + 264 * kKiB, 0);
    auto a = random_bytes(4096, 2), b = random_bytes(4096, 3);
    std::copy(a.begin(), a.end(), new_img.begin() + 512 * kKiB);
    std::copy(b.begin(), b.end(), new_img.begin() + 2 * kMiB);
  }
};

// The system file written sparse (only [0, 1M)).
Result<DevicePtr> sparse_sys(TempDir& t, const std::vector<uint8_t>& old_img) {
  std::string p = t.file("sys.img");
  make_sparse_file(p, old_img.size());
  UDM_ASSIGN_OR_RETURN(auto f, FileDevice::open(p, {.writable = true}));
  UDM_TRY(f->write(0, std::span<const uint8_t>(old_img.data(), kMiB)));
  AllocMap m;
  UDM_TRY(f->allocation(0, kSize, m));
  if (m.size() != 2) return Status::Error(EOPNOTSUPP, "no holes");
  return DevicePtr(f);
}

}  // namespace

TEST(UpdateAllocation, V1ZeroOperationsAndUnchangedHolesOfASparseSystemFile) {
  TempDir t;
  Pair p;
  write_file(t.file("old"), p.old_img);
  write_file(t.file("new"), p.new_img);
  DiffV1Options o;
  o.progress = false;
  o.level = 3;
  auto st = make_diff_v1(t.file("old"), t.file("new"), t.file("diff"), o);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  EXPECT_EQ(st->zero, 2u);
  auto sys = sparse_sys(t, p.old_img);
  if (!sys.ok() && sys.status().code() == EOPNOTSUPP) GTEST_SKIP() << "the temp directory's file system does not report holes";
  ASSERT_TRUE(sys.ok()) << sys.status().to_string();
  MapResolver r;
  r.devs["sys"] = *sys;
  r.devs["diff"] = std::make_shared<MemoryDevice>(read_file(t.file("diff")), false);
  const std::string want = fmt::format("D{} Z{} D{} H{} D4096 H{} ", 256 * kKiB, 8 * kKiB, kMiB - 264 * kKiB, kMiB,
                                       2 * kMiB - 4096);
  {
    auto u = make_update(r, kSize, false);
    ASSERT_TRUE(u.ok()) << u.status().to_string();
    (*u)->resume();
    EXPECT_EQ(map_of(**u), want);
  }
  // After the copy-back applied every operation: the same map (the ZERO
  // blocks are read from the system file now, and still reported zero).
  auto u = make_update(r, kSize, true);
  ASSERT_TRUE(u.ok()) << u.status().to_string();
  (*u)->resume();
  wait_copied(**u);
  auto s = (*u)->status();
  EXPECT_EQ(s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1));
  EXPECT_EQ(map_of(**u), want);
  std::vector<uint8_t> got(kSize);
  ASSERT_TRUE((*u)->read(0, got).ok());
  EXPECT_EQ(got, p.new_img);
}

TEST(UpdateAllocation, V0ChangedBlocksAreDataUnchangedHolesStay) {
  TempDir t;
  Pair p;
  write_file(t.file("old"), p.old_img);
  write_file(t.file("new"), p.new_img);
  DiffOptions o;
  o.progress = false;
  auto st = make_diff(t.file("old"), t.file("new"), t.file("diff"), o);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  auto sys = sparse_sys(t, p.old_img);
  if (!sys.ok() && sys.status().code() == EOPNOTSUPP) GTEST_SKIP() << "the temp directory's file system does not report holes";
  ASSERT_TRUE(sys.ok()) << sys.status().to_string();
  MapResolver r;
  r.devs["sys"] = *sys;
  r.devs["diff"] = std::make_shared<MemoryDevice>(read_file(t.file("diff")), false);
  auto u = make_update(r, kSize, false);
  ASSERT_TRUE(u.ok()) << u.status().to_string();
  (*u)->resume();
  EXPECT_EQ(map_of(**u), fmt::format("D{} H{} D4096 H{} ", kMiB, kMiB, 2 * kMiB - 4096));
}
