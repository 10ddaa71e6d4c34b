#include "daemon/registry.h"

#include <fmt/format.h>

#include <cctype>

#include <algorithm>

#include "util/log.h"

namespace udm {

DeviceRegistry::~DeviceRegistry() {
  Status s = shutdown_all();
  if (!s.ok()) log::warn("shutdown: {}", s.to_string());
  // Destroy in reverse creation order so stacked devices go before their backing.
  std::lock_guard lk(mu_);
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) devices_.erase(*it);
}

DeviceRegistry::DeviceRegistry(const TargetRegistry& targets)
    : targets_(targets),
      resolver_([this](const std::string& name, bool) -> Result<DevicePtr> {
        MappedDevicePtr dev = get(name);
        if (!dev)
          return Status::Error(ENXIO, fmt::format("no udm device named '{}' (files need an absolute "
                                                  "path starting with '/')",
                                                  name));
        return DevicePtr(std::make_shared<HeldDevice>(std::move(dev)));
      }) {}

Result<std::shared_ptr<Table>> DeviceRegistry::build(const std::string& name,
                                                     const std::string& table_text) {
  UDM_ASSIGN_OR_RETURN(TableSpec spec, parse_table(table_text));
  return Table::build(spec, *this, targets_, name);
}

Result<MappedDevicePtr> DeviceRegistry::create(const std::string& name,
                                               const std::string& table_text, bool read_only) {
  UDM_TRY(validate_name(name));
  {
    std::lock_guard lk(mu_);
    if (devices_.count(name)) return Status::Error(EEXIST, "device '" + name + "' already exists");
  }
  // Targets are built without the registry lock: they open other devices.
  UDM_ASSIGN_OR_RETURN(auto table, build(name, table_text));
  auto dev = std::make_shared<MappedDevice>(name, std::move(table), read_only);
  std::lock_guard lk(mu_);
  if (devices_.count(name)) return Status::Error(EEXIST, "device '" + name + "' already exists");
  devices_[name] = dev;
  order_.push_back(name);
  return dev;
}

Status DeviceRegistry::remove(const std::string& name) {
  MappedDevicePtr dev;
  {
    std::lock_guard lk(mu_);
    auto it = devices_.find(name);
    if (it == devices_.end()) return Status::Error(ENXIO, "no device named '" + name + "'");
    if (int n = it->second->open_count(); n > 0)
      return Status::Error(EBUSY, fmt::format("device '{}' is in use ({} open{})", name, n,
                                              n == 1 ? "" : "s"));
    dev = it->second;
    devices_.erase(it);
    order_.erase(std::remove(order_.begin(), order_.end(), name), order_.end());
  }
  // Drains, flushes and stops background work; targets close their backing.
  Status s = dev->shutdown();
  dev.reset();
  return s;
}

Status DeviceRegistry::load(const std::string& name, const std::string& table_text) {
  MappedDevicePtr dev = get(name);
  if (!dev) return Status::Error(ENXIO, "no device named '" + name + "'");
  UDM_ASSIGN_OR_RETURN(auto table, build(name, table_text));
  dev->load(std::move(table));
  return Status::Ok();
}

Status DeviceRegistry::clear(const std::string& name) {
  MappedDevicePtr dev = get(name);
  if (!dev) return Status::Error(ENXIO, "no device named '" + name + "'");
  dev->clear_inactive();
  return Status::Ok();
}

MappedDevicePtr DeviceRegistry::get(const std::string& name) const {
  std::lock_guard lk(mu_);
  auto it = devices_.find(name);
  return it == devices_.end() ? nullptr : it->second;
}

std::vector<std::string> DeviceRegistry::names() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (auto& [n, d] : devices_) out.push_back(n);
  return out;
}

Status DeviceRegistry::shutdown_all() {
  std::vector<MappedDevicePtr> devs;
  {
    std::lock_guard lk(mu_);
    for (auto it = order_.rbegin(); it != order_.rend(); ++it) devs.push_back(devices_[*it]);
  }
  Status first;
  for (auto& d : devs) {
    Status s = d->shutdown();
    if (!s.ok() && first.ok()) first = s.context(d->name());
  }
  return first;
}

Result<DevicePtr> DeviceRegistry::open(const std::string& spec, bool writable) {
  return resolver_.open(spec, writable);
}

Result<DevicePtr> DeviceRegistry::open_export(const std::string& name) {
  MappedDevicePtr dev = get(name);
  if (!dev) return Status::Error(ENOENT, "no device named '" + name + "'");
  return DevicePtr(std::make_shared<HeldDevice>(std::move(dev)));
}

std::vector<ExportInfo> DeviceRegistry::list_exports() {
  std::vector<ExportInfo> out;
  std::lock_guard lk(mu_);
  for (auto& [n, d] : devices_) out.push_back({n, d->size(), d->caps().read_only});
  return out;
}

Result<ExportInfo> DeviceRegistry::stat_export(const std::string& name) {
  MappedDevicePtr dev = get(name);
  if (!dev) return Status::Error(ENOENT, "no device named '" + name + "'");
  return ExportInfo{name, dev->size(), dev->caps().read_only};
}

}  // namespace udm
