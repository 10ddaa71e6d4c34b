// Bases that keep a target as small as its idea (nbdkit's filters, LevelDB's
// EnvWrapper): override only what you change.
//
//  * ForwardingTarget passes every call to a lower device at an offset
//    (keep_cached too; allocation only on request, see below); a target
//    that remaps, checks or counts overrides one hook.
//  * ReadOnlyTarget refuses every write-type call with EROFS and says so in
//    caps(); a read-only target writes only do_read (and size, type).
//
// The public BlockDevice calls have already checked the range against size()
// when a hook runs, so hooks never check it again.
#pragma once

#include <string>

#include "device/target.h"

namespace udm {

class ForwardingTarget : public Target {
 public:
  // Serves [offset, offset + length) of `lower`; the factory checks that the
  // range lies inside it.
  ForwardingTarget(DevicePtr lower, uint64_t offset, uint64_t length)
      : lower_(std::move(lower)), offset_(offset), length_(length) {}

  uint64_t size() const override { return length_; }
  DeviceCaps caps() const override { return lower_->caps(); }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override { return lower_->read(offset_ + off, buf); }
  Status do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) override {
    return lower_->write(offset_ + off, buf, fua);
  }
  Status do_trim(uint64_t off, uint64_t len) override { return lower_->trim(offset_ + off, len); }
  Status do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool may_unmap) override {
    return lower_->write_zeroes(offset_ + off, len, fua, may_unmap);
  }
  Status do_flush() override { return lower_->flush(); }
  // The bytes are the lower device's at offset_ + off: so is the hint.
  void do_keep_cached(uint64_t off, uint64_t len) override { lower_->keep_cached(offset_ + off, len); }
  // Allocation is NOT passed down by default (a target that transforms or
  // redirects reads would report the lower device's holes as its own zeroes);
  // a target whose reads are the lower device's bytes overrides
  // do_allocation with this.
  Status forward_allocation(uint64_t off, uint64_t len, AllocMap& out) {
    return lower_->allocation(offset_ + off, len, out);
  }

  // Zero-copy reads are NOT passed down by default either (a target that
  // remaps, holds writes back or checks reads must see every read); a
  // target whose reads are exactly the lower device's bytes overrides
  // do_direct_extent with this.
  Result<bool> forward_direct_extent(uint64_t off, uint64_t len, const DirectExtentUse& use) {
    return lower_->direct_extent(offset_ + off, len, use);
  }

  const DevicePtr& lower() const { return lower_; }
  uint64_t lower_offset() const { return offset_; }

 private:
  DevicePtr lower_;
  uint64_t offset_, length_;
};

class ReadOnlyTarget : public Target {
 public:
  DeviceCaps caps() const override {
    DeviceCaps c;
    c.read_only = true;
    c.can_trim = false;
    c.trim_zeroes = false;
    c.can_write_zeroes = false;
    c.fast_zero = false;
    return c;
  }

 protected:
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return refuse(); }
  Status do_trim(uint64_t, uint64_t) override { return refuse(); }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override { return refuse(); }
  Status do_flush() override { return Status::Ok(); }

 private:
  Status refuse() const { return ReadOnly(type() + " target is read-only"); }
};

}  // namespace udm
