// The FUSE export in-process: a DeviceRegistry served on a temp directory,
// used through the kernel (open/pread/pwrite/fallocate, loop, mkfs, mount).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <thread>

#include "common/sys_util.h"
#include "daemon/registry.h"
#include "export/fuse/fuse_export.h"

using namespace udm;
using namespace udm::test;

namespace {


class FuseE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!is_root()) GTEST_SKIP() << "needs root for FUSE/loop/mount";
    mnt_ = tmp_.file("fuse");
    mkdir(mnt_.c_str(), 0755);
    a_ = tmp_.file("a.img");
    b_ = tmp_.file("b.img");
    make_sparse_file(a_, 24 << 20);
    make_sparse_file(b_, 24 << 20);
    fuse_ = std::make_unique<FuseExport>(reg_, mnt_);
    ASSERT_TRUE(fuse_->start().ok());
  }
  void TearDown() override {
    if (fuse_) fuse_->stop();
  }
  TempDir tmp_;
  std::string mnt_, a_, b_;
  DeviceRegistry reg_;
  std::unique_ptr<FuseExport> fuse_;
};

uint64_t allocated_kib(const std::string& path) {
  struct stat st;
  stat(path.c_str(), &st);
  return static_cast<uint64_t>(st.st_blocks) / 2;
}

}  // namespace

TEST_F(FuseE2E, FilesFollowDevicesAndReportSizeAndMode) {
  ASSERT_TRUE(reg_.create("one", "0 2048 zero", false).ok());
  ASSERT_TRUE(reg_.create("two", "0 4096 linear " + a_ + " 0", true).ok());
  struct stat st;
  ASSERT_EQ(stat((mnt_ + "/one").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 2048 * 512);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat((mnt_ + "/two").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0400u);
  auto ls = run({"ls", mnt_});
  EXPECT_EQ(ls.out, "one\ntwo\n");
  ASSERT_TRUE(reg_.remove("one").ok());
  EXPECT_NE(stat((mnt_ + "/one").c_str(), &st), 0);
  EXPECT_EQ(run({"ls", mnt_}).out, "two\n");
  // Read-only device: write opens are refused, nothing written.
  int fd = open((mnt_ + "/two").c_str(), O_RDWR);
  EXPECT_LT(fd, 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(truncate((mnt_ + "/two").c_str(), 1), -1);
}

TEST_F(FuseE2E, ReadWriteFallocateAndEofThroughTheKernel) {
  ASSERT_TRUE(reg_.create("d", "0 8192 linear " + a_ + " 0\n8192 8192 linear " + b_ + " 0", false).ok());
  std::string f = mnt_ + "/d";
  int fd = open(f.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(reg_.get("d")->open_count(), 1);
  auto data = random_bytes(1 << 20, 5);
  // Straddles the two segments.
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), (4 << 20) - 4096), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(fsync(fd), 0);
  std::vector<uint8_t> back(data.size());
  ASSERT_EQ(pread(fd, back.data(), back.size(), (4 << 20) - 4096), static_cast<ssize_t>(back.size()));
  EXPECT_EQ(back, data);
  auto fa = read_file(a_), fb = read_file(b_);
  EXPECT_TRUE(std::equal(data.begin(), data.begin() + 4096, fa.begin() + (4 << 20) - 4096));
  EXPECT_TRUE(std::equal(data.begin() + 4096, data.end(), fb.begin()));
  // Reads at/after the end: short and zero-length, not garbage.
  std::vector<uint8_t> tail(8192);
  EXPECT_EQ(pread(fd, tail.data(), tail.size(), (8 << 20) - 4096), 4096);
  EXPECT_EQ(pread(fd, tail.data(), tail.size(), 8 << 20), 0);
  EXPECT_EQ(pwrite(fd, tail.data(), 512, 8 << 20), -1);
  EXPECT_EQ(errno, ENOSPC);
  // Discard punches a hole in the backing file; zero-range zeroes.
  uint64_t before = allocated_kib(b_);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4 << 20, 512 << 10), 0);
  EXPECT_LT(allocated_kib(b_), before);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_ZERO_RANGE, (4 << 20) + (512 << 10), 4096), 0);
  ASSERT_EQ(pread(fd, back.data(), 1 << 20, 4 << 20), 1 << 20);
  for (size_t i = 0; i < (512 << 10) + 4096; i++) ASSERT_EQ(back[i], 0) << i;
  EXPECT_EQ(fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, 4096), -1);
  // Removing an open device is refused.
  EXPECT_EQ(reg_.remove("d").code(), EBUSY);
  close(fd);
  for (int i = 0; i < 100 && reg_.get("d")->open_count() != 0; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // release is asynchronous
  EXPECT_EQ(reg_.get("d")->open_count(), 0);
  EXPECT_TRUE(reg_.remove("d").ok());
}

