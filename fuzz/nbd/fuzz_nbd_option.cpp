// NBD_OPT_GO / NBD_OPT_INFO payloads: parsed or refused, never read out of bounds.
#include <cstdint>
#include <cstdlib>

#include "export/nbd/nbd_proto.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = udm::nbd::parse_info_request(std::span<const uint8_t>(data, size));
  if (r.ok() && 4 + r->name.size() + 2 + 2 * r->infos.size() != size) std::abort();
  return 0;
}
