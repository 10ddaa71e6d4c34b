// A target is the user-space twin of a device-mapper target: it is built from
// one table line (`<start> <length> <type> <args...>`), serves the I/O of its
// segment (offsets are relative to the segment start, size() is the segment
// length) and has dm's lifecycle hooks, status and messages.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "device/background_job.h"
#include "device/block_device.h"

namespace udm {

// Opens backing devices for targets (io/resolver.h decides what a spec is: a
// path, a URI of a registered backing source, or the name of another udm
// device). The returned device stays open (and counted as a holder of a udm
// device) until the last reference is dropped.
class DeviceResolver {
 public:
  virtual ~DeviceResolver() = default;
  virtual Result<DevicePtr> open(const std::string& spec, bool writable) = 0;
  // A key that is equal for two specs exactly when they name the same device
  // (io/resolver.h implements it for paths, URIs and names).
  virtual Result<std::string> identity(const std::string& spec) { return "spec:" + spec; }
};

class Target : public BlockDevice {
 public:
  // Target type name as in the table line ("linear").
  virtual std::string type() const = 0;
  // The target-specific part of a `status` line (after "<start> <len> <type> ").
  virtual std::string status() const { return ""; }
  // `udm message NAME SECTOR ARGS...`; returns text to print (may be empty).
  virtual Result<std::string> message(const std::vector<std::string>& args) {
    return Status::Error(EINVAL, type() + ": target accepts no messages");
  }
  // Lifecycle, in dm's order. presuspend: stop starting background work;
  // after it the device drains in-flight I/O, flushes, then postsuspend().
  // resume() restarts background work (also called once after construction,
  // before the first I/O, when the table becomes active).
  virtual void presuspend() {}
  virtual void postsuspend() {}
  virtual void resume() {}
  // Background jobs this target runs (device/background_job.h), for `udm
  // info --json` and `udm wait`; a job's messages are the same for every
  // target (pause, resume, throttle).
  virtual std::vector<JobInfo> jobs() const { return {}; }
};

using TargetPtr = std::shared_ptr<Target>;

struct TargetParams {
  std::string type;
  uint64_t start = 0;   // segment start in bytes within the mapped device
  uint64_t length = 0;  // segment length in bytes (multiple of 512)
  std::vector<std::string> args;
  DeviceResolver* resolver = nullptr;
  std::string device_name;  // name of the mapped device being built (for logs)
};

using TargetFactory = std::function<Result<TargetPtr>(const TargetParams&)>;

class TargetRegistry {
 public:
  // The registry with every target of the feature list (device/feature.h),
  // registered on first use; defined by the generated code in udm_features.
  static TargetRegistry& builtin();
  void add(const std::string& type, TargetFactory factory, std::string usage);
  Result<TargetPtr> create(const TargetParams& params) const;
  std::vector<std::string> types() const;
  std::string usage(const std::string& type) const;

 private:
  struct Entry {
    TargetFactory factory;
    std::string usage;
  };
  std::map<std::string, Entry> entries_;
};


}  // namespace udm
