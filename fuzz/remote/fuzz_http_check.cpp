// HTTP reply checks and remote input parsers on hostile bytes: Content-Range,
// Retry-After, WWW-Authenticate, the ranged-reply decision, docker
// config.json credentials and oci:// references. Invariant checked: a reply
// accepted by check_range_reply names exactly the range asked for.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "remote/auth.h"
#include "remote/http_check.h"
#include "remote/http_device.h"

using namespace udm::remote;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> f;
  size_t p = 0;
  while (f.size() < 6) {
    size_t q = in.find('\n', p);
    if (q == std::string::npos) {
      f.push_back(in.substr(p));
      break;
    }
    f.push_back(in.substr(p, q - p));
    p = q + 1;
  }
  f.resize(6);
  auto cr = parse_content_range(f[0]);
  if (cr && cr->first > cr->last) abort();
  if (cr && cr->total && cr->last >= *cr->total) abort();
  (void)parse_unsatisfied_range(f[0]);
  (void)parse_retry_after(f[1], 1700000000);
  auto c = parse_challenge(f[2]);
  if (c && c->scheme.empty()) abort();
  Headers h{{"content-range", f[0]}, {"etag", f[3]}, {"content-type", f[4]}};
  uint64_t off = size > 0 ? data[0] * 4096ull : 0, len = 1 + (size > 1 ? data[1] * 17ull : 0);
  RangeExpect e{off, len, off + len + (size > 2 ? data[2] : 0), size > 3 && (data[3] & 1) ? "\"v1\"" : ""};
  if (check_range_reply(206, h, len, e, "http://h/x").ok()) {
    if (!cr || cr->first != off || cr->last != off + len - 1 || !cr->total || *cr->total != e.size) abort();
  }
  (void)check_range_reply(200, h, len, e, "http://h/x");
  (void)find_credentials(f[5], "127.0.0.1:5000");
  (void)parse_oci_blob_ref(f[4]);
  (void)base64_decode(f[3]);
  return 0;
}
