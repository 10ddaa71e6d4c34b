// Opening remote sources from specs (the scheme opener of feature.cpp).
#pragma once

#include <string>

#include "device/block_device.h"

namespace udm::remote {

// http://..., https://..., oci://HOST[:PORT]/REPO@sha256:HEX. Read-only:
// asking for a writable open still gives the read-only device (its caps
// say so; writes fail with EROFS), like a read-only file.
Result<DevicePtr> open_remote(const std::string& spec, bool writable);

}  // namespace udm::remote
