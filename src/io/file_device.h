// Backing device over a regular file or a real block device (pread/pwrite).
// Files: discard punches holes, write_zeroes uses FALLOC_FL_ZERO_RANGE and
// flush is fdatasync. Block devices: BLKDISCARD / BLKZEROOUT / fdatasync.
#pragma once

#include <string>

#include "device/block_device.h"

namespace udm {

struct FileOpenOptions {
  bool writable = true;
  bool direct = false;  // O_DIRECT (buffers must then be 4 KiB aligned)
  bool create = false;  // create (and size) a regular file if missing
  uint64_t create_size = 0;
};

class FileDevice : public BlockDevice {
 public:
  static Result<std::shared_ptr<FileDevice>> open(const std::string& path,
                                                  const FileOpenOptions& opts = {});
  ~FileDevice() override;

  uint64_t size() const override { return size_; }
  DeviceCaps caps() const override;
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override;
  Status do_trim(uint64_t offset, uint64_t length) override;
  Status do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) override;
  Status do_flush() override;
  // Regular files: SEEK_DATA / SEEK_HOLE (holes are kHole); block devices
  // and file systems without them: data.
  Status do_allocation(uint64_t offset, uint64_t length, AllocMap& out) override;
  // The whole range is the file's, at the same offset: a read through the
  // page cache, as pread. Not with O_DIRECT: the opener asked to bypass the
  // page cache, and splice from an O_DIRECT fd is only a bounce through it.
  Result<bool> do_direct_extent(uint64_t offset, uint64_t length, const DirectExtentUse& use) override;

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  bool is_block_device() const { return is_blk_; }

 private:
  FileDevice(std::string path, int fd, uint64_t size, bool writable, bool blk, bool direct)
      : path_(std::move(path)), fd_(fd), size_(size), writable_(writable), is_blk_(blk),
        direct_(direct) {}
  std::string path_;
  int fd_;
  uint64_t size_;
  bool writable_;
  bool is_blk_;
  bool direct_;
};

}  // namespace udm
