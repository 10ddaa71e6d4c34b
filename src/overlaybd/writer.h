// Writers: commit (RW layer -> committed LSMT file), ZFile compression (two
// worker threads), raw image -> base layer, and the tar wrapper. Output goes
// through a ByteSink so a commit can be written raw or compressed on the fly.
#pragma once

#include <functional>
#include <string>
#include <memory>

#include "device/block_device.h"
#include "io/grow_file.h"
#include "overlaybd/lsmt_format.h"
#include "overlaybd/zfile_format.h"
#include "util/progress.h"

namespace udm::obd {

// Crash safety: a writer's output is valid only once its trailer (the
// format's commit record) is there, and the trailer is written only after
// everything it describes is durable: write_committed calls barrier() before
// the LSMT trailer, the ZFile sink syncs before its trailer, seal syncs the
// index before the trailer. So after a power cut at any point the output is
// refused by the reader or complete (WriterSweep tests).
class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual Status write(std::span<const uint8_t> data) = 0;
  virtual uint64_t position() const = 0;  // bytes written so far (uncompressed)
  // Everything written so far is durable before anything written after it.
  // A sink whose own format commits at finish() (ZFile) may do nothing here.
  virtual Status barrier() = 0;
  virtual Status finish() = 0;            // flushes and makes the output durable
};

// Plain file output (optionally inside the tar wrapper).
std::unique_ptr<ByteSink> file_sink(GrowFilePtr out, bool tar = false);

struct ZFileWriteOptions {
  ZAlgo algo = ZAlgo::kLz4;
  uint32_t block_size = 4096;
  bool verify = true;
  bool overwrite_header = false;  // overlaybd-commit -z does, overlaybd-zfile does not
  int threads = 2;
  bool tar = false;
};
// Compresses everything written into a ZFile on `out`.
std::unique_ptr<ByteSink> zfile_sink(GrowFilePtr out, const ZFileWriteOptions& opts);

struct CommitOptions {
  std::string uuid;         // empty: all-zero UUID (as the reference without --uuid)
  std::string parent_uuid;  // empty: the source's parent
  std::string user_tag;
};

// Writes a committed LSMT file of one layer: `segs` (sorted, non-overlapping;
// data segments' moffset are sectors of the source) read through read_data.
using ReadFn = std::function<Status(uint64_t byte_off, std::span<uint8_t> buf)>;
Status write_committed(uint64_t vsize, const std::string& src_parent, const std::vector<Seg>& segs,
                       const ReadFn& read_data, ByteSink& out, const CommitOptions& opts,
                       Progress* progress = nullptr);

// Commit an RW layer (data + index files) to `out`.
Status commit_rw_layer(GrowFilePtr data, GrowFilePtr index, ByteSink& out, const CommitOptions& opts,
                       Progress* progress = nullptr);

// Seals an RW layer in place (the reference's close_seal): appends the merged
// index (real entries, padded to 512 bytes) and a trailer (flags 6) to the
// data file, which then opens like a committed file. The header is unchanged.
Status seal_rw_layer(GrowFilePtr data, GrowFilePtr index, const std::string& user_tag = "");

// Commit a sealed (or committed) LSMT file: same output as committing the RW pair.
Status commit_sealed(DevicePtr sealed, ByteSink& out, const CommitOptions& opts, Progress* progress = nullptr);

// Base layer from a raw image: non-zero sectors become data, zero ranges stay unmapped.
Status raw_to_layer(BlockDevice& raw, ByteSink& out, const CommitOptions& opts, Progress* progress = nullptr);

// Copies all of `in` through `out` (e.g. LSMT file -> ZFile sink).
Status copy_to_sink(BlockDevice& in, ByteSink& out, Progress* progress = nullptr);

bool parse_algo(const std::string& s, ZAlgo* out);

}  // namespace udm::obd
