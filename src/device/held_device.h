// A counted open of a mapped device: what exports serve and what stacked
// tables hold. While one lives, the device's open_count includes it, so the
// device cannot be removed (EBUSY), as with device-mapper.
#pragma once

#include "device/mapped_device.h"

namespace udm {

class HeldDevice : public BlockDevice {
 public:
  explicit HeldDevice(MappedDevicePtr dev) : dev_(std::move(dev)) { dev_->add_opener(); }
  ~HeldDevice() override { dev_->drop_opener(); }
  uint64_t size() const override { return dev_->size(); }
  DeviceCaps caps() const override { return dev_->caps(); }
  const MappedDevicePtr& device() const { return dev_; }

 protected:
  Status do_read(uint64_t o, std::span<uint8_t> b) override { return dev_->read(o, b); }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override { return dev_->write(o, b, fua); }
  Status do_trim(uint64_t o, uint64_t l) override { return dev_->trim(o, l); }
  Status do_write_zeroes(uint64_t o, uint64_t l, bool fua, bool may_unmap) override {
    return dev_->write_zeroes(o, l, fua, may_unmap);
  }
  Status do_flush() override { return dev_->flush(); }
  Status do_allocation(uint64_t o, uint64_t l, AllocMap& out) override { return dev_->allocation(o, l, out); }
  void do_keep_cached(uint64_t o, uint64_t l) override { dev_->keep_cached(o, l); }
  Result<bool> do_direct_extent(uint64_t o, uint64_t l, const DirectExtentUse& use) override {
    return dev_->direct_extent(o, l, use);
  }

 private:
  MappedDevicePtr dev_;
};

}  // namespace udm
