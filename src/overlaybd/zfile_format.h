// ZFile on-disk format (docs/overlaybd.md, "ZFile"): pure parse/encode
// functions, no I/O, so they can be fuzzed and unit-tested on byte buffers.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm::obd {

constexpr size_t kZFileHeaderSize = 512;
constexpr uint32_t kZFileStructSize = 96;
constexpr uint32_t kZFileBlockCrcSeed = 100007;
constexpr uint64_t kZFileMaxIndexEntries = 1000000000ull;

enum ZFileFlag : uint64_t {
  kZfIsHeader = 1u << 0,
  kZfIsDataFile = 1u << 1,
  kZfSealed = 1u << 2,
  kZfHeaderOverwrite = 1u << 3,
  kZfDigest = 1u << 4,
  kZfIndexCompressed = 1u << 5,
};

enum class ZAlgo : uint8_t { kLz4 = 1, kZstd = 2 };

struct ZFileHeader {
  uint32_t digest = 0;
  uint64_t flags = 0;
  uint64_t index_offset = 0;
  uint64_t index_size = 0;  // entries (= blocks)
  uint64_t original_file_size = 0;
  uint32_t index_crc = 0;
  uint32_t block_size = 4096;
  uint8_t algo = 1;
  uint8_t level = 0;
  uint8_t use_dict = 0;
  uint32_t dict_size = 0;
  uint8_t verify = 1;

  bool has(uint64_t f) const { return (flags & f) != 0; }
};

// True if the buffer starts with ZFile's magic0.
bool is_zfile_magic(std::span<const uint8_t> buf);

// Decodes and validates one 512-byte header or trailer. `what` ("header" /
// "trailer") prefixes messages. Checks magics, size, digest (when flag bit 4),
// block size, algorithm, dictionary and verify fields.
Result<ZFileHeader> parse_zfile_header(std::span<const uint8_t> buf, const char* what);

// Encodes a 512-byte header/trailer; computes `digest` when flag bit 4 is set.
void encode_zfile_header(const ZFileHeader& h, std::span<uint8_t> out);

// Validated geometry of a whole ZFile, from its final fields and raw index.
struct ZFileLayout {
  ZFileHeader h;                 // the final fields (from the overwritten header or trailer)
  std::vector<uint64_t> starts;  // starts[i] = file offset of stored block i; starts[N] = index_offset
  uint64_t num_blocks() const { return starts.empty() ? 0 : starts.size() - 1; }
};

// Picks the final fields: the header itself if header_overwrite, else the
// trailer (validated: not a header, data file, sealed). `file_size` is the
// ZFile blob size. Checks index_offset/index_size/original_file_size bounds.
Result<ZFileHeader> zfile_final_fields(const ZFileHeader& header, const ZFileHeader* trailer,
                                       uint64_t file_size);

// Validates the raw index (4*N bytes) against the final fields and builds
// block offsets. Checks index_crc, per-entry lengths, sum == index region.
Result<ZFileLayout> zfile_build_layout(const ZFileHeader& fin, std::span<const uint8_t> index,
                                       uint64_t file_size);

// Decompresses stored block `blk` (bytes incl. its CRC if verify) into `out`,
// whose size is the block's uncompressed length. Verifies the CRC.
Status zfile_decode_block(const ZFileHeader& h, uint64_t blk, std::span<const uint8_t> stored,
                          std::span<uint8_t> out);

// Compresses one block (appends CRC when verify). `out` is replaced.
Status zfile_encode_block(ZAlgo algo, bool verify, std::span<const uint8_t> in,
                          std::vector<uint8_t>& out);

}  // namespace udm::obd
