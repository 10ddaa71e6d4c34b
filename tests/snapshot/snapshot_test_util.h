// Shared helpers for the snapshot tests: a resolver over named in-memory
// devices and a builder of the three targets from their table arguments.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "snapshot/snapshot.h"

namespace udm::snapshot::test {

// Names are udm-style (not paths); identity() is DeviceResolver's default
// (the spec itself), so two names are two devices.
class MapResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool) override {
    auto it = devs.find(spec);
    if (it == devs.end()) return Invalid("no device " + spec);
    return it->second;
  }
};

// `type` is snapshot, snapshot-origin or snapshot-merge; len: segment bytes.
inline Result<TargetPtr> make(const std::string& type, std::vector<std::string> args, uint64_t len,
                              DeviceResolver* r) {
  TargetParams p;
  p.type = type;
  p.args = std::move(args);
  p.length = len;
  p.resolver = r;
  if (type == "snapshot") return make_snapshot_target(p);
  if (type == "snapshot-origin") return make_origin_target(p);
  return make_merge_target(p);
}

}  // namespace udm::snapshot::test
