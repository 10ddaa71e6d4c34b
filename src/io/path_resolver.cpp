#include "io/path_resolver.h"

namespace udm {

Result<DevicePtr> open_path_spec(const std::string& spec, bool writable) {
  if (spec.empty() || spec[0] != '/')
    return Invalid("'" + spec + "' is not an absolute path (device names need the udm daemon)");
  FileOpenOptions o;
  o.writable = writable;
  auto f = FileDevice::open(spec, o);
  if (!f.ok() && writable && (f.status().code() == EROFS || f.status().code() == EACCES)) {
    o.writable = false;
    f = FileDevice::open(spec, o);
  }
  if (!f.ok()) return f.status();
  return DevicePtr(std::move(f).value());
}

Result<DevicePtr> PathResolver::open(const std::string& spec, bool writable) {
  return open_path_spec(spec, writable);
}

}  // namespace udm
