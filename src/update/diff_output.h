// Where a diff generator's bytes go (a GrowFile: a file, a block device, or
// MemGrowFile in crash tests) and in which order, so that a power cut while a
// diff is written never leaves a file that loads as a diff with wrong content.
//
// The order, for both formats: (1) if the file already holds bytes, its
// header region is zeroed and synced, so it no longer loads; (2) everything
// after the header region is written and synced; (3) the header is written
// and synced. Until (3) is durable byte 0 holds no magic and every loader
// refuses the file; once it is, every byte the header describes is durable.
// The bytes of the diff are the same whatever the order.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "io/grow_file.h"

namespace udm::update {

class DiffOutput {
 public:
  // header_bytes: the region at the start that is written last (v0 4096, v1 512).
  DiffOutput(GrowFile& f, uint64_t header_bytes) : f_(f), header_bytes_(header_bytes), pos_(header_bytes) {}
  Status begin();                                // (1)
  Status append(std::span<const uint8_t> bytes);  // (2), from header_bytes on
  Status finish(std::span<const uint8_t> header);  // sync, (3)
  uint64_t pos() const { return pos_; }           // end of what was appended

 private:
  GrowFile& f_;
  uint64_t header_bytes_;
  uint64_t pos_;
};

// Opens `path` to receive a diff: a regular file is created, or emptied if it
// exists (as O_TRUNC did); a block device is written in place (FileDevice).
// Errors read as update-diff always printed them: "create PATH: ...",
// "write PATH: ...", "fsync PATH: ...".
Result<GrowFilePtr> open_diff_output(const std::string& path);

}  // namespace udm::update
