#include "io/fault_device.h"

namespace udm {

FaultDevice::FaultDevice(uint64_t size) : FaultDevice(std::vector<uint8_t>(size, 0)) {}

FaultDevice::FaultDevice(std::vector<uint8_t> initial)
    : FaultDevice(std::make_shared<FaultDisk>(), std::move(initial)) {}

FaultDevice::FaultDevice(std::shared_ptr<FaultDisk> disk, std::vector<uint8_t> initial)
    : size_(initial.size()), img_(std::move(disk), std::move(initial)) {}

DeviceCaps FaultDevice::caps() const {
  DeviceCaps c;
  c.can_trim = true;
  c.trim_zeroes = true;
  c.fast_zero = true;
  return c;
}

Status FaultDevice::do_read(uint64_t offset, std::span<uint8_t> buf) { return img_.read(offset, buf); }

Status FaultDevice::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  return img_.write(offset, buf, fua);
}

Status FaultDevice::do_trim(uint64_t offset, uint64_t length) { return img_.write_zeroes(offset, length, false); }

Status FaultDevice::do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) {
  return img_.write_zeroes(offset, length, fua);
}

Status FaultDevice::do_flush() { return img_.flush(); }

}  // namespace udm
