// Fuzzes the COW parser: the input is a COW image (origin size from its last
// byte); every record is validated, nothing may read outside the image.
#include <cstdint>
#include <cstring>
#include <vector>

#include "snapshot/cow_format.h"

using namespace udm::snapshot;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 16) return 0;
  std::vector<uint8_t> img(data, data + size);
  uint64_t origin = uint64_t(data[size - 1]) * 4096 + 512;
  std::vector<uint8_t> first(512, 0);
  memcpy(first.data(), img.data(), std::min<size_t>(512, img.size()));
  auto r = parse_cow(first, img.size(), origin, 0, [&](uint64_t c, std::span<uint8_t> buf) {
    if (c > img.size() / buf.size() || (c + 1) * buf.size() > img.size())
      return udm::IoError("read past the end");
    memcpy(buf.data(), img.data() + c * buf.size(), buf.size());
    return udm::Status::Ok();
  });
  if (r.ok() && r->kind == ParsedCow::Kind::kValid) {
    for (auto& rec : r->records)
      if (rec.new_chunk * r->geo.chunk_bytes >= img.size()) __builtin_trap();
  }
  return 0;
}
