// The OCI manifest/index parser and image references on hostile bytes.
// Invariants: every accepted descriptor has a valid sha256 digest; an index
// has no layers and a manifest no sub-manifests.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "remote/oci_image.h"

using namespace udm::remote;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  size_t nl = in.find('\n');
  std::string ct = nl == std::string::npos ? "" : in.substr(0, nl);
  std::string body = nl == std::string::npos ? in : in.substr(nl + 1);
  auto m = parse_manifest(body, ct, "fuzz");
  if (m.ok()) {
    if (m->is_index && !m->layers.empty()) abort();
    if (!m->is_index && !m->manifests.empty()) abort();
    for (auto* v : {&m->layers, &m->manifests})
      for (auto& d : *v)
        if (d.digest.size() != 71 || d.digest.rfind("sha256:", 0) != 0) abort();
  }
  auto r = parse_image_ref(ct);
  if (r.ok() && r->repo.empty()) abort();
  return 0;
}
