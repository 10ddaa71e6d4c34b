// Superblock + directory parser, then every chunk decoded: any file is either
// refused with a message or yields an index whose chunks lie inside the file.
#include <cstdint>
#include <cstdlib>

#include "io/memory_device.h"
#include "update/format_v0_io.h"

using namespace udm::update;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  udm::MemoryDevice dev(std::vector<uint8_t>(data, data + size), true);
  auto idx = load_diff(dev);
  if (!idx.ok()) {
    if (idx.status().message().empty()) std::abort();
    return 0;
  }
  std::vector<uint8_t> scratch, out(idx->chunk_bytes());
  for (size_t c = 0; c < idx->chunks.size() && c < 64; c++) {
    const Chunk& ch = idx->chunks[c];
    if (ch.src + ch.length > size) std::abort();
    (void)read_chunk(dev, *idx, c, scratch, out);
  }
  for (const auto& e : idx->entries)
    if (idx->find(e.dest) < 0) std::abort();
  return 0;
}
