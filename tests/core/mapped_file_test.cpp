// MappedFile: the bytes of a sparse file, its holes read as zeroes without
// allocating them (on tmpfs a read fault on a hole used to allocate a page
// in the file: diffing a sparse image on /dev/shm filled it with RAM).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "io/mapped_file.h"

using namespace udm;

namespace {

uint64_t allocated(const std::string& p) {
  struct stat st{};
  EXPECT_EQ(::stat(p.c_str(), &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

void check_sparse_file(const std::string& dir) {
  const std::string p = dir + "/udm-mapped-" + std::to_string(::getpid());
  const uint64_t size = (64u << 20) + 1000;  // not a whole number of pages
  std::vector<uint8_t> want(size, 0);
  int fd = ::open(p.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  // Data at the start, in the middle (not page aligned) and in the last, partial page.
  for (uint64_t off : {uint64_t{0}, uint64_t{5u << 20} + 123, size - 700}) {
    std::vector<uint8_t> d(600);
    for (size_t i = 0; i < d.size(); i++) d[i] = static_cast<uint8_t>(off + i * 7 + 1);
    ASSERT_EQ(::pwrite(fd, d.data(), d.size(), static_cast<off_t>(off)), static_cast<ssize_t>(d.size()));
    std::memcpy(want.data() + off, d.data(), d.size());
  }
  ::close(fd);
  const uint64_t before = allocated(p);
  {
    MappedFile m;
    ASSERT_TRUE(m.open(p).ok());
    ASSERT_EQ(m.size(), size);
    EXPECT_EQ(std::memcmp(m.data(), want.data(), size), 0);  // every page touched
    EXPECT_GT(m.hole_bytes(), 60u << 20);
  }
  EXPECT_EQ(allocated(p), before) << "reading through the mapping allocated the file's holes";
  ::unlink(p.c_str());
}

}  // namespace

TEST(MappedFile, SparseFileOnTmpfsReadsZeroesWithoutFillingItsHoles) { check_sparse_file("/dev/shm"); }

TEST(MappedFile, SparseFileOnDiskReadsItsBytes) { check_sparse_file("/var/tmp"); }

TEST(MappedFile, EmptyAndMissingFiles) {
  const std::string p = "/dev/shm/udm-mapped-empty-" + std::to_string(::getpid());
  int fd = ::open(p.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  MappedFile m;
  ASSERT_TRUE(m.open(p).ok());
  EXPECT_EQ(m.size(), 0u);
  ::unlink(p.c_str());
  MappedFile n;
  Status st = n.open(p);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find(p), std::string::npos) << st.message();
}
