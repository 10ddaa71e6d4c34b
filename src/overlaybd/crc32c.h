// CRC32C (Castagnoli, reflected polynomial 0x82F63B78) in overlaybd's
// convention: the register starts at `seed` and the final register is the
// result -- no pre/post inversion. Standard CRC-32C(d) == ~crc32c_raw(d, ~0u).
#pragma once

#include <cstddef>
#include <cstdint>

namespace udm::obd {

uint32_t crc32c_raw(const void* data, size_t len, uint32_t seed);

}  // namespace udm::obd