TEST_F(FuseE2E, Ext4WithFstrimOn1KBlocksAndStopWhileLoopHoldsFile) {
  ASSERT_TRUE(reg_.create("fs", "0 24576 linear " + a_ + " 0\n24576 24576 linear " + b_ + " 0", false).ok());
  std::string mp = tmp_.file("mp");
  mkdir(mp.c_str(), 0755);
  LoopDevice loop(mnt_ + "/fs");
  ASSERT_FALSE(loop.device().empty()) << loop.error();
  auto r = run({"mkfs.ext4", "-q", "-F", "-b", "1024", loop.device()});
  ASSERT_TRUE(r.ok()) << r.describe();
  {
    Mount m(loop.device(), mp);
    ASSERT_TRUE(m.ok()) << m.error();
    auto big = random_bytes(12 << 20, 3);
    write_file(mp + "/big", big);
    ASSERT_TRUE(sh("sync").ok());
    uint64_t before = allocated_kib(a_) + allocated_kib(b_);
    ASSERT_EQ(unlink((mp + "/big").c_str()), 0);
    ASSERT_TRUE(sh("sync").ok());
    r = run({"fstrim", "-v", mp});
    ASSERT_TRUE(r.ok()) << r.describe();
    uint64_t after = allocated_kib(a_) + allocated_kib(b_);
    EXPECT_LT(after + 8 * 1024, before) << "fstrim did not reach the backing files: " << before << " -> " << after;
    // Files written through ext4 -> loop -> FUSE -> linear read back equal
    // after a remount (the first mount's page cache is gone).
    auto f1 = random_bytes(5 << 20, 11), f2 = random_bytes(300 << 10, 12);
    write_file(mp + "/f1", f1);
    ASSERT_EQ(mkdir((mp + "/dir").c_str(), 0755), 0);
    write_file(mp + "/dir/f2", f2);
    std::string h1 = sha256_file(mp + "/f1"), h2 = sha256_file(mp + "/dir/f2");
    ASSERT_TRUE(m.unmount());
    Mount again(loop.device(), mp);
    ASSERT_TRUE(again.ok()) << again.error();
    EXPECT_EQ(sha256_file(mp + "/f1"), h1);
    EXPECT_EQ(sha256_file(mp + "/dir/f2"), h2);
    EXPECT_EQ(read_file(mp + "/f1"), f1);
    ASSERT_TRUE(again.unmount());
  }
  r = run({"e2fsck", "-f", "-n", loop.device()});
  EXPECT_TRUE(r.ok()) << r.describe();
  // The loop device still holds the file: stop() must not hang.
  auto t0 = std::chrono::steady_clock::now();
  fuse_->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
}

// SEEK_DATA / SEEK_HOLE on the device file come from the allocation map: a
// linear segment over a sparse file (its holes) and a zero segment (all hole).
TEST_F(FuseE2E, SeekDataAndHoleFollowTheAllocationMap) {
  ASSERT_TRUE(reg_.create("s", "0 8192 linear " + a_ + " 0\n8192 8192 zero", false).ok());
  std::string f = mnt_ + "/s";
  int fd = open(f.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  auto data = random_bytes(65536, 9);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 1 << 20), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(fsync(fd), 0);
  EXPECT_EQ(lseek(fd, 0, SEEK_DATA), 1 << 20);
  EXPECT_EQ(lseek(fd, 0, SEEK_HOLE), 0);
  EXPECT_EQ(lseek(fd, (1 << 20) + 100, SEEK_DATA), (1 << 20) + 100);
  EXPECT_EQ(lseek(fd, 1 << 20, SEEK_HOLE), (1 << 20) + 65536);
  // Past the data: the rest of the file and the zero segment are hole.
  errno = 0;
  EXPECT_EQ(lseek(fd, (1 << 20) + 65536, SEEK_DATA), -1);
  EXPECT_EQ(errno, ENXIO);
  EXPECT_EQ(lseek(fd, 6 << 20, SEEK_HOLE), 6 << 20);
  errno = 0;
  EXPECT_EQ(lseek(fd, 8 << 20, SEEK_DATA), -1);
  EXPECT_EQ(errno, ENXIO);
  close(fd);
  // cp --sparse=always makes a sparse copy with the same bytes.
  std::string copy = tmp_.file("copy.img");
  auto r = run({"cp", "--sparse=always", f, copy});
  ASSERT_TRUE(r.ok()) << r.describe();
  auto got = read_file(copy);
  ASSERT_EQ(got.size(), 8u << 20);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), got.begin() + (1 << 20)));
  EXPECT_EQ(std::count(got.begin(), got.end(), 0),
            static_cast<long>((8u << 20) - 65536) + std::count(data.begin(), data.end(), 0));
  EXPECT_LE(allocated_kib(copy), 256u);
}

