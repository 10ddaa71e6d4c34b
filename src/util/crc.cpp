#include "util/crc.h"

#include <isa-l/crc.h>

namespace udm {

uint32_t crc32_ieee(uint32_t crc, const void* data, size_t len) {
  // crc32_gzip_refl inverts on entry and exit, like zlib's crc32.
  return crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), len);
}

uint32_t crc32_ieee_raw(uint32_t reg, const void* data, size_t len) {
  return ~crc32_gzip_refl(~reg, static_cast<const unsigned char*>(data), len);
}

uint32_t crc32c_raw(uint32_t reg, const void* data, size_t len) {
  // crc32_iscsi works on the raw register (no inversion); it takes an int
  // length, so feed it in pieces.
  const auto* p = static_cast<const unsigned char*>(data);
  while (len > 0) {
    int n = static_cast<int>(len > (1u << 30) ? (1u << 30) : len);
    reg = crc32_iscsi(const_cast<unsigned char*>(p), n, reg);
    p += n;
    len -= static_cast<size_t>(n);
  }
  return reg;
}

}  // namespace udm
