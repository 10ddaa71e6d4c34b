#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace udm {

MappedFile::~MappedFile() {
  if (p_ && n_) ::munmap(const_cast<uint8_t*>(p_), n_);
}

Status MappedFile::open(const std::string& path) {
  if (p_) return Invalid("MappedFile: already open");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + path);
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    Status s = ErrnoStatus("stat " + path);
    ::close(fd);
    return s;
  }
  const size_t n = static_cast<size_t>(st.st_size);
  if (n == 0) {
    ::close(fd);
    return Status::Ok();
  }
  void* p = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    Status s = ErrnoStatus("mmap " + path);
    ::close(fd);
    return s;
  }
  // Holes (whole pages of them) become anonymous zero pages. lseek fails
  // with ENXIO or EINVAL where there is no hole map (e.g. a block device):
  // then everything stays file-backed.
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t pos = 0;
  while (S_ISREG(st.st_mode) && pos < n) {
    const off_t h = ::lseek(fd, static_cast<off_t>(pos), SEEK_HOLE);
    if (h < 0 || static_cast<uint64_t>(h) >= n) break;
    off_t d = ::lseek(fd, h, SEEK_DATA);
    const uint64_t de = d < 0 ? n : static_cast<uint64_t>(d);
    const uint64_t a = (static_cast<uint64_t>(h) + page - 1) / page * page;
    const uint64_t b = de >= n ? (n + page - 1) / page * page : de / page * page;
    if (b > a) {
      void* q = ::mmap(static_cast<uint8_t*>(p) + a, b - a, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      if (q == MAP_FAILED) {
        Status s = ErrnoStatus("mmap (zero pages over a hole of) " + path);
        ::munmap(p, n);
        ::close(fd);
        return s;
      }
      holes_ += b - a;
    }
    pos = de;
  }
  ::madvise(p, n, MADV_WILLNEED);
  ::close(fd);
  p_ = static_cast<const uint8_t*>(p);
  n_ = n;
  return Status::Ok();
}

}  // namespace udm
