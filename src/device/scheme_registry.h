// Backing sources by URI scheme (http://, oci://, ...): what the resolver
// (io/resolver.h) asks when a spec is a URI. A feature module adds its
// schemes when the feature list registers it (device/feature.h).
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "device/block_device.h"

namespace udm {

class SchemeRegistry {
 public:
  using Opener = std::function<Result<DevicePtr>(const std::string& uri, bool writable)>;
  // Live counters of an opened source as a JSON object text ("" if none):
  // `udm info NAME --json` lists them under "sources".
  using Describer = std::function<std::string(const std::string& uri)>;
  static SchemeRegistry& global();
  void add(const std::string& scheme, Opener open, std::string usage);
  void set_describer(const std::string& scheme, Describer d);
  std::string describe(std::string_view scheme, const std::string& uri) const;
  // Null if nothing registered the scheme.
  const Opener* find(std::string_view scheme) const;
  std::vector<std::string> schemes() const;

 private:
  struct Entry {
    Opener open;
    std::string usage;
    Describer describe;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace udm
