// The CRCs udm's formats use, one implementation each (ISA-L: PCLMUL folding,
// about 10x a table CRC).
//
//  crc32_ieee CRC-32 of zlib/gzip (reflected 0xEDB88320), zlib's convention:
//             crc32_ieee(0, d) is the standard CRC; chaining crc32_ieee(crc32_ieee(0, a), b) == crc32_ieee(0, a+b).
//             (update diffs; bow's log uses crc32_ieee_raw: no pre/post inversion)
//  crc32c_raw CRC-32C (Castagnoli, reflected 0x82F63B78) as a raw register:
//             no pre/post inversion (overlaybd's convention).
//             Standard CRC-32C(d) == ~crc32c_raw(~0u, d).
#pragma once

#include <cstddef>
#include <cstdint>

namespace udm {

uint32_t crc32_ieee(uint32_t crc, const void* data, size_t len);
uint32_t crc32_ieee_raw(uint32_t reg, const void* data, size_t len);
uint32_t crc32c_raw(uint32_t reg, const void* data, size_t len);

}  // namespace udm
