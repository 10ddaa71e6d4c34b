// A device held in memory: for tests, fuzzers and transient stores.
#pragma once

#include <atomic>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "device/block_device.h"

namespace udm {

class MemoryDevice : public BlockDevice {
 public:
  explicit MemoryDevice(uint64_t size, bool read_only = false);
  explicit MemoryDevice(std::vector<uint8_t> contents, bool read_only = false);

  uint64_t size() const override { return size_; }
  DeviceCaps caps() const override;
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override;
  Status do_trim(uint64_t offset, uint64_t length) override;  // zeroes the range
  Status do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) override;
  Status do_flush() override;

  std::vector<uint8_t> contents() const;
  uint64_t flush_count() const { return flushes_; }

 private:
  uint64_t size_;
  bool read_only_;
  mutable std::shared_mutex mu_;
  std::vector<uint8_t> data_;
  std::atomic<uint64_t> flushes_{0};
};

}  // namespace udm
