// LSMT on-disk format (docs/overlaybd.md, "LSMT"): headers, 16-byte index
// entries, index validation and merging. Pure functions, no I/O.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm::obd {

constexpr size_t kLsmtHeaderSize = 4096;
constexpr uint32_t kLsmtStructSize = 390;
constexpr uint64_t kLsmtInvalidOffset = (1ull << 50) - 1;
constexpr uint32_t kLsmtMaxEntryLen = 16383;     // 14-bit length field
constexpr uint32_t kLsmtRwMaxWrite = 8192;       // RW writes split at 4 MiB
constexpr uint64_t kLsmtMaxRoEntries = 1000000;  // reference limit for read-only files
constexpr size_t kUuidText = 37;                 // 36 chars + NUL

enum LsmtFlag : uint32_t {
  kLfIsHeader = 1u << 0,
  kLfIsDataFile = 1u << 1,
  kLfSealed = 1u << 2,
  kLfGcLayer = 1u << 3,
  kLfSparseRw = 1u << 4,
  kLfInfoValid = 1u << 5,
};

struct LsmtHeader {
  uint32_t flags = 0;
  uint64_t index_offset = 0;
  uint64_t index_size = 0;
  uint64_t virtual_size = 0;
  std::string uuid = "00000000-0000-0000-0000-000000000000";
  std::string parent_uuid = "00000000-0000-0000-0000-000000000000";
  uint8_t version = 1;
  uint8_t sub_version = 1;
  std::string user_tag;  // up to 256 bytes
  bool has(uint32_t f) const { return (flags & f) != 0; }
};

// One index entry; offsets and lengths in 512-byte sectors.
struct LsmtEntry {
  uint64_t offset = 0;
  uint32_t length = 0;
  uint64_t moffset = 0;
  bool zeroed = false;
  uint8_t tag = 0;
  uint64_t end() const { return offset + length; }
  bool invalid() const { return offset == kLsmtInvalidOffset; }
};

LsmtEntry decode_lsmt_entry(const uint8_t* p);
void encode_lsmt_entry(const LsmtEntry& e, uint8_t* p);
LsmtEntry lsmt_padding_entry();

bool is_lsmt_magic(std::span<const uint8_t> buf);
bool is_zero_uuid(const std::string& u);
// Validates the text form (36 chars, hex digits and dashes at 8/13/18/23).
bool valid_uuid_text(const std::string& u);
std::string random_uuid();

Result<LsmtHeader> parse_lsmt_header(std::span<const uint8_t> buf, const char* what);
void encode_lsmt_header(const LsmtHeader& h, std::span<uint8_t> out);  // out: 4096 bytes

// A mapping in a merged index: virtual sectors [start, end) -> `layer` at
// sector `moffset` (zeroed: reads as zeros). Runtime only, no length limit.
struct Seg {
  uint64_t start = 0, end = 0;
  uint64_t moffset = 0;
  uint32_t layer = 0;
  bool zeroed = false;
};

// Ordered, non-overlapping interval map with "later insert wins".
class SegMap {
 public:
  void insert(const Seg& s);
  const std::map<uint64_t, Seg>& map() const { return m_; }
  std::vector<Seg> to_vector() const;
  size_t size() const { return m_.size(); }

 private:
  std::map<uint64_t, Seg> m_;  // key = start
};

// Parses a committed/sealed file's index region (exactly index_size entries
// from the trailer): drops padding, requires sorted + non-overlapping, and
// every data entry inside [4096/512, index_offset/512).
Result<std::vector<LsmtEntry>> parse_ro_index(std::span<const uint8_t> index, uint64_t index_offset);

// Parses RW index records (in file order; later wins) into sorted segments
// (layer field 0). Data entries must lie inside [8, data_size/512).
Result<std::vector<Seg>> parse_rw_index(std::span<const uint8_t> records, uint64_t data_size);

// Commit's entry compaction: merge neighbours contiguous in offset and
// moffset (or both zeroed), combined length < 16383.
std::vector<LsmtEntry> merge_commit_entries(const std::vector<LsmtEntry>& in);

// Looks up the segments covering [start, end) in a sorted vector; calls
// f(piece_start, piece_end, seg or nullptr for holes).
template <class F>
void walk_segments(const std::vector<Seg>& v, uint64_t start, uint64_t end, F&& f) {
  // first seg with end > start
  size_t lo = 0, hi = v.size();
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (v[mid].end <= start) lo = mid + 1; else hi = mid;
  }
  uint64_t pos = start;
  for (size_t i = lo; i < v.size() && pos < end; i++) {
    const Seg& s = v[i];
    if (s.start >= end) break;
    if (s.start > pos) { f(pos, s.start, nullptr); pos = s.start; }
    uint64_t e = std::min(s.end, end);
    f(pos, e, &s);
    pos = e;
  }
  if (pos < end) f(pos, end, nullptr);
}

}  // namespace udm::obd
