// Superseded by io/resolver.h (one resolver for paths, URIs and names); kept
// as an alias while callers move over.
#pragma once

#include "io/resolver.h"

namespace udm {
using PathResolver = Resolver;
inline Result<DevicePtr> open_path_spec(const std::string& spec, bool writable) { return Resolver().open(spec, writable); }
}  // namespace udm
