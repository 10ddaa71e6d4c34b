// Reading a diff's format version from a device (the pure probe is format.h).
#pragma once

#include "device/block_device.h"
#include "update/format.h"

namespace udm::update {

// 1 if the device holds a v1 diff, 0 if v0 (by the version byte; the magic
// is checked); error if neither.
Result<int> diff_version(BlockDevice& diff);

}  // namespace udm::update
