// ZFile reader as a read-only BlockDevice over any BlockDevice range (a file,
// a tar member, another udm device), with a shared decompressed-block cache
// and sequential read-ahead.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <optional>
#include <mutex>
#include <unordered_map>

#include "device/block_device.h"
#include "overlaybd/zfile_format.h"

namespace udm::obd {

// LRU cache of decompressed blocks, shared by every ZFileDevice (keyed by a
// per-device id). Sharded to keep the lock short on 2+ cores.
class BlockCache {
 public:
  using Block = std::shared_ptr<const std::vector<uint8_t>>;
  explicit BlockCache(size_t capacity_bytes);
  static std::shared_ptr<BlockCache> shared();  // 128 MiB, process-wide
  Block get(uint64_t dev, uint64_t blk);
  void put(uint64_t dev, uint64_t blk, Block b);
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }
  static uint64_t new_device_id();

 private:
  struct Shard {
    std::mutex mu;
    std::list<std::pair<uint64_t, Block>> lru;  // key, block; front = newest
    std::unordered_map<uint64_t, std::list<std::pair<uint64_t, Block>>::iterator> map;
    size_t bytes = 0;
  };
  static constexpr int kShards = 16;
  Shard shards_[kShards];
  size_t cap_per_shard_;
  std::atomic<uint64_t> hits_{0}, misses_{0};
};

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

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override;
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return ReadOnly("zfile is read-only"); }
  Status do_trim(uint64_t, uint64_t) override { return ReadOnly("zfile is read-only"); }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override { return ReadOnly("zfile is read-only"); }
  Status do_flush() override { return Status::Ok(); }

 private:
  ZFileDevice() = default;
  uint64_t block_len(uint64_t b) const;
  DevicePtr blob_;
  std::shared_ptr<BlockCache> cache_;
  ZFileHeader header_;
  ZFileLayout layout_;
  uint64_t id_ = 0;
  uint32_t readahead_ = 256 * 1024;
  std::atomic<uint64_t> last_end_{UINT64_MAX};
};

// Opens a layer blob the way the reference does: strip a one-member tar
// wrapper if present, then decompress through ZFile if the content starts
// with a ZFile header; otherwise the bytes are used as they are.
Result<DevicePtr> open_layer_blob(DevicePtr blob, std::shared_ptr<BlockCache> cache = nullptr);

}  // namespace udm::obd
