#include "device/block_device.h"
#include "device/allocation.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

namespace udm {

Status BlockDevice::check_range(uint64_t offset, uint64_t len, const char* op) const {
  uint64_t sz = size();
  if (offset > sz || len > sz - offset)
    return Invalid(fmt::format("{} of {} bytes at offset {} is beyond the device end ({} bytes)",
                               op, len, offset, sz));
  return Status::Ok();
}

Result<LocalStateHome> BlockDevice::local_state_home() const {
  return NotSupported("the device keeps no local state for its bytes");
}

Status BlockDevice::read(uint64_t offset, std::span<uint8_t> buf) {
  UDM_TRY(check_range(offset, buf.size(), "read"));
  return do_read(offset, buf);
}

Status BlockDevice::write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  UDM_TRY(check_range(offset, buf.size(), "write"));
  return do_write(offset, buf, fua);
}

Status BlockDevice::trim(uint64_t offset, uint64_t length) {
  UDM_TRY(check_range(offset, length, "trim"));
  return do_trim(offset, length);
}

Status BlockDevice::write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) {
  UDM_TRY(check_range(offset, length, "write_zeroes"));
  return do_write_zeroes(offset, length, fua, may_unmap);
}

Result<bool> BlockDevice::direct_extent(uint64_t offset, uint64_t length, const DirectExtentUse& use) {
  UDM_TRY(check_range(offset, length, "read"));
  if (length == 0) return false;
  return do_direct_extent(offset, length, use);
}

void BlockDevice::keep_cached(uint64_t offset, uint64_t length) {
  uint64_t sz = size();
  if (length == 0 || offset >= sz) return;
  do_keep_cached(offset, std::min(length, sz - offset));
}

void add_alloc_run(AllocMap& m, uint64_t length, AllocKind kind, uint32_t depth) {
  if (length == 0) return;
  if (kind == AllocKind::kHole) depth = 0;
  if (!m.empty() && m.back().kind == kind && m.back().depth == depth) {
    m.back().length += length;
    return;
  }
  m.push_back(AllocRun{length, kind, depth});
}

Status append_allocation(BlockDevice& dev, uint64_t offset, uint64_t length, AllocMap& out,
                         uint32_t depth_base, uint64_t& covered) {
  covered = 0;
  AllocMap part;
  while (covered < length) {
    if (out.size() >= kMaxAllocRuns) return Status::Ok();
    UDM_TRY(dev.allocation(offset + covered, length - covered, part));
    for (const AllocRun& r : part) {
      uint32_t d = depth_base == 0 ? 0 : depth_base + std::max<uint32_t>(r.depth, 1) - 1;
      add_alloc_run(out, r.length, r.kind, d);
      covered += r.length;
    }
  }
  return Status::Ok();
}

Status BlockDevice::allocation(uint64_t offset, uint64_t length, AllocMap& out) {
  out.clear();
  UDM_TRY(check_range(offset, length, "allocation"));
  if (length == 0) return Status::Ok();
  AllocMap raw;
  UDM_TRY(do_allocation(offset, length, raw));
  // Normalise: drop empty runs, merge alike neighbours, clip to the range.
  uint64_t left = length;
  for (const AllocRun& r : raw) {
    if (left == 0) break;
    uint64_t n = std::min(r.length, left);
    add_alloc_run(out, n, r.kind, r.depth);
    left -= n;
  }
  if (out.empty()) out.push_back(AllocRun{length, AllocKind::kData, 0});
  return Status::Ok();
}

Status BlockDevice::do_allocation(uint64_t, uint64_t length, AllocMap& out) {
  out.push_back(AllocRun{length, AllocKind::kData, 0});
  return Status::Ok();
}

Status BlockDevice::do_trim(uint64_t, uint64_t) {
  return NotSupported("device does not support discard");
}

Status BlockDevice::do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) {
  if (may_unmap && length > 0) {
    DeviceCaps c = caps();
    if (c.can_trim && c.trim_zeroes) {
      Status s = do_trim(offset, length);
      if (s.ok()) return fua ? do_flush() : s;
      if (s.code() != EOPNOTSUPP) return s;
    }
  }
  return write_zero_buffers(offset, length, fua);
}

Status BlockDevice::write_zero_buffers(uint64_t offset, uint64_t length, bool fua) {
  static const std::vector<uint8_t> zeros(1 << 20, 0);
  while (length > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(length, zeros.size()));
    UDM_TRY(do_write(offset, std::span<const uint8_t>(zeros.data(), n), false));
    offset += n;
    length -= n;
  }
  return fua ? do_flush() : Status::Ok();
}

}  // namespace udm
