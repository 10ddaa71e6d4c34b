// The Linux kernel's persistent exception store ("COW") format, disk
// version 1, as pure encode/decode functions (no I/O of their own, so the
// parser can be fuzzed). See docs/snapshot.md for the layout in prose.
//
//   chunk 0            header: u32 magic "SnAp", u32 valid, u32 version=1,
//                      u32 chunk_size (sectors); rest of the chunk zero
//   chunk 1+k*(E+1)    metadata area k: E records {u64 old_chunk, u64 new_chunk}
//   the E chunks after each area: data chunks
//
// E = chunk_bytes / 16. The table ends at the first record with new_chunk 0.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm::snapshot {

constexpr uint32_t kCowMagic = 0x70416E53;  // bytes "SnAp" on disk
constexpr uint32_t kCowVersion = 1;
constexpr uint32_t kSectorSize = 512;
constexpr uint32_t kDefaultChunkSectors = 32;  // the kernel's default (16 KiB)
constexpr uint32_t kRecordSize = 16;
constexpr uint64_t kMaxChunkBytes = (1u << 31) - 1;

struct CowHeader {
  uint32_t magic = 0;
  uint32_t valid = 0;
  uint32_t version = 0;
  uint32_t chunk_sectors = 0;
};

struct CowRecord {
  uint64_t old_chunk = 0;  // chunk number on the origin
  uint64_t new_chunk = 0;  // chunk number on the COW holding the saved data
  bool operator==(const CowRecord&) const = default;
};

// Geometry derived from the chunk size.
struct CowGeometry {
  uint32_t chunk_sectors = 0;
  uint64_t chunk_bytes = 0;
  uint64_t per_area = 0;  // E: records per metadata area
  uint64_t area_chunk(uint64_t k) const { return 1 + k * (per_area + 1); }
  bool is_area_chunk(uint64_t c) const { return c >= 1 && (c - 1) % (per_area + 1) == 0; }
};

// Checks a chunk size (sectors): non-zero power of two, at most 2^31-1 bytes.
// `what` names where the value came from in the message.
Status validate_chunk_sectors(uint64_t chunk_sectors, const std::string& what);
Result<CowGeometry> make_geometry(uint32_t chunk_sectors);

// First 16 bytes of chunk 0. Does not judge the values.
CowHeader decode_header(std::span<const uint8_t> bytes);
// A whole header chunk (header followed by zeros), chunk_bytes long.
std::vector<uint8_t> encode_header_chunk(const CowHeader& h, uint64_t chunk_bytes);

// Encodes records (at most E) into one metadata area chunk, zero filled.
std::vector<uint8_t> encode_area(std::span<const CowRecord> records, uint64_t chunk_bytes);

// What a load of a COW found.
struct ParsedCow {
  enum class Kind { kNew, kValid, kInvalid } kind = Kind::kNew;
  CowHeader header;
  CowGeometry geo;
  std::vector<CowRecord> records;  // commit order (area 0 first)
  uint64_t max_new_chunk = 0;      // 0 when there are no records
};

// Reads chunk `chunk` of the COW into `buf` (buf.size() == chunk_bytes).
using ChunkReader = std::function<Status(uint64_t chunk, std::span<uint8_t> buf)>;

// Parses a COW: `first_sector` is the first 512 bytes of the COW; the areas
// are fetched through `read`. `table_chunk_sectors` is the table's value (0:
// take the header's / the default). Validates every field: magic, version,
// chunk size (power of two, fits the COW), every record's old_chunk below
// origin_chunks, new_chunk >= 2, not an area chunk, inside the COW, and no
// old_chunk or new_chunk twice. Errors name the field and the record.
Result<ParsedCow> parse_cow(std::span<const uint8_t> first_sector, uint64_t cow_bytes,
                            uint64_t origin_bytes, uint32_t table_chunk_sectors,
                            const ChunkReader& read);

// The seed's sizing formula: 1 header + 1 + n + n / E chunks.
uint64_t cow_chunks_needed(uint64_t changed_chunks, uint64_t per_area);

}  // namespace udm::snapshot
