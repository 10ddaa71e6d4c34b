// A writable view of a read-only device in which a few byte ranges (its
// "regions") live in a small local state file and every other byte reads
// through to the device below. What it is for: the update target's
// copy-back over a remote diff writes its checkpoint (and stash) into the
// diff; a remote object cannot be written, so those bytes live here instead,
// in the cache directory, keyed by the object's identity
// (BlockDevice::local_state_home, docs/remote.md "Streaming update").
//
// Writes: only inside the regions (a request touching any other byte is
// refused whole with EROFS, nothing written); pwrite into the state file,
// fua = fdatasync before returning, flush() = fdatasync: the durability a
// local diff file gives (FileDevice), so the copy-back's ordering holds.
// Reads: region bytes from the state file, the rest from the device below.
//
// The state file (little-endian):
//   [0, 4096)  header
//     0   magic[8]       "UDMOVL01"
//     8   base_size u64  the device's size when the file was made
//     16  count u32      regions (1..kMaxRegions)
//     20  key_len u32    (<= kMaxKey)
//     24  crc u32        CRC-32 (zlib's) of the 4096 header bytes, this field zero
//     28  zero u32
//     32  count x {offset u64, length u64}: sorted, disjoint, inside base_size
//     32 + 16*count      the key (the device's identity, LocalStateHome::key)
//   then each region's bytes in order, each starting at a multiple of 4096.
// Made once, crash-safely: the header and the regions' bytes as the device
// below holds them now are written to PATH.tmp, fsynced, renamed to PATH,
// and the directory fsynced; afterwards only region bytes change. A file
// for another key (the object changed: its name would differ; a file
// copied or misnamed by hand) is not used but replaced; a damaged file, or
// one made for other regions of the same key, is refused naming the file.
//
// One process: every overlay of one path in a process shares one open file
// (as two opens of a local diff file would), and it holds an exclusive
// flock on it; another process opening it gets EBUSY.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "device/block_device.h"

namespace udm {

struct ByteRange {
  uint64_t offset = 0, length = 0;
  bool operator==(const ByteRange&) const = default;
};

class RegionOverlayDevice : public BlockDevice {
 public:
  static constexpr size_t kHeaderSize = 4096;
  static constexpr uint32_t kMaxRegions = 64;
  static constexpr uint32_t kMaxKey = 2048;
  static constexpr uint64_t kMaxRegionBytes = 64ull << 20;

  // The overlay of `base` whose `regions` live in home.path, made (from
  // base's present bytes) if there is no usable file for home.key.
  static Result<std::shared_ptr<RegionOverlayDevice>> open(DevicePtr base, const LocalStateHome& home,
                                                           std::vector<ByteRange> regions);
  ~RegionOverlayDevice() override;

  uint64_t size() const override { return base_->size(); }
  DeviceCaps caps() const override;
  const std::string& path() const;
  // This open made the state file (nothing was persisted for this key before).
  bool created() const { return created_; }
  // Why an existing file was not used (empty if none was there, or it was).
  const std::string& replaced_reason() const { return replaced_; }
  struct File;  // the open state file of one path, shared in the process (region_overlay.cpp)

 protected:
  void do_keep_cached(uint64_t offset, uint64_t length) override { base_->keep_cached(offset, length); }
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override;
  Status do_flush() override;

 private:
  RegionOverlayDevice() = default;
  DevicePtr base_;
  std::shared_ptr<File> file_;
  bool created_ = false;
  std::string replaced_;
};

// What a state file's header says, read without changing anything (`udm
// cache ls`); Corrupt if it is not a valid one.
struct RegionOverlayInfo {
  std::string key;
  uint64_t base_size = 0;
  std::vector<ByteRange> regions;
  uint64_t region_bytes = 0;
};
Result<RegionOverlayInfo> read_region_overlay(const std::string& path);
// The 4096-byte header, both ways (every field validated when decoding:
// magic, CRC, the zero field, counts, regions sorted, disjoint and inside
// base_size, zero bytes after the key). Fuzzed by fuzz_region_overlay.
std::vector<uint8_t> encode_region_overlay_header(const std::string& key, uint64_t base_size,
                                                  const std::vector<ByteRange>& rs);
Result<RegionOverlayInfo> decode_region_overlay_header(std::span<const uint8_t> header);

}  // namespace udm
