// The crash model behind udm's fault-injecting storage (FaultDevice,
// FaultGrowFile): a disk with a volatile write cache.
//
//  * FaultDisk is the disk's power: the write-op counter, the armed cut, the
//    survival policy. Every image on it loses power at the same moment (a
//    device's bytes, or the several files of one writer: an lsmt RW layer's
//    data and index files).
//  * FaultImage is the bytes of one device or file on a disk: the durable
//    bytes, the cache reads see, and the writes not yet flushed.
//
// Writes land in the cache and become durable on flush() of their image or
// with FUA. A power cut loses the cache: every unflushed write is dropped,
// or, with set_unflushed_survival(p, seed), each survives independently with
// probability p (real disks persist any subset, in any order; a write of
// several aligned 4 KiB units is that many writes here: a cut can keep some
// of its units and drop others, as a disk may). An image that
// grows (a file) has a durable size too: the size at its last flush, in
// survival mode extended to the end of any unflushed write that survived
// (the gap reads as zeros). cut_after_writes(N) lets N write-type operations
// (writes, zero-outs, trims; not flushes) through and cuts the power on the
// next, which fails, as does all I/O after it, with EIO until revive().
// With set_cut_at_flushes(true) flushes are counted too, so a cut can also
// fall on a flush. That reaches states writes alone cannot: the writes
// before a flush still unflushed when the power fails (in survival mode any
// subset of them survives, e.g. a file's last write without the ones before
// it), and, between images, one file synced and the other not yet. (In drop
// mode on a single image, a cut at a flush leaves what a cut at the next
// write would.)
// Every image's state is guarded by its disk's lock.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "util/status.h"

namespace udm {

class FaultImage;

class FaultDisk {
 public:
  FaultDisk() = default;
  FaultDisk(const FaultDisk&) = delete;
  FaultDisk& operator=(const FaultDisk&) = delete;

  void cut_after_writes(uint64_t n);  // arm: write-type op number n+1 (from now) cuts power
  void disarm();
  void power_cut();  // cut now
  void revive();     // power back: caches emptied, I/O works again
  bool dead() const;
  void set_unflushed_survival(double p, uint64_t seed);
  void set_cut_at_flushes(bool on);
  uint64_t write_ops() const;  // write-type operations accepted so far, over all images
  uint64_t flushes() const;
  uint64_t cut_points() const;  // operations cut_after_writes counts, so far

 private:
  friend class FaultImage;
  void cut_locked();
  bool cut_due_locked() const;  // the operation about to run is the armed cut point
  Status cut_now_locked(const char* at);

  mutable std::mutex mu_;
  std::vector<FaultImage*> images_;  // in creation order: the order a cut draws survivals in
  std::optional<uint64_t> cut_after_;
  uint64_t write_ops_ = 0;
  uint64_t flushes_ = 0;
  uint64_t cut_points_ = 0;
  bool cut_at_flushes_ = false;
  bool dead_ = false;
  double survival_ = 0.0;
  std::mt19937_64 rng_{1};
};

class FaultImage {
 public:
  FaultImage(std::shared_ptr<FaultDisk> disk, std::vector<uint8_t> initial);
  ~FaultImage();
  FaultImage(const FaultImage&) = delete;
  FaultImage& operator=(const FaultImage&) = delete;

  uint64_t size() const;  // as reads see it now
  // Bytes past the end read as zeros.
  Status read(uint64_t offset, std::span<uint8_t> buf);
  // Write-type operations; an image grows when one ends past its size.
  Status write(uint64_t offset, std::span<const uint8_t> data, bool fua);
  Status write_zeroes(uint64_t offset, uint64_t length, bool fua);
  // This image's unflushed writes become durable.
  Status flush();

  // The next `count` (or all, if count < 0) reads / writes touching
  // [offset, offset+len) fail with `err`.
  void fail_reads(uint64_t offset, uint64_t len, int err, int count);
  void fail_writes(uint64_t offset, uint64_t len, int err, int count);
  void clear_failures();

  std::vector<uint8_t> durable() const;  // as after a power cut now
  std::vector<uint8_t> current() const;  // what reads return now
  const std::shared_ptr<FaultDisk>& disk() const { return disk_; }

 private:
  friend class FaultDisk;
  static constexpr uint64_t kTearUnit = 4096;  // an unflushed write survives a cut per aligned unit
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
  static void apply(std::vector<uint8_t>& img, const Record& r);
  static Status check_failure(std::vector<Failure>& list, uint64_t offset, uint64_t len, const char* op);
  Status store(Record r, bool fua);
  // Power cut: keep each pending write with probability `survival`, drop the rest.
  void cut_locked(std::mt19937_64& rng, double survival);

  std::shared_ptr<FaultDisk> disk_;
  std::vector<uint8_t> durable_;
  std::vector<uint8_t> cache_;  // durable + pending, what reads see
  std::vector<Record> pending_;
  std::vector<Failure> read_failures_, write_failures_;
};

}  // namespace udm
