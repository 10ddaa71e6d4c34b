// The daemon's named devices. Also the resolver for table lines (a spec that
// is not a path names another udm device: stacking) and the provider the
// exports serve from. Every open of a device by a table, an NBD connection or
// a FUSE open counts in its open_count; a device with openers cannot be removed.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "device/mapped_device.h"
#include "export/export_provider.h"

namespace udm {

class DeviceRegistry : public DeviceResolver, public ExportProvider {
 public:
  explicit DeviceRegistry(const TargetRegistry& targets = TargetRegistry::builtin())
      : targets_(targets) {}
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

  // DeviceResolver
  Result<DevicePtr> open(const std::string& spec, bool writable) override;
  // ExportProvider
  Result<DevicePtr> open_export(const std::string& name) override;
  std::vector<ExportInfo> list_exports() override;
  Result<ExportInfo> stat_export(const std::string& name) override;

  static Status validate_name(const std::string& name);

 private:
  Result<std::shared_ptr<Table>> build(const std::string& name, const std::string& table_text);
  const TargetRegistry& targets_;
  mutable std::mutex mu_;
  std::map<std::string, MappedDevicePtr> devices_;
  std::vector<std::string> order_;  // creation order
};

// A counted open of a mapped device: forwards I/O, releases on destruction.
class HeldDevice : public BlockDevice {
 public:
  explicit HeldDevice(MappedDevicePtr dev) : dev_(std::move(dev)) { dev_->add_opener(); }
  ~HeldDevice() override { dev_->drop_opener(); }
  uint64_t size() const override { return dev_->size(); }
  DeviceCaps caps() const override { return dev_->caps(); }
  Status do_read(uint64_t o, std::span<uint8_t> b) override { return dev_->read(o, b); }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override {
    return dev_->write(o, b, fua);
  }
  Status do_trim(uint64_t o, uint64_t l) override { return dev_->trim(o, l); }
  Status do_write_zeroes(uint64_t o, uint64_t l, bool fua, bool may_unmap) override {
    return dev_->write_zeroes(o, l, fua, may_unmap);
  }
  Status do_flush() override { return dev_->flush(); }
  const MappedDevicePtr& device() const { return dev_; }

 private:
  MappedDevicePtr dev_;
};

}  // namespace udm
