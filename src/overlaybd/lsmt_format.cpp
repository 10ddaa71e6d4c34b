#include "overlaybd/lsmt_format.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "util/endian.h"

namespace udm::obd {
namespace {

constexpr uint8_t kMagic0[8] = {'L', 'S', 'M', 'T', 0, 1, 2, 0};
constexpr uint8_t kMagic1[16] = {0x65, 0x7E, 0x63, 0xD2, 0x94, 0x44, 0x08, 0x4C,
                                 0xA2, 0xD2, 0xC8, 0xEC, 0x4F, 0xCF, 0xAE, 0x8A};

std::string read_cstr(const uint8_t* p, size_t max) {
  size_t n = 0;
  while (n < max && p[n]) n++;
  return std::string(reinterpret_cast<const char*>(p), n);
}

}  // namespace

LsmtEntry decode_lsmt_entry(const uint8_t* p) {
  uint64_t lo = le64(p), hi = le64(p + 8);
  LsmtEntry e;
  e.offset = lo & ((1ull << 50) - 1);
  e.length = static_cast<uint32_t>(lo >> 50);
  e.moffset = hi & ((1ull << 55) - 1);
  e.zeroed = (hi >> 55) & 1;
  e.tag = static_cast<uint8_t>(hi >> 56);
  return e;
}

void encode_lsmt_entry(const LsmtEntry& e, uint8_t* p) {
  uint64_t lo = (e.offset & ((1ull << 50) - 1)) | (static_cast<uint64_t>(e.length & 0x3FFF) << 50);
  uint64_t hi = (e.moffset & ((1ull << 55) - 1)) | (static_cast<uint64_t>(e.zeroed) << 55) |
                (static_cast<uint64_t>(e.tag) << 56);
  put_le64(p, lo);
  put_le64(p + 8, hi);
}

LsmtEntry lsmt_padding_entry() {
  LsmtEntry e;
  e.offset = kLsmtInvalidOffset;
  return e;
}

bool is_lsmt_magic(std::span<const uint8_t> buf) {
  return buf.size() >= 24 && std::memcmp(buf.data(), kMagic0, 8) == 0 &&
         std::memcmp(buf.data() + 8, kMagic1, 16) == 0;
}

bool is_zero_uuid(const std::string& u) {
  return u.empty() || u == "00000000-0000-0000-0000-000000000000";
}

bool valid_uuid_text(const std::string& u) {
  if (u.size() != 36) return false;
  for (size_t i = 0; i < 36; i++) {
    char c = u[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

std::string random_uuid() {
  std::random_device rd;
  uint8_t b[16];
  for (auto& x : b) x = static_cast<uint8_t>(rd());
  b[6] = (b[6] & 0x0F) | 0x40;
  b[8] = (b[8] & 0x3F) | 0x80;
  std::string s;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += fmt::format("{:02X}", b[i]);
  }
  return s;
}

Result<LsmtHeader> parse_lsmt_header(std::span<const uint8_t> buf, const char* what) {
  if (buf.size() < kLsmtStructSize)
    return Corrupt(fmt::format("lsmt {}: truncated ({} bytes)", what, buf.size()));
  const uint8_t* p = buf.data();
  if (std::memcmp(p, kMagic0, 8) != 0) return Corrupt(fmt::format("lsmt {}: bad magic0", what));
  if (std::memcmp(p + 8, kMagic1, 16) != 0) return Corrupt(fmt::format("lsmt {}: bad magic1", what));
  uint32_t size = le32(p + 24);
  if (size != kLsmtStructSize)
    return Corrupt(fmt::format("lsmt {}: field size is {}, expected 390", what, size));
  LsmtHeader h;
  h.flags = le32(p + 28);
  h.index_offset = le64(p + 32);
  h.index_size = le64(p + 40);
  h.virtual_size = le64(p + 48);
  h.uuid = read_cstr(p + 56, kUuidText);
  h.parent_uuid = read_cstr(p + 93, kUuidText);
  h.version = p[132];
  h.sub_version = p[133];
  h.user_tag = read_cstr(p + 134, 256);
  if (h.flags >> 6) return Corrupt(fmt::format("lsmt {}: field flags has unknown bits 0x{:x}", what, h.flags));
  if (h.version != 1)
    return Corrupt(fmt::format("lsmt {}: field version {} unsupported (only 1)", what, h.version));
  if (h.virtual_size % 512) return Corrupt(fmt::format("lsmt {}: field virtual_size {} not a multiple of 512", what, h.virtual_size));
  if (h.virtual_size > (kLsmtInvalidOffset << 9))
    return Corrupt(fmt::format("lsmt {}: field virtual_size {} too large", what, h.virtual_size));
  if (!h.uuid.empty() && !valid_uuid_text(h.uuid))
    return Corrupt(fmt::format("lsmt {}: field uuid is not a UUID", what));
  if (!h.parent_uuid.empty() && !valid_uuid_text(h.parent_uuid))
    return Corrupt(fmt::format("lsmt {}: field parent_uuid is not a UUID", what));
  return h;
}

void encode_lsmt_header(const LsmtHeader& h, std::span<uint8_t> out) {
  std::memset(out.data(), 0, kLsmtHeaderSize);
  uint8_t* p = out.data();
  std::memcpy(p, kMagic0, 8);
  std::memcpy(p + 8, kMagic1, 16);
  put_le32(p + 24, kLsmtStructSize);
  put_le32(p + 28, h.flags);
  put_le64(p + 32, h.index_offset);
  put_le64(p + 40, h.index_size);
  put_le64(p + 48, h.virtual_size);
  std::string u = h.uuid.empty() ? "00000000-0000-0000-0000-000000000000" : h.uuid;
  std::string pu = h.parent_uuid.empty() ? "00000000-0000-0000-0000-000000000000" : h.parent_uuid;
  std::memcpy(p + 56, u.data(), std::min<size_t>(u.size(), 36));
  std::memcpy(p + 93, pu.data(), std::min<size_t>(pu.size(), 36));
  p[132] = h.version;
  p[133] = h.sub_version;
  std::memcpy(p + 134, h.user_tag.data(), std::min<size_t>(h.user_tag.size(), 256));
}

void SegMap::insert(const Seg& s) {
  if (s.start >= s.end) return;
  // Cut every existing segment overlapping [s.start, s.end).
  auto it = m_.lower_bound(s.start);
  if (it != m_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > s.start) it = prev;
  }
  std::vector<Seg> keep;
  while (it != m_.end() && it->second.start < s.end) {
    Seg old = it->second;
    it = m_.erase(it);
    if (old.start < s.start) {
      Seg l = old;
      l.end = s.start;
      keep.push_back(l);
    }
    if (old.end > s.end) {
      Seg r = old;
      if (!r.zeroed) r.moffset += s.end - old.start;
      r.start = s.end;
      keep.push_back(r);
    }
  }
  for (auto& k : keep) m_.emplace(k.start, k);
  m_.emplace(s.start, s);
}

std::vector<Seg> SegMap::to_vector() const {
  std::vector<Seg> v;
  v.reserve(m_.size());
  for (auto& [k, s] : m_) v.push_back(s);
  return v;
}

Result<std::vector<LsmtEntry>> parse_ro_index(std::span<const uint8_t> index, uint64_t index_offset) {
  if (index.size() % 16) return Corrupt("lsmt index: size not a multiple of 16");
  std::vector<LsmtEntry> out;
  out.reserve(index.size() / 16);
  uint64_t lo = kLsmtHeaderSize / 512, hi = index_offset / 512;
  for (size_t i = 0; i < index.size() / 16; i++) {
    LsmtEntry e = decode_lsmt_entry(index.data() + 16 * i);
    if (e.invalid()) continue;
    e.tag = 0;
    if (e.length == 0) return Corrupt(fmt::format("lsmt index: entry {} has length 0", i));
    if (!out.empty() && out.back().end() > e.offset)
      return Corrupt(fmt::format("lsmt index: entry {} (offset {}) unsorted or overlapping", i, e.offset));
    if (e.zeroed) {
      if (e.moffset < lo || e.moffset > hi)
        return Corrupt(fmt::format("lsmt index: zeroed entry {} field moffset {} out of range", i, e.moffset));
    } else if (e.moffset < lo || e.moffset + e.length > hi) {
      return Corrupt(fmt::format("lsmt index: entry {} field moffset {} +{} outside data [{}, {})", i,
                                 e.moffset, e.length, lo, hi));
    }
    out.push_back(e);
  }
  return out;
}

Result<std::vector<Seg>> parse_rw_index(std::span<const uint8_t> records, uint64_t data_size) {
  SegMap m;
  uint64_t lo = kLsmtHeaderSize / 512, hi = data_size / 512;
  for (size_t i = 0; i < records.size() / 16; i++) {
    LsmtEntry e = decode_lsmt_entry(records.data() + 16 * i);
    if (e.invalid()) continue;
    if (e.length == 0) return Corrupt(fmt::format("lsmt rw index: record {} has length 0", i));
    if (!e.zeroed && (e.moffset < lo || e.moffset + e.length > hi))
      return Corrupt(fmt::format("lsmt rw index: record {} field moffset {} +{} outside data file [{}, {})",
                                 i, e.moffset, e.length, lo, hi));
    m.insert(Seg{e.offset, e.end(), e.moffset, 0, e.zeroed});
  }
  return m.to_vector();
}

std::vector<LsmtEntry> merge_commit_entries(const std::vector<LsmtEntry>& in) {
  std::vector<LsmtEntry> out;
  for (const auto& e : in) {
    if (!out.empty()) {
      LsmtEntry& b = out.back();
      bool contiguous = b.end() == e.offset && b.zeroed == e.zeroed && b.tag == e.tag &&
                        (e.zeroed || b.moffset + b.length == e.moffset);
      if (contiguous && b.length + e.length < kLsmtMaxEntryLen) {
        b.length += e.length;
        continue;
      }
    }
    out.push_back(e);
  }
  return out;
}

}  // namespace udm::obd
