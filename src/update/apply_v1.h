// Offline apply of a v1 diff (`udm update-apply`, and tests in process).
#pragma once

#include <functional>
#include <span>
#include <vector>

#include "device/block_device.h"
#include "update/format_v1.h"

namespace udm::update {

// Every operation's new block, in apply order, computed from the diff and
// the intact old image on `old` before anything is written (so a corrupt
// diff fails here and changes nothing); each payload decoded once. One
// block per operation, back to back.
Result<std::vector<uint8_t>> v1_compute_all(BlockDevice& diff, BlockDevice& old, const V1Index& idx);
// Writes those blocks to their destinations (`sys` must hold the new image's
// size), then flushes; with flag VERITY_TREE then regenerates the verity
// area from the data now on `sys` (its root checked), writes it, flushes.
// `progress` is called once per operation's block.
Status v1_write_all(BlockDevice& sys, const V1Index& idx, std::span<const uint8_t> blocks,
                    const std::function<void(uint64_t)>& progress = {});

}  // namespace udm::update
