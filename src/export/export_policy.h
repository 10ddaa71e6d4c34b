// Which devices a listener exposes, and how: the `--nbd-export NAME[:ro]`
// allow-list. An empty list exposes every device as it is; otherwise only the
// listed names are visible (NBD_OPT_LIST shows only them, any other name is
// "no export named ..."), and a name marked `:ro` is served read-only whatever
// the device is (writes, trims and zero-outs get EPERM on the wire).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "export/export_provider.h"

namespace udm {

struct ExportRule {
  std::string name;
  bool read_only = false;
};

// "NAME" or "NAME:ro"; names follow the device-name rules (no '/', not empty).
Result<ExportRule> parse_export_rule(const std::string& text);

// A read-only view of a device: reads pass through, everything else is EROFS.
class ReadOnlyView : public BlockDevice {
 public:
  explicit ReadOnlyView(DevicePtr base) : base_(std::move(base)) {}
  uint64_t size() const override { return base_->size(); }
  DeviceCaps caps() const override;

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override { return base_->read(off, buf); }
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override;
  Status do_trim(uint64_t, uint64_t) override;
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override;
  Status do_flush() override { return Status::Ok(); }
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override {
    return base_->allocation(off, len, out);
  }
  Result<bool> do_direct_extent(uint64_t off, uint64_t len, const DirectExtentUse& use) override {
    return base_->direct_extent(off, len, use);
  }

 private:
  DevicePtr base_;
};

class FilteredExportProvider : public ExportProvider {
 public:
  FilteredExportProvider(ExportProvider& base, std::vector<ExportRule> rules)
      : base_(base), rules_(std::move(rules)) {}
  Result<DevicePtr> open_export(const std::string& name) override;
  std::vector<ExportInfo> list_exports() override;
  Result<ExportInfo> stat_export(const std::string& name) override;

 private:
  const ExportRule* rule(const std::string& name) const;
  ExportProvider& base_;
  std::vector<ExportRule> rules_;
};

}  // namespace udm
