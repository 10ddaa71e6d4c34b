// NBD request decoding + validation: any 28-byte header (and export limits
// taken from the input) is decoded or refused; an accepted request always
// lies inside the export and within the payload limit.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "export/nbd/nbd_proto.h"

using namespace udm::nbd;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kRequestSize + 10) return 0;
  ExportLimits lim;
  std::memcpy(&lim.size, data, 8);
  lim.read_only = data[8] & 1;
  lim.structured = data[9] & 1;
  lim.meta = data[9] & 2;
  auto r = decode_request(std::span<const uint8_t>(data + 10, size - 10));
  if (!r.ok()) return 0;
  Check c = check_request(*r, lim);
  if (c.error == 0 && !c.close) {
    bool ranged = r->type == kCmdRead || r->type == kCmdWrite || r->type == kCmdTrim ||
                  r->type == kCmdWriteZeroes || r->type == kCmdCache || r->type == kCmdBlockStatus;
    if (ranged && (r->offset > lim.size || r->length > lim.size - r->offset)) std::abort();
    if ((r->type == kCmdRead || r->type == kCmdWrite) && r->length > kMaxRequest) std::abort();
    if (r->type == kCmdBlockStatus && (!lim.meta || !lim.structured || r->length == 0)) std::abort();
    if (lim.read_only && (r->type == kCmdWrite || r->type == kCmdTrim || r->type == kCmdWriteZeroes))
      std::abort();
  }
  return 0;
}
