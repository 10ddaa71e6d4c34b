// Format v0: the pure parser (superblock + directory from bytes) and its
// device wrapper must agree; then every chunk is decoded. Any file is either
// refused with a message or yields an index whose chunks lie inside the file.
#include <cstdint>
#include <cstdlib>

#include "io/memory_device.h"
#include "update/format.h"
#include "update/format_v0_io.h"

using namespace udm::update;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> file(data, size);
  if (size >= kVersionProbeBytes) (void)probe_diff_version(file, size);
  auto idx = load_diff_bytes(file);
  udm::MemoryDevice dev(std::vector<uint8_t>(data, data + size), true);
  auto via_dev = load_diff(dev);
  if (idx.ok() != via_dev.ok()) std::abort();
  if (!idx.ok()) {
    if (idx.status().message().empty() || idx.status().message() != via_dev.status().message()) std::abort();
    return 0;
  }
  if (idx->entries.size() != via_dev->entries.size() || idx->chunks.size() != via_dev->chunks.size()) std::abort();
  std::vector<uint8_t> scratch, out(idx->chunk_bytes());
  for (size_t c = 0; c < idx->chunks.size() && c < 64; c++) {
    const Chunk& ch = idx->chunks[c];
    if (ch.src + ch.length > size) std::abort();
    udm::Status pure = decode_v0_chunk(*idx, c, file.subspan(ch.src, ch.length), out);
    if (pure.ok() != read_chunk(dev, *idx, c, scratch, out).ok()) std::abort();
  }
  for (const auto& e : idx->entries)
    if (idx->find(e.dest) < 0) std::abort();
  return 0;
}
