// Feature "remote": http://, https:// and oci:// backing sources (lazy ranged
// fetches into a persistent cache) and the daemon options that configure them.
#include "device/feature.h"
#include "remote/http_device.h"
#include "remote/remote.h"

namespace udm {
void register_feature_remote(Features& f) {
  f.schemes.add("http", remote::open_remote, "http://HOST[:PORT]/PATH  -- the bytes of that URL, read-only, fetched lazily");
  f.schemes.add("https", remote::open_remote, "https://HOST[:PORT]/PATH  -- as http://, over TLS");
  f.schemes.add("oci", remote::open_remote,
                "oci://HOST[:PORT]/REPO@sha256:HEX  -- one blob of an OCI registry, read-only, fetched lazily");
  for (const char* s : {"http", "https", "oci"}) {
    f.schemes.set_jobs(s, {[](const std::string& uri) { return remote::prefetch_jobs(uri); },
                           [](const std::string& uri, const std::vector<std::string>& args) {
                             return remote::prefetch_control(uri, args);
                           }});
    f.schemes.set_message(s, [](const std::string& uri, const std::vector<std::string>& args) {
      return remote::source_message(uri, args);
    });
    f.schemes.set_describer(s, [](const std::string& uri) {
      std::string a = remote::live_sources_json({uri});
      return a.size() > 2 ? a.substr(1, a.size() - 2) : std::string();
    });
  }
}
}  // namespace udm
