// The exposure options' parsers (--nbd-export NAME[:ro], --nbd-tcp address,
// --tls mode): any text is parsed or refused with a message, and what is
// accepted keeps its promises (a name with no '/', a numeric port, loopback
// when no host is given).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "export/export_policy.h"
#include "export/nbd/nbd_server.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string s(reinterpret_cast<const char*>(data), size);
  auto r = udm::parse_export_rule(s);
  if (r.ok()) {
    if (r->name.empty() || r->name.find('/') != std::string::npos) std::abort();
    if (r->read_only != (s.size() > 3 && s.compare(s.size() - 3, 3, ":ro") == 0)) std::abort();
  } else if (r.status().message().empty()) {
    std::abort();
  }
  auto a = udm::nbd_listen_address(s);
  if (a.ok()) {
    if (a->first.empty() || a->second.empty() || a->second.size() > 5) std::abort();
    if (a->second.find_first_not_of("0123456789") != std::string::npos) std::abort();
  }
  auto m = udm::parse_tls_mode(s);
  if (m.ok() && s != "off" && s != "on" && s != "require") std::abort();
  return 0;
}
