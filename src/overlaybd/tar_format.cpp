#include "overlaybd/tar_format.h"

#include <fmt/format.h>

#include <cstring>
#include <string>

namespace udm::obd {
namespace {

uint64_t parse_octal(const uint8_t* p, size_t n, bool* ok) {
  uint64_t v = 0;
  size_t i = 0;
  while (i < n && p[i] == ' ') i++;
  bool any = false;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; i++) {
    if (v >> 60) { *ok = false; return 0; }
    v = v * 8 + (p[i] - '0');
    any = true;
  }
  for (; i < n; i++)
    if (p[i] != 0 && p[i] != ' ') { *ok = false; return 0; }
  (void)any;
  return v;
}

uint32_t checksum(const uint8_t* h) {
  uint32_t s = 0;
  for (int i = 0; i < 512; i++) s += (i >= 148 && i < 156) ? ' ' : h[i];
  return s;
}

void put_octal(uint8_t* p, size_t n, uint64_t v) {
  std::string s = fmt::format("{:0{}o}", v, n - 1);
  std::memcpy(p, s.data(), std::min(s.size(), n - 1));
  p[n - 1] = 0;
}

void fill_header(uint8_t* h, const char* name, char type, uint64_t size, uint32_t mode) {
  std::memset(h, 0, 512);
  std::strncpy(reinterpret_cast<char*>(h), name, 99);
  put_octal(h + 100, 8, mode & 07777777);
  put_octal(h + 108, 8, 0);
  put_octal(h + 116, 8, 0);
  put_octal(h + 124, 12, size);
  put_octal(h + 136, 12, 0);
  h[156] = static_cast<uint8_t>(type);
  std::memcpy(h + 257, "ustar", 6);
  std::memcpy(h + 263, "00", 2);
  std::memcpy(h + 265, "root", 4);
  std::memcpy(h + 297, "root", 4);
  uint32_t c = checksum(h);
  std::string s = fmt::format("{:06o}", c);
  std::memcpy(h + 148, s.data(), 6);
  h[154] = 0;
  h[155] = ' ';
}

}  // namespace

bool is_tar_header(std::span<const uint8_t> h) {
  if (h.size() < 512) return false;
  if (std::memcmp(h.data() + 257, "ustar", 5) != 0) return false;
  bool ok = true;
  uint64_t stored = parse_octal(h.data() + 148, 8, &ok);
  return ok && stored == checksum(h.data());
}

Result<TarMember> parse_tar_member(std::span<const uint8_t> head, uint64_t blob_size) {
  if (head.size() < 3 * kTarBlock) return Corrupt("tar: blob too small");
  const uint8_t* x = head.data();
  if (!is_tar_header(head)) return Corrupt("tar: bad ustar header checksum");
  bool ok = true;
  uint64_t size_field = parse_octal(x + 124, 12, &ok);
  if (!ok) return Corrupt("tar: field size is not octal");
  if (x[156] == 'x') {
    // PAX extended header: records "<len> key=value\n" in the next blocks.
    if (size_field == 0 || size_field > kTarBlock) return Corrupt("tar: field pax size unsupported");
    std::string rec(reinterpret_cast<const char*>(x + kTarBlock), size_field);
    std::optional<uint64_t> size;
    size_t pos = 0;
    while (pos < rec.size()) {
      size_t sp = rec.find(' ', pos);
      if (sp == std::string::npos) return Corrupt("tar: malformed pax record");
      uint64_t len = 0;
      for (size_t i = pos; i < sp; i++) {
        if (rec[i] < '0' || rec[i] > '9' || len > 1000000) return Corrupt("tar: malformed pax record length");
        len = len * 10 + (rec[i] - '0');
      }
      if (len < sp - pos + 2 || pos + len > rec.size()) return Corrupt("tar: pax record length out of range");
      std::string kv = rec.substr(sp + 1, len - (sp - pos) - 2);
      if (kv.rfind("size=", 0) == 0) {
        uint64_t v = 0;
        if (kv.size() == 5) return Corrupt("tar: pax field size empty");
        for (size_t i = 5; i < kv.size(); i++) {
          if (kv[i] < '0' || kv[i] > '9' || v > (1ull << 58)) return Corrupt("tar: pax field size malformed");
          v = v * 10 + (kv[i] - '0');
        }
        size = v;
      }
      pos += len;
    }
    std::span<const uint8_t> member = head.subspan(2 * kTarBlock, kTarBlock);
    if (!is_tar_header(member)) return Corrupt("tar: member header checksum bad");
    if (member[156] != '0' && member[156] != 0) return Corrupt("tar: member is not a regular file");
    uint64_t msize = parse_octal(member.data() + 124, 12, &ok);
    if (!ok) return Corrupt("tar: member field size is not octal");
    TarMember m{3 * kTarBlock, size ? *size : msize};
    if (m.size > blob_size - m.offset) return Corrupt(fmt::format("tar: member size {} beyond blob", m.size));
    return m;
  }
  if (x[156] != '0' && x[156] != 0) return Corrupt("tar: first member is not a regular file");
  TarMember m{kTarBlock, size_field};
  if (blob_size < m.offset || m.size > blob_size - m.offset)
    return Corrupt(fmt::format("tar: member size {} beyond blob", m.size));
  return m;
}

std::vector<uint8_t> tar_prefix(uint64_t size, uint32_t mode) {
  std::vector<uint8_t> out(3 * kTarBlock, 0);
  std::string body = fmt::format(" size={}\n", size);
  // "<len> size=N\n" where len counts its own digits.
  size_t len = body.size() + 1;
  while (std::to_string(len).size() + body.size() != len) len++;
  std::string rec = std::to_string(len) + body;
  fill_header(out.data(), "overlaybd.pax", 'x', rec.size(), 0100644);
  std::memcpy(out.data() + kTarBlock, rec.data(), rec.size());
  fill_header(out.data() + 2 * kTarBlock, "overlaybd.commit", '0', 0, mode);
  return out;
}

std::vector<uint8_t> tar_suffix(uint64_t size) {
  uint64_t pad = (kTarBlock - size % kTarBlock) % kTarBlock;
  return std::vector<uint8_t>(pad + 2 * kTarBlock, 0);
}

}  // namespace udm::obd
