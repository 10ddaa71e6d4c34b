#include "io/memory_device.h"

#include <cstring>

namespace udm {

MemoryDevice::MemoryDevice(uint64_t size, bool read_only)
    : size_(size), read_only_(read_only), data_(size, 0) {}

MemoryDevice::MemoryDevice(std::vector<uint8_t> contents, bool read_only)
    : size_(contents.size()), read_only_(read_only), data_(std::move(contents)) {}

DeviceCaps MemoryDevice::caps() const {
  DeviceCaps c;
  c.read_only = read_only_;
  c.can_trim = !read_only_;
  c.trim_zeroes = true;
  c.fast_zero = true;
  return c;
}

Status MemoryDevice::do_read(uint64_t offset, std::span<uint8_t> buf) {
  std::shared_lock lk(mu_);
  if (!buf.empty()) std::memcpy(buf.data(), data_.data() + offset, buf.size());
  return Status::Ok();
}

Status MemoryDevice::do_write(uint64_t offset, std::span<const uint8_t> buf, bool) {
  if (read_only_) return ReadOnly("memory device is read-only");
  std::unique_lock lk(mu_);
  if (!buf.empty()) std::memcpy(data_.data() + offset, buf.data(), buf.size());
  return Status::Ok();
}

Status MemoryDevice::do_trim(uint64_t offset, uint64_t length) {
  return do_write_zeroes(offset, length, false, true);
}

Status MemoryDevice::do_write_zeroes(uint64_t offset, uint64_t length, bool, bool) {
  if (read_only_) return ReadOnly("memory device is read-only");
  std::unique_lock lk(mu_);
  std::memset(data_.data() + offset, 0, length);
  return Status::Ok();
}

Status MemoryDevice::do_flush() {
  flushes_++;
  return Status::Ok();
}

std::vector<uint8_t> MemoryDevice::contents() const {
  std::shared_lock lk(mu_);
  return data_;
}

}  // namespace udm
