// BlockDevice::allocation: the public call's checks and normalisation, files
// by SEEK_DATA/SEEK_HOLE, and a table of linear and zero segments passing
// their maps up with the right offsets.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "common/sys_util.h"
#include "device/mapped_device.h"
#include "device/table.h"
#include "io/file_device.h"
#include "io/memory_device.h"
#include "io/resolver.h"

using namespace udm;

namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1 << 20;

std::string str(const AllocMap& m) {
  std::string s;
  for (auto& r : m) s += fmt::format("{}{} ", "DZH"[static_cast<int>(r.kind)], r.length);
  return s;
}

// A test device whose hook answers whatever it is told to.
class Scripted : public MemoryDevice {
 public:
  explicit Scripted(uint64_t size) : MemoryDevice(std::vector<uint8_t>(size, 0), false) {}
  AllocMap answer;

 protected:
  Status do_allocation(uint64_t, uint64_t, AllocMap& out) override {
    out = answer;
    return Status::Ok();
  }
};

// A sparse file: data at [64K,128K) and [1M, 1M+4K), holes elsewhere, 2 MiB.
std::string sparse_file(udm::test::TempDir& tmp) {
  std::string p = tmp.file("sparse.img");
  int fd = ::open(p.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, 2 * kMiB), 0);
  auto a = udm::test::random_bytes(64 * kKiB, 1);
  EXPECT_EQ(::pwrite(fd, a.data(), a.size(), 64 * kKiB), static_cast<ssize_t>(a.size()));
  EXPECT_EQ(::pwrite(fd, a.data(), 4 * kKiB, kMiB), static_cast<ssize_t>(4 * kKiB));
  EXPECT_EQ(::fsync(fd), 0);
  ::close(fd);
  return p;
}

// True when the file system under `path` reports holes (tmpfs, ext4, xfs do).
bool reports_holes(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  off_t d = ::lseek(fd, 0, SEEK_DATA);
  ::close(fd);
  return d > 0;
}

}  // namespace

TEST(Allocation, PublicCallChecksAndNormalises) {
  auto d = std::make_shared<Scripted>(64 * kKiB);
  AllocMap out;
  // Out of range: refused before the hook.
  EXPECT_EQ(d->allocation(60 * kKiB, 8 * kKiB, out).code(), EINVAL);
  EXPECT_EQ(d->allocation(UINT64_MAX, 2, out).code(), EINVAL);
  // Empty range: no runs.
  ASSERT_TRUE(d->allocation(64 * kKiB, 0, out).ok());
  EXPECT_TRUE(out.empty());
  // An empty answer is all data; empty runs vanish, alike neighbours merge,
  // an answer longer than the range is clipped.
  ASSERT_TRUE(d->allocation(0, 4096, out).ok());
  EXPECT_EQ(str(out), "D4096 ");
  d->answer = {{100, AllocKind::kHole, 0}, {0, AllocKind::kData, 0}, {50, AllocKind::kHole, 0},
               {1000, AllocKind::kZero, 0}, {99999, AllocKind::kData, 0}};
  ASSERT_TRUE(d->allocation(0, 4096, out).ok());
  EXPECT_EQ(str(out), "H150 Z1000 D2946 ");
  // A prefix is a valid answer, kept as it is.
  d->answer = {{512, AllocKind::kZero, 0}};
  ASSERT_TRUE(d->allocation(0, 4096, out).ok());
  EXPECT_EQ(str(out), "Z512 ");
  // The default hook: all data.
  MemoryDevice m(std::vector<uint8_t>(8192, 0), false);
  ASSERT_TRUE(m.allocation(1, 8000, out).ok());
  EXPECT_EQ(str(out), "D8000 ");
}

TEST(Allocation, FileHolesAndLinearZeroTable) {
  udm::test::TempDir tmp;
  std::string p = sparse_file(tmp);
  if (!reports_holes(p)) GTEST_SKIP() << "the temp directory's file system does not report holes";
  auto f = FileDevice::open(p);
  ASSERT_TRUE(f.ok());
  AllocMap out;
  ASSERT_TRUE((*f)->allocation(0, 2 * kMiB, out).ok());
  // The file system may allocate in bigger units than 4 KiB, never smaller.
  ASSERT_EQ(out.size(), 5u) << str(out);
  EXPECT_EQ(out[0].kind, AllocKind::kHole);
  EXPECT_EQ(out[0].length, 64 * kKiB);
  EXPECT_EQ(out[1].kind, AllocKind::kData);
  EXPECT_EQ(out[1].length, 64 * kKiB);
  EXPECT_EQ(out[3].kind, AllocKind::kData);
  EXPECT_GE(out[3].length, 4 * kKiB);
  EXPECT_EQ(out[4].kind, AllocKind::kHole);
  // Unaligned sub-ranges are clipped exactly.
  ASSERT_TRUE((*f)->allocation(64 * kKiB - 10, 30, out).ok());
  EXPECT_EQ(str(out), "H10 D20 ");
  ASSERT_TRUE((*f)->allocation(2 * kMiB - 100, 100, out).ok());
  EXPECT_EQ(str(out), "H100 ");

  // A table: 1 MiB of the file from 64 KiB on, then 1 MiB of zero target,
  // then the file from 0 again.
  Resolver res;
  auto spec = parse_table(fmt::format("0 2048 linear {} 128\n2048 2048 zero\n4096 512 linear {} 0", p, p));
  ASSERT_TRUE(spec.ok()) << spec.status().to_string();
  auto t = Table::build(*spec, res, TargetRegistry::builtin(), "t");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  auto md = std::make_shared<MappedDevice>("t", *t);
  ASSERT_TRUE(md->allocation(0, md->size(), out).ok());
  // [0,64K) data (file 64K..128K), hole up to the file's 1 MiB data at
  // table offset 960K, data, hole to 1M; zero segment: hole; then file
  // [0,256K): 64K hole, 64K data, 128K hole.
  ASSERT_GE(out.size(), 5u) << str(out);
  EXPECT_EQ(out[0].kind, AllocKind::kData);
  EXPECT_EQ(out[0].length, 64 * kKiB);
  EXPECT_EQ(out[1].kind, AllocKind::kHole);
  EXPECT_EQ(out[1].length, 896 * kKiB);
  EXPECT_EQ(out[2].kind, AllocKind::kData);
  uint64_t sum = 0;
  for (auto& r : out) sum += r.length;
  EXPECT_EQ(sum, md->size());
  // The tail, from inside the zero segment across into the second linear.
  ASSERT_TRUE(md->allocation(2 * kMiB - 4096, 4096 + 256 * kKiB, out).ok());
  EXPECT_EQ(str(out), fmt::format("H{} D{} H{} ", 4096 + 64 * kKiB, 64 * kKiB, 128 * kKiB));
  // Every hole reads as zero.
  uint64_t pos = 2 * kMiB - 4096;
  for (auto& r : out) {
    if (r.kind != AllocKind::kData) {
      std::vector<uint8_t> got(r.length);
      ASSERT_TRUE(md->read(pos, got).ok());
      EXPECT_EQ(got, std::vector<uint8_t>(r.length, 0));
    }
    pos += r.length;
  }
  EXPECT_EQ(md->allocation(md->size() - 512, 1024, out).code(), EINVAL);
}