// Reads of linear segments are spliced from the backing file (the direct
// path), reads that leave a segment or hit another target are buffered: the
// bytes are the same either way, at any offset, before and after writes and
// across a reload that switches files.
TEST_F(FuseE2E, SplicedAndBufferedReadsEqualTheBackingFiles) {
  auto ia = random_bytes(24 << 20, 21), ib = random_bytes(24 << 20, 22);
  write_file(a_, ia);
  write_file(b_, ib);
  // [0,4M) = a from 1 MiB; [4M,5M) = zero; [5M,9M) = b from 0.
  ASSERT_TRUE(reg_.create("d", "0 8192 linear " + a_ + " 2048\n8192 2048 zero\n10240 8192 linear " + b_ + " 0",
                          false).ok());
  auto expect = [&](uint64_t off, uint64_t len) {
    std::vector<uint8_t> v(len, 0);
    for (uint64_t i = 0; i < len; i++) {
      uint64_t p = off + i;
      if (p < (4u << 20)) v[i] = ia[(1u << 20) + p];
      else if (p >= (5u << 20)) v[i] = ib[p - (5u << 20)];
    }
    return v;
  };
  int fd = open((mnt_ + "/d").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  struct Case { uint64_t off, len; };
  const Case cases[] = {
      {0, 1 << 20},                          // whole request in a: spliced
      {12345, 777777},                       // unaligned, in a
      {(4u << 20) - 65536, 1 << 20},         // a -> zero: buffered
      {(4u << 20) + 4096, 65536},            // zero only
      {(5u << 20) - 4096, 1 << 20},          // zero -> b
      {(5u << 20) + 3, 1 << 20},             // unaligned, in b
      {(9u << 20) - 4096, 4096},             // the last page
      {(9u << 20) - 100, 4096},              // short at the end
  };
  for (const Case& c : cases) {
    std::vector<uint8_t> got(c.len);
    uint64_t want_n = std::min<uint64_t>(c.len, (9u << 20) - c.off);
    ASSERT_EQ(pread(fd, got.data(), c.len, static_cast<off_t>(c.off)), static_cast<ssize_t>(want_n)) << c.off;
    got.resize(want_n);
    EXPECT_TRUE(got == expect(c.off, want_n)) << "read " << c.len << " at " << c.off;
  }
  // A write through the export, then reads of it both ways.
  auto w = random_bytes(3 << 20, 23);
  ASSERT_EQ(pwrite(fd, w.data(), w.size(), 1 << 20), static_cast<ssize_t>(w.size()));
  std::copy(w.begin(), w.end(), ia.begin() + (2u << 20));
  for (const Case& c : {Case{1 << 20, 1 << 20}, Case{(1u << 20) + 511, 2 << 20}, Case{(4u << 20) - 8192, 16384}}) {
    std::vector<uint8_t> got(c.len);
    ASSERT_EQ(pread(fd, got.data(), c.len, static_cast<off_t>(c.off)), static_cast<ssize_t>(c.len));
    EXPECT_TRUE(got == expect(c.off, c.len)) << "after write: read " << c.len << " at " << c.off;
  }
  // Reads racing a reload that puts b first: each request is all old or
  // all new table (it never straddles the swap), and after it the new one.
  // 256 KiB from a page-aligned buffer is one FUSE request (a larger or
  // unaligned user read is split by max_pages, and its parts may not agree).
  ASSERT_TRUE(reg_.load("d", "0 8192 linear " + b_ + " 0\n8192 10240 zero").ok());
  constexpr size_t kRace = 256 << 10;
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, bad{0};
  auto old_bytes = expect(65536, kRace);
  std::vector<uint8_t> new_bytes(ib.begin() + 65536, ib.begin() + 65536 + kRace);
  std::thread reader([&] {
    auto* got = static_cast<uint8_t*>(std::aligned_alloc(4096, kRace));
    while (!stop) {
      if (pread(fd, got, kRace, 65536) != static_cast<ssize_t>(kRace) ||
          (!std::equal(got, got + kRace, old_bytes.begin()) && !std::equal(got, got + kRace, new_bytes.begin())))
        bad++;
      reads++;
    }
    std::free(got);
  });
  while (reads < 20) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto dev = reg_.get("d");
  ASSERT_TRUE(dev->suspend().ok());
  int at_suspend = reads;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_LE(reads - at_suspend, 1) << "reads completed while the device was suspended";
  ASSERT_TRUE(dev->resume().ok());
  int at_resume = reads;
  while (reads < at_resume + 20) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  stop = true;
  reader.join();
  EXPECT_EQ(bad, 0);
  std::vector<uint8_t> got(kRace);
  ASSERT_EQ(pread(fd, got.data(), got.size(), 65536), static_cast<ssize_t>(got.size()));
  EXPECT_TRUE(got == new_bytes);
  close(fd);
}
