#include "snapshot/cow_format.h"

#include <algorithm>
#include <cstdio>
#include <unordered_set>

#include "util/endian.h"

namespace udm::snapshot {

Status validate_chunk_sectors(uint64_t cs, const std::string& what) {
  if (cs == 0) return Invalid(what + ": chunk size is 0 sectors");
  if ((cs & (cs - 1)) != 0)
    return Invalid(what + ": chunk size " + std::to_string(cs) + " sectors is not a power of two");
  if (cs * kSectorSize > kMaxChunkBytes)
    return Invalid(what + ": chunk size " + std::to_string(cs) + " sectors is too large");
  return Status::Ok();
}

Result<CowGeometry> make_geometry(uint32_t chunk_sectors) {
  UDM_TRY(validate_chunk_sectors(chunk_sectors, "chunk_size"));
  CowGeometry g;
  g.chunk_sectors = chunk_sectors;
  g.chunk_bytes = uint64_t(chunk_sectors) * kSectorSize;
  g.per_area = g.chunk_bytes / kRecordSize;
  return g;
}

CowHeader decode_header(std::span<const uint8_t> b) {
  CowHeader h;
  if (b.size() < 16) return h;
  h.magic = le32(b.data());
  h.valid = le32(b.data() + 4);
  h.version = le32(b.data() + 8);
  h.chunk_sectors = le32(b.data() + 12);
  return h;
}

std::vector<uint8_t> encode_header_chunk(const CowHeader& h, uint64_t chunk_bytes) {
  std::vector<uint8_t> out(std::max<uint64_t>(chunk_bytes, 16), 0);
  put_le32(out.data(), h.magic);
  put_le32(out.data() + 4, h.valid);
  put_le32(out.data() + 8, h.version);
  put_le32(out.data() + 12, h.chunk_sectors);
  return out;
}

std::vector<uint8_t> encode_area(std::span<const CowRecord> records, uint64_t chunk_bytes) {
  std::vector<uint8_t> out(chunk_bytes, 0);
  size_t n = std::min<size_t>(records.size(), chunk_bytes / kRecordSize);
  for (size_t i = 0; i < n; i++) {
    put_le64(out.data() + i * kRecordSize, records[i].old_chunk);
    put_le64(out.data() + i * kRecordSize + 8, records[i].new_chunk);
  }
  return out;
}

Result<ParsedCow> parse_cow(std::span<const uint8_t> first, uint64_t cow_bytes,
                            uint64_t origin_bytes, uint32_t table_cs, const ChunkReader& read) {
  ParsedCow p;
  if (first.size() < 16) return Corrupt("COW header: shorter than 16 bytes");
  p.header = decode_header(first);
  if (table_cs != 0) UDM_TRY(validate_chunk_sectors(table_cs, "table chunk_size"));
  if (p.header.magic == 0) {
    // A brand-new store: the kernel formats it with the table's chunk size.
    uint32_t cs = table_cs ? table_cs : kDefaultChunkSectors;
    UDM_ASSIGN_OR_RETURN(p.geo, make_geometry(cs));
    if (cow_bytes < 3 * p.geo.chunk_bytes)
      return NoSpace("COW: " + std::to_string(cow_bytes) + " bytes is too small for a store of " +
                     std::to_string(p.geo.chunk_bytes) + "-byte chunks (needs 3 chunks)");
    p.kind = ParsedCow::Kind::kNew;
    return p;
  }
  if (p.header.magic != kCowMagic)
    return Corrupt("COW header: bad magic 0x" + [&] {
      char b[16];
      snprintf(b, sizeof b, "%08x", p.header.magic);
      return std::string(b);
    }() + " (expected \"SnAp\"): invalid or corrupt snapshot");
  if (p.header.version != kCowVersion)
    return Corrupt("COW header: unsupported version " + std::to_string(p.header.version) +
                   " (only 1)");
  if (p.header.valid > 1)
    return Corrupt("COW header: valid flag " + std::to_string(p.header.valid) + " is neither 0 nor 1");
  UDM_TRY(validate_chunk_sectors(p.header.chunk_sectors, "COW header"));
  UDM_ASSIGN_OR_RETURN(p.geo, make_geometry(p.header.chunk_sectors));
  const CowGeometry& g = p.geo;
  uint64_t cow_chunks = cow_bytes / g.chunk_bytes;
  if (cow_chunks < 2)
    return Corrupt("COW: " + std::to_string(cow_bytes) +
                   " bytes cannot hold the header and metadata area 0 of " +
                   std::to_string(g.chunk_bytes) + "-byte chunks");
  if (p.header.valid == 0) {
    p.kind = ParsedCow::Kind::kInvalid;  // the table of an invalid store is never read
    return p;
  }
  p.kind = ParsedCow::Kind::kValid;
  uint64_t origin_chunks = (origin_bytes + g.chunk_bytes - 1) / g.chunk_bytes;
  std::vector<uint8_t> area(g.chunk_bytes);
  std::unordered_set<uint64_t> olds, news;
  for (uint64_t k = 0;; k++) {
    uint64_t ac = g.area_chunk(k);
    if (ac >= cow_chunks)
      return Corrupt("COW metadata area " + std::to_string(k) + " (chunk " + std::to_string(ac) +
                     ") lies past the end of the COW: the table has no terminator");
    UDM_TRY(read(ac, area));
    for (uint64_t i = 0; i < g.per_area; i++) {
      CowRecord r{le64(area.data() + i * kRecordSize), le64(area.data() + i * kRecordSize + 8)};
      if (r.new_chunk == 0) return p;  // terminator
      std::string where = "COW exception " + std::to_string(p.records.size()) + " (area " +
                          std::to_string(k) + " record " + std::to_string(i) + ")";
      if (r.old_chunk >= origin_chunks)
        return Corrupt(where + ": old_chunk " + std::to_string(r.old_chunk) +
                       " is past the end of the origin (" + std::to_string(origin_chunks) +
                       " chunks)");
      if (r.new_chunk >= cow_chunks)
        return Corrupt(where + ": new_chunk " + std::to_string(r.new_chunk) +
                       " is past the end of the COW (" + std::to_string(cow_chunks) + " chunks)");
      if (r.new_chunk < 2 || g.is_area_chunk(r.new_chunk))
        return Corrupt(where + ": new_chunk " + std::to_string(r.new_chunk) +
                       " is the header or a metadata area");
      if (!olds.insert(r.old_chunk).second)
        return Corrupt(where + ": duplicate old_chunk " + std::to_string(r.old_chunk));
      if (!news.insert(r.new_chunk).second)
        return Corrupt(where + ": new_chunk " + std::to_string(r.new_chunk) +
                       " is used by two exceptions");
      p.records.push_back(r);
      p.max_new_chunk = std::max(p.max_new_chunk, r.new_chunk);
    }
  }
}

uint64_t cow_chunks_needed(uint64_t n, uint64_t per_area) {
  return 1 + 1 + n + (per_area ? n / per_area : 0);
}

}  // namespace udm::snapshot
