// Helpers for targets that answer allocation() from the maps of the devices
// below them (BlockDevice::allocation, device/block_device.h).
#pragma once

#include "device/block_device.h"

namespace udm {

// Appends `dev`'s map of [offset, offset+length) to `out`, asking again
// where an answer stopped short, until the range is covered or `out` holds
// kMaxAllocRuns runs. Depths: depth_base 0 sets every run's depth to 0 (not
// layered); otherwise a run the device put at depth d (0 = not layered, taken
// as 1) gets depth_base + d - 1 (a snapshot's origin: base 2, so the origin's
// top layer is 2). `covered` gets the bytes described: less than `length`
// only when `out` is full, and the caller stops there (a prefix is a valid
// answer).
Status append_allocation(BlockDevice& dev, uint64_t offset, uint64_t length, AllocMap& out,
                         uint32_t depth_base, uint64_t& covered);

}  // namespace udm
