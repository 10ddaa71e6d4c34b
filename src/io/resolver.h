// Device specs are decided here and nowhere else. A table argument, a CLI
// argument or an export names a device as one of:
//
//   /path              a regular file or a block device (FileDevice)
//   scheme://rest      a backing source registered for that scheme by its
//                      feature module (SchemeRegistry), e.g. http://, oci://
//   name               another udm device (stacking); only where a name hook
//                      is installed (the daemon's DeviceRegistry)
//
// identity() tells whether two specs reach the same device (a file by its
// st_dev/st_ino, a block device by st_rdev, a udm device by name, a URI by
// itself): the snapshot origin registry keys on it.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "device/scheme_registry.h"
#include "device/target.h"

namespace udm {

enum class SpecKind { kPath, kUri, kName };
SpecKind spec_kind(std::string_view spec);
// The scheme of a URI spec ("http" of "http://x/y"), or empty.
std::string_view spec_scheme(std::string_view spec);
// udm device names: 1-127 of letters, digits, '-', '_', '.', '+'; not "." or "..".
Status validate_device_name(std::string_view name);

class Resolver : public DeviceResolver {
 public:
  using NameOpener = std::function<Result<DevicePtr>(const std::string& name, bool writable)>;
  // Without a name hook, device names are refused with a message saying
  // they need the daemon (offline tools, tests).
  explicit Resolver(NameOpener names = {}, SchemeRegistry* schemes = &SchemeRegistry::global());

  // Opens writable when asked; a file that cannot be opened writable (EROFS,
  // EACCES) is opened read-only, so the device reports read-only caps.
  Result<DevicePtr> open(const std::string& spec, bool writable) override;
  Result<std::string> identity(const std::string& spec) override;

 private:
  NameOpener names_;
  SchemeRegistry* schemes_;
};

// A file or block device path, as Resolver opens it.
Result<DevicePtr> open_path(const std::string& path, bool writable);

}  // namespace udm
