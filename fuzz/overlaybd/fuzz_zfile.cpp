// ZFile (+ tar wrapper) reader on hostile bytes: open, then read the start,
// the end and a block in the middle. Must never crash or read out of bounds.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "io/memory_device.h"
#include "overlaybd/zfile_device.h"

using namespace udm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto cache = std::make_shared<BlockCache>(4 << 20);
  auto blob = std::make_shared<MemoryDevice>(std::vector<uint8_t>(data, data + size), true);
  auto dev = obd::open_layer_blob(blob, cache);
  if (!dev.ok()) return 0;
  uint64_t sz = (*dev)->size();
  std::vector<uint8_t> buf(256 * 1024);
  for (uint64_t off : {uint64_t{0}, sz / 2, sz > buf.size() ? sz - buf.size() : 0}) {
    if (off >= sz) continue;
    size_t n = std::min<uint64_t>(buf.size(), sz - off);
    (void)(*dev)->read(off, std::span<uint8_t>(buf.data(), n));
  }
  return 0;
}
