// ZFile reader as a read-only BlockDevice over any BlockDevice range (a file,
// a tar member, another udm device), with decompressed blocks kept in
// io/block_cache.h (BlockCache::shared() unless given one; one owner id per
// open image) and sequential read-ahead.
#pragma once

#include <atomic>
#include <memory>

#include "device/block_device.h"
#include "io/block_cache.h"
#include "overlaybd/zfile_format.h"

namespace udm::obd {

// A byte range of another device (tar member payload).
class SliceDevice : public BlockDevice {
 public:
  SliceDevice(DevicePtr dev, uint64_t off, uint64_t len) : dev_(std::move(dev)), off_(off), len_(len) {}
  uint64_t size() const override { return len_; }
  DeviceCaps caps() const override;
  Status do_read(uint64_t off, std::span<uint8_t> buf) override { return dev_->read(off_ + off, buf); }
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return ReadOnly("read-only slice"); }
  Status do_trim(uint64_t, uint64_t) override { return ReadOnly("read-only slice"); }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override { return ReadOnly("read-only slice"); }
  Status do_flush() override { return Status::Ok(); }
  void do_keep_cached(uint64_t off, uint64_t len) override { dev_->keep_cached(off_ + off, len); }

 private:
  DevicePtr dev_;
  uint64_t off_, len_;
};

class ZFileDevice : public BlockDevice {
 public:
  // Opens the ZFile held in bytes [0, blob->size()) of blob.
  static Result<std::shared_ptr<ZFileDevice>> open(DevicePtr blob,
                                                   std::shared_ptr<BlockCache> cache = nullptr);
  uint64_t size() const override { return layout_.h.original_file_size; }
  DeviceCaps caps() const override;
  const ZFileLayout& layout() const { return layout_; }
  const ZFileHeader& header() const { return header_; }
  uint64_t stored_size() const { return blob_->size(); }
  void set_readahead(uint32_t bytes) { readahead_ = bytes; }
  ~ZFileDevice() override;
  // Blocks of this image a read found in the cache / had to decompress
  // (read-ahead not counted).
  uint64_t cache_hits() const { return hits_.load(); }
  uint64_t cache_misses() const { return misses_.load(); }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override;
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return ReadOnly("zfile is read-only"); }
  Status do_trim(uint64_t, uint64_t) override { return ReadOnly("zfile is read-only"); }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override { return ReadOnly("zfile is read-only"); }
  Status do_flush() override { return Status::Ok(); }
  // ZFile stores every block (no holes), but it knows which blocks compress
  // to almost nothing: a block whose stored size is small enough to be a
  // zero block (under block/200 + 64 bytes) is decoded once and, if it is
  // all zeroes, reported as zero (remembered per block); every other block is
  // data without any I/O.
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override;
  // Metadata of a format inside the ZFile (an LSMT layer's header, index and
  // trailer): the blob's stored bytes of the blocks holding the range.
  void do_keep_cached(uint64_t off, uint64_t len) override;

 private:
  ZFileDevice() = default;
  bool maybe_zero(uint64_t b) const;
  uint64_t block_len(uint64_t b) const;
  DevicePtr blob_;
  std::shared_ptr<BlockCache> cache_;
  ZFileHeader header_;
  ZFileLayout layout_;
  uint64_t owner_ = 0;  // this image's key space in cache_
  uint32_t readahead_ = 256 * 1024;
  std::atomic<uint64_t> last_end_{UINT64_MAX};
  std::atomic<uint64_t> ra_next_{0};  // first block read-ahead has not decompressed
  std::atomic<uint64_t> hits_{0}, misses_{0};
  // Per block: 0 not known yet, 1 zero, 2 data (allocation()).
  std::unique_ptr<std::atomic<uint8_t>[]> zero_state_;
};

// The payload of a one-member tar wrapper (a read-only slice of blob), or
// blob itself when it is not tar-wrapped.
Result<DevicePtr> open_tar_member(DevicePtr blob);

// Opens a layer blob the way the reference does: strip a one-member tar
// wrapper if present, then decompress through ZFile if the content starts
// with a ZFile header; otherwise the bytes are used as they are.
Result<DevicePtr> open_layer_blob(DevicePtr blob, std::shared_ptr<BlockCache> cache = nullptr);

}  // namespace udm::obd
