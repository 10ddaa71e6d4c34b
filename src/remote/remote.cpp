#include "remote/remote.h"

#include "remote/http_device.h"

namespace udm::remote {

Result<DevicePtr> open_remote(const std::string& spec, bool writable) {
  if (spec.rfind("oci://", 0) == 0) {
    auto ref = parse_oci_blob_ref(spec);
    if (!ref.ok()) return ref.status();
    auto creds = load_credentials(ref->authority);
    if (!creds.ok()) return creds.status();
    auto auth = std::make_shared<RegistryAuth>(ref->authority, ref->repo, *creds);
    auto d = HttpDevice::open(spec, ref->blob_url(), auth, ref->digest_hex);
    if (!d.ok()) return d.status();
    return DevicePtr(*d);
  }
  if (spec.rfind("http://", 0) != 0 && spec.rfind("https://", 0) != 0)
    return Invalid(spec + ": not an http://, https:// or oci:// spec");
  if (spec.find_first_of(" \t\r\n") != std::string::npos) return Invalid(spec + ": URL contains whitespace");
  auto d = HttpDevice::open(spec, spec, nullptr, "");
  if (!d.ok()) return d.status();
  return DevicePtr(*d);
}

}  // namespace udm::remote
