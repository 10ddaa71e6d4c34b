// LSMT readers and the layered device: read-only layers (committed or sealed
// files, raw or through ZFile) merged into one index, optionally topped by a
// writable layer in the reference's RW format (data file + index file).
#pragma once

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <mutex>
#include <shared_mutex>

#include "device/target.h"
#include "io/grow_file.h"
#include "overlaybd/lsmt_format.h"

namespace udm::obd {

// One read-only layer: its decompressed LSMT file and parsed index.
struct LsmtLayer {
  std::string name;
  DevicePtr file;             // the LSMT bytes (raw file or ZFileDevice)
  LsmtHeader header;          // from offset 0
  LsmtHeader trailer;         // final fields
  std::vector<LsmtEntry> entries;  // valid entries, sorted
  uint64_t padding_entries = 0;
};

// Opens a committed or sealed LSMT file (trailer at file size - 4096).
Result<LsmtLayer> open_lsmt_layer(DevicePtr file, std::string name = "");

// The writable layer's files, opened or created.
struct RwLayerFiles {
  GrowFilePtr data, index;
};

// Writes the headers of a new, empty RW layer (data header flags 3, index
// header flags 1 with index_offset 4096).
Status create_rw_layer(GrowFile& data, GrowFile& index, uint64_t vsize, const std::string& uuid,
                       const std::string& parent_uuid);

class LsmtDevice : public Target {
 public:
  struct Options {
    bool check_chain = true;  // parent_uuid of each layer == uuid of the one below
  };
  // layers: lowest first. rw: optional writable top layer.
  static Result<std::shared_ptr<LsmtDevice>> open(std::vector<LsmtLayer> layers,
                                                  std::optional<RwLayerFiles> rw, Options opts);
  static Result<std::shared_ptr<LsmtDevice>> open(std::vector<LsmtLayer> layers,
                                                  std::optional<RwLayerFiles> rw) {
    return open(std::move(layers), std::move(rw), Options{});
  }
  ~LsmtDevice() override;

  std::string type() const override { return "lsmt"; }
  uint64_t size() const override { return length_; }  // the table's length (<= virtual size)
  DeviceCaps caps() const override;
  std::string status() const override;
  void postsuspend() override { (void)flush(); }

  uint64_t virtual_size() const { return vsize_; }
  size_t merged_segments() const { return ro_.size(); }
  size_t layer_count() const { return layers_.size(); }
  bool writable() const { return rw_.has_value(); }
  // The RW layer's current merged mapping (sorted segments, layer field 0).
  std::vector<Seg> rw_segments() const;
  const LsmtHeader& rw_header() const { return rw_header_; }
  const std::vector<LsmtLayer>& layers() const { return layers_; }
  // Reads sectors [off, off+len) of the RW data file (for commit).
  Status read_rw_data(uint64_t byte_off, std::span<uint8_t> buf);
  // Size the segment is limited to (table length), may be < vsize.
  void set_length(uint64_t len) { length_ = std::min(len, vsize_); }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override;
  Status do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) override;
  Status do_trim(uint64_t off, uint64_t len) override;
  Status do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool may_unmap) override;
  Status do_flush() override;
  // Unmapped extents are holes, zeroed extents zero, the rest data; depth 1
  // is the RW layer (or the top read-only layer without one), 2 the next...
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override;

 private:
  LsmtDevice() = default;
  Status read_aligned(uint64_t sector, uint64_t nsect, uint8_t* out);
  Status read_ro(uint64_t start, uint64_t end, uint8_t* out);
  Status write_aligned(uint64_t sector, std::span<const uint8_t> buf);
  Status zero_aligned(uint64_t sector, uint64_t nsect);

  std::vector<LsmtLayer> layers_;
  std::vector<Seg> ro_;  // merged read-only index, sorted (layer = index into layers_)
  uint64_t vsize_ = 0;
  uint64_t length_ = 0;
  // Writable layer.
  std::optional<RwLayerFiles> rw_;
  LsmtHeader rw_header_;
  mutable std::shared_mutex mu_;  // guards rw_map_, data_end_, pending_
  SegMap rw_map_;
  uint64_t data_end_ = 0;               // bytes, next append position in the data file
  uint64_t index_end_ = 0;              // bytes, next record position in the index file
  std::vector<LsmtEntry> pending_;      // records not yet written to the index file
  std::mutex flush_mu_;
  std::atomic<uint64_t> writes_{0}, discards_{0};
};

}  // namespace udm::obd
