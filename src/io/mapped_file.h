#pragma once
// A whole file mapped read-only, for tools that read an image all over
// (the diff generators). Holes of a sparse file are mapped as anonymous
// zero pages: a read fault on a hole of a tmpfs file allocates a page in
// the file (and a hole on disk costs a page of the page cache), so without
// this, diffing a sparse image on /dev/shm filled its holes with RAM.
#include <cstdint>
#include <span>
#include <string>

#include "util/status.h"

namespace udm {

class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // Maps `path` (an empty file maps to an empty span).
  Status open(const std::string& path);
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }
  std::span<const uint8_t> bytes() const { return {p_, n_}; }
  // Bytes of holes mapped as zero pages (whole pages only).
  uint64_t hole_bytes() const { return holes_; }

 private:
  const uint8_t* p_ = nullptr;
  size_t n_ = 0;
  uint64_t holes_ = 0;
};

}  // namespace udm
