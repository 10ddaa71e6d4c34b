// The region overlay's state-file header (io/region_overlay.h) on hostile
// bytes. The first input byte chooses whether the CRC is fixed up first, so
// the fields behind it are explored too. Invariants: an accepted header
// has 1..kMaxRegions sorted, disjoint, non-empty regions inside base_size
// and a key of at most kMaxKey bytes, and encoding what was decoded gives
// back the same 4096 bytes.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "io/region_overlay.h"
#include "util/crc.h"

using namespace udm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool fix_crc = data[0] & 1;
  std::vector<uint8_t> h(RegionOverlayDevice::kHeaderSize, 0);
  std::memcpy(h.data(), data + 1, std::min(size - 1, h.size()));
  if (fix_crc) {
    std::memset(&h[24], 0, 4);
    const uint32_t c = crc32_ieee(0, h.data(), h.size());
    for (int k = 0; k < 4; k++) h[24 + k] = uint8_t(c >> (8 * k));
  }
  auto i = decode_region_overlay_header(h);
  if (!i.ok()) return 0;
  if (i->regions.empty() || i->regions.size() > RegionOverlayDevice::kMaxRegions) abort();
  if (i->key.size() > RegionOverlayDevice::kMaxKey) abort();
  uint64_t prev_end = 0, total = 0;
  for (const ByteRange& r : i->regions) {
    if (r.length == 0 || r.offset < prev_end || r.offset > i->base_size || r.length > i->base_size - r.offset) abort();
    prev_end = r.offset + r.length;
    total += r.length;
  }
  if (total != i->region_bytes) abort();
  if (encode_region_overlay_header(i->key, i->base_size, i->regions) != h) abort();
  return 0;
}
