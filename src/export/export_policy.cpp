#include "export/export_policy.h"

namespace udm {

Result<ExportRule> parse_export_rule(const std::string& text) {
  ExportRule r;
  r.name = text;
  if (text.size() > 3 && text.compare(text.size() - 3, 3, ":ro") == 0) {
    r.name = text.substr(0, text.size() - 3);
    r.read_only = true;
  } else if (auto colon = text.rfind(':'); colon != std::string::npos) {
    return Invalid("--nbd-export '" + text + "': the only flag after ':' is 'ro'");
  }
  if (r.name.empty() || r.name.find('/') != std::string::npos || r.name == "." || r.name == "..")
    return Invalid("--nbd-export '" + text + "': not a device name");
  return r;
}

DeviceCaps ReadOnlyView::caps() const {
  DeviceCaps c = base_->caps();
  c.read_only = true;
  c.can_trim = false;
  c.trim_zeroes = false;
  c.can_write_zeroes = false;
  c.fast_zero = false;
  return c;
}

Status ReadOnlyView::do_write(uint64_t, std::span<const uint8_t>, bool) {
  return ReadOnly("this export is read-only");
}
Status ReadOnlyView::do_trim(uint64_t, uint64_t) { return ReadOnly("this export is read-only"); }
Status ReadOnlyView::do_write_zeroes(uint64_t, uint64_t, bool, bool) {
  return ReadOnly("this export is read-only");
}

const ExportRule* FilteredExportProvider::rule(const std::string& name) const {
  for (const auto& r : rules_)
    if (r.name == name) return &r;
  return nullptr;
}

Result<DevicePtr> FilteredExportProvider::open_export(const std::string& name) {
  if (rules_.empty()) return base_.open_export(name);
  const ExportRule* r = rule(name);
  // A hidden device and a missing one look the same from outside.
  if (!r) return Status::Error(ENOENT, "no export named '" + name + "'");
  UDM_ASSIGN_OR_RETURN(DevicePtr d, base_.open_export(name));
  if (r->read_only) return DevicePtr(std::make_shared<ReadOnlyView>(std::move(d)));
  return d;
}

std::vector<ExportInfo> FilteredExportProvider::list_exports() {
  auto all = base_.list_exports();
  if (rules_.empty()) return all;
  std::vector<ExportInfo> out;
  for (auto& e : all) {
    if (const ExportRule* r = rule(e.name)) {
      e.read_only |= r->read_only;
      out.push_back(e);
    }
  }
  return out;
}

Result<ExportInfo> FilteredExportProvider::stat_export(const std::string& name) {
  if (rules_.empty()) return base_.stat_export(name);
  const ExportRule* r = rule(name);
  if (!r) return Status::Error(ENOENT, "no export named '" + name + "'");
  UDM_ASSIGN_OR_RETURN(ExportInfo i, base_.stat_export(name));
  i.read_only |= r->read_only;
  return i;
}

}  // namespace udm
