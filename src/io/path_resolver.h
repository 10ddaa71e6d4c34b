// Opens "/path" specs as FileDevices. The daemon's resolver adds udm device
// names on top; tests and offline tools use this one alone.
#pragma once

#include "device/target.h"
#include "io/file_device.h"

namespace udm {

class PathResolver : public DeviceResolver {
 public:
  // Opens writable when asked; a file that cannot be opened writable (EROFS,
  // EACCES) is opened read-only so the target reports read-only caps.
  Result<DevicePtr> open(const std::string& spec, bool writable) override;
};

// Opens `spec` as a path if it starts with '/', else fails with a message
// telling that device names need the daemon.
Result<DevicePtr> open_path_spec(const std::string& spec, bool writable);

}  // namespace udm
