// A file that grows by writing past its end: the RW layer's data and index
// files are append-only and have no fixed size, unlike a BlockDevice.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm {

class GrowFile {
 public:
  virtual ~GrowFile() = default;
  virtual uint64_t size() const = 0;
  // Bytes past the end read as zeros.
  virtual Status pread(uint64_t off, std::span<uint8_t> buf) = 0;
  virtual Status pwrite(uint64_t off, std::span<const uint8_t> buf) = 0;
  // Everything written before this call is durable after it returns OK.
  virtual Status sync() = 0;
};
using GrowFilePtr = std::shared_ptr<GrowFile>;

// POSIX file. create: O_CREAT|O_EXCL (fails if it exists).
Result<GrowFilePtr> open_grow_file(const std::string& path, bool writable, bool create = false);

// An in-memory file (tests, tools, fuzzers). For crash tests use
// FaultGrowFile (io/fault_grow_file.h): FaultDevice's model for files.
class MemGrowFile : public GrowFile {
 public:
  explicit MemGrowFile(std::vector<uint8_t> init = {}) : data_(std::move(init)) {}
  uint64_t size() const override;
  Status pread(uint64_t off, std::span<uint8_t> buf) override;
  Status pwrite(uint64_t off, std::span<const uint8_t> buf) override;
  Status sync() override { return Status::Ok(); }
  std::vector<uint8_t> contents() const;

 private:
  mutable std::mutex mu_;
  std::vector<uint8_t> data_;
};

}  // namespace udm
