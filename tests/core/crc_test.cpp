#include <gtest/gtest.h>
#include <zlib.h>

#include <random>
#include <vector>

#include "util/crc.h"

using namespace udm;

namespace {
// Bitwise reference: reflected CRC over the raw register.
uint32_t ref_raw(uint32_t poly, uint32_t reg, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    reg ^= p[i];
    for (int k = 0; k < 8; k++) reg = (reg & 1) ? (reg >> 1) ^ poly : reg >> 1;
  }
  return reg;
}
}  // namespace

TEST(Crc, KnownValues) {
  const char* s = "123456789";
  EXPECT_EQ(crc32_ieee(0, s, 9), 0xCBF43926u);                 // CRC-32 check value
  EXPECT_EQ(~crc32c_raw(~0u, s, 9), 0xE3069283u);         // CRC-32C check value
  EXPECT_EQ(crc32_ieee_raw(0, s, 0), 0u);
}

TEST(Crc, MatchesReferenceAndZlibOnRandomData) {
  std::mt19937_64 rng(1);
  for (size_t n : {0, 1, 3, 7, 8, 15, 16, 63, 64, 511, 4096, 65537}) {
    std::vector<uint8_t> d(n);
    for (auto& b : d) b = static_cast<uint8_t>(rng());
    uint32_t seed = static_cast<uint32_t>(rng());
    if (n > 0) {  // zlib returns its initial value for a null buffer
      EXPECT_EQ(crc32_ieee(seed, d.data(), n), static_cast<uint32_t>(::crc32(seed, d.data(), static_cast<uInt>(n)))) << n;
    }
    EXPECT_EQ(crc32_ieee_raw(seed, d.data(), n), ref_raw(0xEDB88320u, seed, d.data(), n)) << n;
    EXPECT_EQ(crc32c_raw(seed, d.data(), n), ref_raw(0x82F63B78u, seed, d.data(), n)) << n;
    // Chaining.
    size_t h = n / 3;
    EXPECT_EQ(crc32c_raw(crc32c_raw(seed, d.data(), h), d.data() + h, n - h), crc32c_raw(seed, d.data(), n));
    EXPECT_EQ(crc32_ieee(crc32_ieee(0, d.data(), h), d.data() + h, n - h), crc32_ieee(0, d.data(), n));
  }
}
