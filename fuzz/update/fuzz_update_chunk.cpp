// The chunk decoders (kernel crypto stream formats) on hostile input: they
// fail or produce at most the output buffer, never write past it.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "update/codec.h"

using namespace udm::update;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  Algo a = static_cast<Algo>(data[0] % 4);
  size_t cap = (static_cast<size_t>(data[1]) + 1) * 512;
  std::vector<uint8_t> out(cap);
  auto r = decompress(a, std::span<const uint8_t>(data + 2, size - 2), out);
  if (r.ok() && *r > cap) std::abort();
  return 0;
}
