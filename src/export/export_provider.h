// What the NBD and FUSE exports see of the daemon: named devices that can be
// opened (each open is counted as a holder of the device until released).
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "device/block_device.h"

namespace udm {

struct ExportInfo {
  std::string name;
  uint64_t size = 0;
  bool read_only = false;
};

class ExportProvider {
 public:
  virtual ~ExportProvider() = default;
  // Open a device for serving; the device stays open while the pointer lives.
  virtual Result<DevicePtr> open_export(const std::string& name) = 0;
  virtual std::vector<ExportInfo> list_exports() = 0;
  // Size/read-only of a device without opening it (FUSE getattr).
  virtual Result<ExportInfo> stat_export(const std::string& name) = 0;
};

// A fixed map of name -> device, for tests and single-device tools.
class StaticExportProvider : public ExportProvider {
 public:
  void add(const std::string& name, DevicePtr dev) {
    std::lock_guard lk(mu_);
    devs_[name] = std::move(dev);
  }
  void remove(const std::string& name) {
    std::lock_guard lk(mu_);
    devs_.erase(name);
  }
  Result<DevicePtr> open_export(const std::string& name) override {
    std::lock_guard lk(mu_);
    auto it = devs_.find(name);
    if (it == devs_.end()) return Status::Error(ENOENT, "no export named '" + name + "'");
    return it->second;
  }
  std::vector<ExportInfo> list_exports() override {
    std::lock_guard lk(mu_);
    std::vector<ExportInfo> out;
    for (auto& [n, d] : devs_) out.push_back({n, d->size(), d->caps().read_only});
    return out;
  }
  Result<ExportInfo> stat_export(const std::string& name) override {
    std::lock_guard lk(mu_);
    auto it = devs_.find(name);
    if (it == devs_.end()) return Status::Error(ENOENT, "no export named '" + name + "'");
    return ExportInfo{name, it->second->size(), it->second->caps().read_only};
  }

 private:
  std::mutex mu_;
  std::map<std::string, DevicePtr> devs_;
};

}  // namespace udm
