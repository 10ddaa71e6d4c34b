// Whole-buffer positioned I/O on a file descriptor: retries short transfers
// and EINTR; a read that reaches the end of the file is an error ("short
// file"). `what` names the file in errors.
#pragma once
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "util/status.h"

namespace udm {

inline Status pwrite_all(int fd, const void* p, size_t n, uint64_t off, const std::string& what) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  while (n) {
    ssize_t r = ::pwrite(fd, b, n, off_t(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write " + what);
    }
    b += r;
    n -= size_t(r);
    off += uint64_t(r);
  }
  return Status::Ok();
}

inline Status pread_all(int fd, void* p, size_t n, uint64_t off, const std::string& what) {
  uint8_t* b = static_cast<uint8_t*>(p);
  while (n) {
    ssize_t r = ::pread(fd, b, n, off_t(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read " + what);
    }
    if (r == 0) return IoError("read " + what + ": short file");
    b += r;
    n -= size_t(r);
    off += uint64_t(r);
  }
  return Status::Ok();
}

}  // namespace udm
