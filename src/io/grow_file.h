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

// In-memory file with a volatile cache, for crash tests: writes become durable
// on sync(); cut_after_writes(n) lets n more pwrite() calls succeed, then the
// power is cut (that write and all later I/O fail); durable() is the content
// after the cut. The durable size grows only with synced writes.
class MemGrowFile : public GrowFile {
 public:
  explicit MemGrowFile(std::vector<uint8_t> init = {}) : cache_(init), durable_(std::move(init)) {}
  uint64_t size() const override;
  Status pread(uint64_t off, std::span<uint8_t> buf) override;
  Status pwrite(uint64_t off, std::span<const uint8_t> buf) override;
  Status sync() override;
  void cut_after_writes(int64_t n);
  std::vector<uint8_t> durable() const;
  std::vector<uint8_t> contents() const;

 private:
  mutable std::mutex mu_;
  std::vector<uint8_t> cache_, durable_;
  int64_t budget_ = -1;
  bool dead_ = false;
};

}  // namespace udm
