// A fault-injecting device for crash tests, modelled on a disk with a
// volatile write cache:
//  * writes land in the cache (what reads see) and become durable only on
//    flush() or when written with FUA;
//  * a power cut loses the cache: by default every unflushed write is dropped;
//    with set_unflushed_survival(p, seed) each unflushed write independently
//    survives with probability p (real disks persist any subset, in any order
//    across flushes);
//  * cut_after_writes(N): the first N write-type operations (write,
//    write_zeroes, trim) succeed; operation N+1 triggers the power cut and it
//    and everything after it fails with EIO until revive();
//  * fail_reads / fail_writes make chosen ranges return an errno.
// durable_image() is what the disk holds after power returns; tests build the
// "rebooted" stack on top of a new FaultDevice or MemoryDevice made from it.
// The model is io/fault_model.h's, shared with FaultGrowFile; a FaultDevice
// made on a given FaultDisk loses power together with the disk's other
// images.
#pragma once

#include <memory>
#include <vector>

#include "device/block_device.h"
#include "io/fault_model.h"

namespace udm {

class FaultDevice : public BlockDevice {
 public:
  explicit FaultDevice(uint64_t size);
  explicit FaultDevice(std::vector<uint8_t> initial);
  FaultDevice(std::shared_ptr<FaultDisk> disk, std::vector<uint8_t> initial);

  uint64_t size() const override { return size_; }
  DeviceCaps caps() const override;
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override;
  Status do_trim(uint64_t offset, uint64_t length) override;  // zeroes, like write_zeroes
  Status do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) override;
  Status do_flush() override;

  // Fault controls (thread-safe); the power ones act on the whole disk.
  void cut_after_writes(uint64_t n) { disk().cut_after_writes(n); }  // arm: op number n+1 cuts power
  void disarm() { disk().disarm(); }
  void power_cut() { disk().power_cut(); }  // cut now
  void revive() { disk().revive(); }        // power back: cache emptied, reads/writes work again
  bool dead() const { return disk().dead(); }
  void set_unflushed_survival(double p, uint64_t seed) { disk().set_unflushed_survival(p, seed); }
  // The next `count` (or all, if count < 0) reads / writes touching
  // [offset, offset+len) fail with `err`.
  void fail_reads(uint64_t offset, uint64_t len, int err = EIO, int count = -1) {
    img_.fail_reads(offset, len, err, count);
  }
  void fail_writes(uint64_t offset, uint64_t len, int err = EIO, int count = -1) {
    img_.fail_writes(offset, len, err, count);
  }
  void clear_failures() { img_.clear_failures(); }

  uint64_t write_ops() const { return disk().write_ops(); }  // write-type operations accepted so far
  uint64_t flushes() const { return disk().flushes(); }
  std::vector<uint8_t> durable_image() const { return img_.durable(); }  // as after a power cut now
  std::vector<uint8_t> current_image() const { return img_.current(); }  // what reads return now
  FaultDisk& disk() const { return *img_.disk(); }

 private:
  uint64_t size_;
  FaultImage img_;
};

}  // namespace udm
