#include "io/grow_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace udm {
namespace {

class PosixGrowFile : public GrowFile {
 public:
  PosixGrowFile(int fd, uint64_t size) : fd_(fd), size_(size) {}
  ~PosixGrowFile() override { ::close(fd_); }
  uint64_t size() const override { return size_.load(); }
  Status pread(uint64_t off, std::span<uint8_t> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done, off + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("pread");
      }
      if (n == 0) {
        std::memset(buf.data() + done, 0, buf.size() - done);
        break;
      }
      done += n;
    }
    return Status::Ok();
  }
  Status pwrite(uint64_t off, std::span<const uint8_t> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pwrite(fd_, buf.data() + done, buf.size() - done, off + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("pwrite");
      }
      done += n;
    }
    uint64_t end = off + buf.size(), cur = size_.load();
    while (end > cur && !size_.compare_exchange_weak(cur, end)) {
    }
    return Status::Ok();
  }
  Status sync() override {
    if (::fdatasync(fd_) != 0) return ErrnoStatus("fdatasync");
    return Status::Ok();
  }

 private:
  int fd_;
  std::atomic<uint64_t> size_;
};

}  // namespace

Result<GrowFilePtr> open_grow_file(const std::string& path, bool writable, bool create) {
  int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  if (create) flags |= O_CREAT | O_EXCL;
  int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) return ErrnoStatus("open " + path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Status s = ErrnoStatus("fstat " + path);
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Invalid(path + ": not a regular file");
  }
  return GrowFilePtr(std::make_shared<PosixGrowFile>(fd, st.st_size));
}

uint64_t MemGrowFile::size() const {
  std::lock_guard g(mu_);
  return data_.size();
}
Status MemGrowFile::pread(uint64_t off, std::span<uint8_t> buf) {
  std::lock_guard g(mu_);
  std::fill(buf.begin(), buf.end(), 0);
  if (off < data_.size()) {
    size_t n = std::min<uint64_t>(buf.size(), data_.size() - off);
    std::memcpy(buf.data(), data_.data() + off, n);
  }
  return Status::Ok();
}
Status MemGrowFile::pwrite(uint64_t off, std::span<const uint8_t> buf) {
  std::lock_guard g(mu_);
  if (data_.size() < off + buf.size()) data_.resize(off + buf.size());
  std::memcpy(data_.data() + off, buf.data(), buf.size());
  return Status::Ok();
}
std::vector<uint8_t> MemGrowFile::contents() const {
  std::lock_guard g(mu_);
  return data_;
}

}  // namespace udm
