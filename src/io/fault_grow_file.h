// A growable file with FaultDevice's crash model (io/fault_model.h), for the
// power-cut sweeps of everything that writes through io/grow_file.h: writes
// land in a volatile cache and become durable on sync() (fdatasync of this
// file); a power cut drops the unflushed writes, or keeps each with
// probability p (set_unflushed_survival on the disk); the durable size is the
// size at the last sync (extended by surviving writes in survival mode);
// cut_after_writes(N) on the disk counts pwrite() calls (sync() is not a
// write-type operation unless the disk's set_cut_at_flushes(true) makes
// every sync a cut point too). Several files made on one FaultDisk lose
// power together, as the files of one filesystem do:
//
//   auto disk = std::make_shared<FaultDisk>();
//   auto data = std::make_shared<FaultGrowFile>(disk), index = std::make_shared<FaultGrowFile>(disk);
//   disk->cut_after_writes(n);
//   ... run the writer ...
//   disk->power_cut();
//   reopen on MemGrowFile(data->durable()), MemGrowFile(index->durable())
#pragma once

#include <memory>
#include <vector>

#include "io/fault_model.h"
#include "io/grow_file.h"

namespace udm {

class FaultGrowFile : public GrowFile {
 public:
  explicit FaultGrowFile(std::shared_ptr<FaultDisk> disk = std::make_shared<FaultDisk>(),
                         std::vector<uint8_t> initial = {})
      : img_(std::move(disk), std::move(initial)) {}

  uint64_t size() const override { return img_.size(); }
  Status pread(uint64_t off, std::span<uint8_t> buf) override { return img_.read(off, buf); }
  Status pwrite(uint64_t off, std::span<const uint8_t> buf) override { return img_.write(off, buf, false); }
  Status sync() override { return img_.flush(); }

  FaultDisk& disk() const { return *img_.disk(); }
  void fail_reads(uint64_t offset, uint64_t len, int err = EIO, int count = -1) {
    img_.fail_reads(offset, len, err, count);
  }
  void fail_writes(uint64_t offset, uint64_t len, int err = EIO, int count = -1) {
    img_.fail_writes(offset, len, err, count);
  }
  // The file after a power cut now (its size is the vector's), and now.
  std::vector<uint8_t> durable() const { return img_.durable(); }
  std::vector<uint8_t> contents() const { return img_.current(); }

 private:
  FaultImage img_;
};

}  // namespace udm
