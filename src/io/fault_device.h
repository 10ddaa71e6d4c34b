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
#pragma once

#include <mutex>
#include <optional>
#include <random>
#include <vector>

#include "device/block_device.h"

namespace udm {

class FaultDevice : public BlockDevice {
 public:
  explicit FaultDevice(uint64_t size);
  explicit FaultDevice(std::vector<uint8_t> initial);

  uint64_t size() const override { return size_; }
  DeviceCaps caps() const override;
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override;
  Status do_trim(uint64_t offset, uint64_t length) override;  // zeroes, like write_zeroes
  Status do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) override;
  Status do_flush() override;

  // Fault controls (thread-safe).
  void cut_after_writes(uint64_t n);  // arm: op number n+1 cuts power
  void disarm();
  void power_cut();  // cut now
  void revive();     // power back: cache emptied, reads/writes work again
  bool dead() const;
  void set_unflushed_survival(double p, uint64_t seed);
  // The next `count` (or all, if count < 0) reads / writes touching
  // [offset, offset+len) fail with `err`.
  void fail_reads(uint64_t offset, uint64_t len, int err = EIO, int count = -1);
  void fail_writes(uint64_t offset, uint64_t len, int err = EIO, int count = -1);
  void clear_failures();

  uint64_t write_ops() const;  // write-type operations accepted so far
  uint64_t flushes() const;
  std::vector<uint8_t> durable_image() const;  // as after a power cut now
  std::vector<uint8_t> current_image() const;  // what reads return now

 private:
  struct Record {
    uint64_t offset;
    uint64_t length;
    std::vector<uint8_t> data;  // empty = zeroes
  };
  struct Failure {
    uint64_t offset, len;
    int err;
    int count;
  };
  // Returns EIO (and performs the cut) if this write-type op must fail.
  Status account_write_locked(uint64_t offset, uint64_t len);
  Status check_failure_locked(std::vector<Failure>& list, uint64_t offset, uint64_t len,
                              const char* op);
  void apply(std::vector<uint8_t>& img, const Record& r) const;
  void cut_locked();
  Status store(Record r, bool fua);

  uint64_t size_;
  mutable std::mutex mu_;
  std::vector<uint8_t> durable_;
  std::vector<uint8_t> cache_;  // durable + pending, what reads see
  std::vector<Record> pending_;
  std::optional<uint64_t> cut_after_;
  uint64_t write_ops_ = 0;
  uint64_t flushes_ = 0;
  bool dead_ = false;
  double survival_ = 0.0;
  std::mt19937_64 rng_{1};
  std::vector<Failure> read_failures_, write_failures_;
};

}  // namespace udm
