// What the two diff formats share: the magic and the version byte that tells
// them apart (docs/update-format.md). Pure: bytes in, values out; reading the
// bytes from a device is format_io.h's job.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "util/status.h"

namespace udm::update {

// "update\0\0" at byte 0 of both formats; byte 8 is the version (0 or 1).
inline constexpr uint8_t kDiffMagic[8] = {'u', 'p', 'd', 'a', 't', 'e', 0, 0};
// Bytes probe_diff_version looks at, and the smallest diff it accepts (a v0
// superblock).
constexpr size_t kVersionProbeBytes = 16;
constexpr uint64_t kMinDiffBytes = 64;

bool has_diff_magic(std::span<const uint8_t> head);
// 0 or 1 for a diff of `file_size` bytes that starts with `head` (at least
// kVersionProbeBytes); an error naming the field otherwise.
Result<int> probe_diff_version(std::span<const uint8_t> head, uint64_t file_size);

}  // namespace udm::update
