// LSMT readers on hostile bytes. First byte: 0 = committed/sealed layer
// (possibly inside ZFile/tar), 1 = RW data+index pair (split at byte 1..2),
// 2 = two stacked layers (split likewise). Reads every mapped entry (capped).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "io/memory_device.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/zfile_device.h"

using namespace udm;
using namespace udm::obd;

static void read_some(LsmtDevice& d) {
  std::vector<uint8_t> buf(64 * 1024);
  uint64_t budget = 2 << 20;
  std::vector<uint64_t> offs = {0};
  for (auto& L : d.layers())
    for (auto& e : L.entries) offs.push_back(e.offset * 512);
  for (auto& s : d.rw_segments()) offs.push_back(s.start * 512);
  for (uint64_t off : offs) {
    if (off >= d.size() || budget == 0) continue;
    size_t n = std::min<uint64_t>({buf.size(), d.size() - off, budget});
    budget -= n;
    (void)d.read(off, std::span<uint8_t>(buf.data(), n));
  }
}

static Result<LsmtLayer> layer(const uint8_t* p, size_t n) {
  static auto cache = std::make_shared<BlockCache>(4 << 20);
  auto blob = std::make_shared<MemoryDevice>(std::vector<uint8_t>(p, p + n), true);
  UDM_ASSIGN_OR_RETURN(DevicePtr dev, open_layer_blob(blob, cache));
  return open_lsmt_layer(dev);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  int mode = data[0] % 3;
  size_t split = std::min<size_t>(size - 3, (size_t(data[1]) << 8 | data[2]) * 64);
  const uint8_t* a = data + 3;
  size_t na = split, nb = size - 3 - split;
  const uint8_t* b = a + na;
  if (mode == 0) {
    auto L = layer(a, size - 3);
    if (!L.ok()) return 0;
    std::vector<LsmtLayer> v;
    v.push_back(std::move(*L));
    auto d = LsmtDevice::open(std::move(v), std::nullopt);
    if (d.ok()) read_some(**d);
  } else if (mode == 1) {
    auto df = std::make_shared<MemGrowFile>(std::vector<uint8_t>(a, a + na));
    auto xf = std::make_shared<MemGrowFile>(std::vector<uint8_t>(b, b + nb));
    auto d = LsmtDevice::open({}, RwLayerFiles{df, xf});
    if (!d.ok()) return 0;
    read_some(**d);
    std::vector<uint8_t> w(1536, 0xAB);
    if ((*d)->size() >= 8192) {
      (void)(*d)->write(100, w);
      (void)(*d)->trim(4096, 4096);
      read_some(**d);
    }
  } else {
    auto L1 = layer(a, na);
    auto L2 = layer(b, nb);
    if (!L1.ok() || !L2.ok()) return 0;
    std::vector<LsmtLayer> v;
    v.push_back(std::move(*L1));
    v.push_back(std::move(*L2));
    auto d = LsmtDevice::open(std::move(v), std::nullopt, LsmtDevice::Options{false});
    if (d.ok()) read_some(**d);
  }
  return 0;
}
