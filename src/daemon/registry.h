// The daemon's named devices. Also the resolver for table lines (a spec that
// is not a path names another udm device: stacking) and the provider the
// exports serve from. Every open of a device by a table, an NBD connection or
// a FUSE open counts in its open_count; a device with openers cannot be removed.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "device/held_device.h"
#include "device/mapped_device.h"
#include "export/export_provider.h"
#include "io/resolver.h"

namespace udm {

class DeviceRegistry : public DeviceResolver, public ExportProvider {
 public:
  explicit DeviceRegistry(const TargetRegistry& targets = TargetRegistry::builtin());
  ~DeviceRegistry() override;

  Result<MappedDevicePtr> create(const std::string& name, const std::string& table_text,
                                 bool read_only);
  Status remove(const std::string& name);
  Status load(const std::string& name, const std::string& table_text);  // inactive table
  Status clear(const std::string& name);                                // drop inactive table
  MappedDevicePtr get(const std::string& name) const;
  std::vector<std::string> names() const;
  // Suspend every device (stacked ones first), flushing them; for shutdown.
  Status shutdown_all();

  // DeviceResolver: io/resolver.h's Resolver with udm device names added.
  Result<DevicePtr> open(const std::string& spec, bool writable) override;
  Result<std::string> identity(const std::string& spec) override { return resolver_.identity(spec); }
  // ExportProvider
  Result<DevicePtr> open_export(const std::string& name) override;
  std::vector<ExportInfo> list_exports() override;
  Result<ExportInfo> stat_export(const std::string& name) override;

  static Status validate_name(const std::string& name) { return validate_device_name(name); }

 private:
  Result<std::shared_ptr<Table>> build(const std::string& name, const std::string& table_text);
  const TargetRegistry& targets_;
  Resolver resolver_;
  mutable std::mutex mu_;
  std::map<std::string, MappedDevicePtr> devices_;
  std::vector<std::string> order_;  // creation order
};

}  // namespace udm
