// Little-endian field access for on-disk formats. Every format in udm is
// little-endian with explicit widths; these helpers read and write through
// memcpy, so unaligned and hostile buffers are fine.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>

namespace udm {

static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big);

template <class T>
inline T byteswap_if_big(T v) {
  if constexpr (std::endian::native == std::endian::big) {
    T r{};
    auto* s = reinterpret_cast<const unsigned char*>(&v);
    auto* d = reinterpret_cast<unsigned char*>(&r);
    for (size_t i = 0; i < sizeof(T); i++) d[i] = s[sizeof(T) - 1 - i];
    return r;
  } else {
    return v;
  }
}

template <class T>
inline T load_le(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return byteswap_if_big(v);
}
template <class T>
inline void store_le(void* p, T v) {
  v = byteswap_if_big(v);
  std::memcpy(p, &v, sizeof v);
}

inline uint16_t le16(const uint8_t* p) { return load_le<uint16_t>(p); }
inline uint32_t le32(const uint8_t* p) { return load_le<uint32_t>(p); }
inline uint64_t le64(const uint8_t* p) { return load_le<uint64_t>(p); }
inline void put_le16(uint8_t* p, uint16_t v) { store_le(p, v); }
inline void put_le32(uint8_t* p, uint32_t v) { store_le(p, v); }
inline void put_le64(uint8_t* p, uint64_t v) { store_le(p, v); }

}  // namespace udm
