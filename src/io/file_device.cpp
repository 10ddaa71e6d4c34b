#include "io/file_device.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace udm {

Result<std::shared_ptr<FileDevice>> FileDevice::open(const std::string& path,
                                                     const FileOpenOptions& opts) {
  int flags = (opts.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  if (opts.direct) flags |= O_DIRECT;
  if (opts.create) flags |= O_CREAT;
  int fd = ::open(path.c_str(), flags, 0600);
  if (fd < 0) return ErrnoStatus("open " + path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    Status s = ErrnoStatus("stat " + path);
    ::close(fd);
    return s;
  }
  uint64_t size = 0;
  bool blk = S_ISBLK(st.st_mode);
  if (blk) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      Status s = ErrnoStatus("BLKGETSIZE64 " + path);
      ::close(fd);
      return s;
    }
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
    if (opts.create && opts.create_size && size == 0) {
      if (ftruncate(fd, static_cast<off_t>(opts.create_size)) != 0) {
        Status s = ErrnoStatus("truncate " + path);
        ::close(fd);
        return s;
      }
      size = opts.create_size;
    }
  } else {
    ::close(fd);
    return Invalid(path + ": not a regular file or block device");
  }
  return std::shared_ptr<FileDevice>(new FileDevice(path, fd, size, opts.writable, blk, opts.direct));
}

FileDevice::~FileDevice() {
  if (fd_ >= 0) ::close(fd_);
}

DeviceCaps FileDevice::caps() const {
  DeviceCaps c;
  c.read_only = !writable_;
  c.can_trim = writable_;
  c.trim_zeroes = !is_blk_;  // punched holes read back as zeroes
  c.can_write_zeroes = writable_;
  c.fast_zero = true;
  c.logical_block = direct_ ? 4096 : 512;
  return c;
}

Status FileDevice::do_read(uint64_t offset, std::span<uint8_t> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(fmt::format("read {} at {}", path_, offset + done));
    }
    if (n == 0) {
      // The file shrank under us: report, do not hand out stale bytes.
      return IoError(fmt::format("read {} at {}: unexpected end of file", path_, offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status FileDevice::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  if (!writable_) return ReadOnly(path_ + " is open read-only");
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n =
        ::pwrite(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(fmt::format("write {} at {}", path_, offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return fua ? flush() : Status::Ok();
}

Status FileDevice::do_trim(uint64_t offset, uint64_t length) {
  if (!writable_) return ReadOnly(path_ + " is open read-only");
  if (length == 0) return Status::Ok();
  if (is_blk_) {
    uint64_t range[2] = {offset, length};
    if (ioctl(fd_, BLKDISCARD, range) != 0) {
      if (errno == EOPNOTSUPP || errno == ENOTTY) return NotSupported(path_ + ": no discard");
      return ErrnoStatus("BLKDISCARD " + path_);
    }
    return Status::Ok();
  }
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(length)) != 0) {
    if (errno == EOPNOTSUPP) return NotSupported(path_ + ": filesystem cannot punch holes");
    return ErrnoStatus("punch hole " + path_);
  }
  return Status::Ok();
}

Status FileDevice::do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) {
  if (!writable_) return ReadOnly(path_ + " is open read-only");
  if (length == 0) return Status::Ok();
  bool done = false;
  if (is_blk_) {
    // The kernel's zero-out: offloaded (WRITE ZEROES / WRITE SAME) or written.
    uint64_t range[2] = {offset, length};
    done = ioctl(fd_, BLKZEROOUT, range) == 0;
  } else {
    auto fa = [&](int mode) {
      return fallocate(fd_, mode | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                       static_cast<off_t>(length)) == 0;
    };
    // Unmapping allowed: a hole is the cheapest zero. Otherwise keep the
    // blocks allocated (unwritten extents).
    done = (may_unmap && fa(FALLOC_FL_PUNCH_HOLE)) || fa(FALLOC_FL_ZERO_RANGE);
  }
  // Neither offload worked (tmpfs has no zero-range, some filesystems have
  // neither): write zero buffers. Never re-enter write_zeroes() here.
  if (!done) return write_zero_buffers(offset, length, fua);
  return fua ? do_flush() : Status::Ok();
}

Result<bool> FileDevice::do_direct_extent(uint64_t offset, uint64_t length, const DirectExtentUse& use) {
  if (direct_) return false;
  UDM_TRY(use(DirectExtent{fd_, offset, length}));
  return true;
}

Status FileDevice::do_flush() {
  if (!writable_) return Status::Ok();
  if (fdatasync(fd_) != 0) return ErrnoStatus("fdatasync " + path_);
  return Status::Ok();
}

}  // namespace udm

namespace udm {

// SEEK_DATA/SEEK_HOLE only move this fd's file offset, which pread/pwrite
// never use, so concurrent I/O is unaffected.
Status FileDevice::do_allocation(uint64_t offset, uint64_t length, AllocMap& out) {
  const uint64_t end = offset + length;
  if (is_blk_) return BlockDevice::do_allocation(offset, length, out);
  uint64_t pos = offset;
  while (pos < end && out.size() < kMaxAllocRuns) {
    off_t d = ::lseek(fd_, static_cast<off_t>(pos), SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) {  // no data from pos to the end of the file
        add_alloc_run(out, end - pos, AllocKind::kHole);
        return Status::Ok();
      }
      break;  // not supported here (EINVAL...): the rest is data
    }
    uint64_t data = std::min<uint64_t>(static_cast<uint64_t>(d), end);
    add_alloc_run(out, data - pos, AllocKind::kHole);
    pos = data;
    if (pos >= end) return Status::Ok();
    off_t h = ::lseek(fd_, static_cast<off_t>(pos), SEEK_HOLE);
    if (h < 0) break;
    uint64_t hole = std::min<uint64_t>(std::max<uint64_t>(static_cast<uint64_t>(h), pos + 1), end);
    add_alloc_run(out, hole - pos, AllocKind::kData);
    pos = hole;
  }
  if (pos < end && out.size() < kMaxAllocRuns) add_alloc_run(out, end - pos, AllocKind::kData);
  return Status::Ok();
}

}  // namespace udm
