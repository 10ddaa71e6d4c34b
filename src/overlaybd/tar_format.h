// The one-member tar wrapper of overlaybd layer blobs: PAX header with the
// real size, a ustar header (size field 0), payload at 1536. Pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "util/status.h"

namespace udm::obd {

constexpr uint64_t kTarBlock = 512;

// True if `hdr` (512 bytes) is a ustar header with a valid checksum.
bool is_tar_header(std::span<const uint8_t> hdr);

// Given the first 1536 bytes of a blob that is_tar_header(), returns the
// payload {offset, size}. Fails (naming the field) when the blob is not the
// overlaybd layout or the size lies beyond blob_size.
struct TarMember {
  uint64_t offset = 0, size = 0;
};
Result<TarMember> parse_tar_member(std::span<const uint8_t> head, uint64_t blob_size);

// The 1536-byte prefix and the trailer (padding + two zero blocks) the
// reference writes around a payload of `size` bytes.
std::vector<uint8_t> tar_prefix(uint64_t size, uint32_t mode = 0100644);
std::vector<uint8_t> tar_suffix(uint64_t size);

}  // namespace udm::obd
