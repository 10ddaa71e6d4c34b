#include "io/resolver.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>

#include <cctype>

#include "io/file_device.h"

namespace udm {

std::string_view spec_scheme(std::string_view spec) {
  size_t p = spec.find("://");
  if (p == std::string_view::npos || p == 0) return {};
  std::string_view s = spec.substr(0, p);
  if (!std::isalpha(static_cast<unsigned char>(s[0]))) return {};
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.')) return {};
  return s;
}

SpecKind spec_kind(std::string_view spec) {
  if (!spec.empty() && spec[0] == '/') return SpecKind::kPath;
  if (!spec_scheme(spec).empty()) return SpecKind::kUri;
  return SpecKind::kName;
}

Status validate_device_name(std::string_view name) {
  if (name.empty() || name.size() > 127) return Invalid("device name must be 1-127 characters");
  if (name == "." || name == "..") return Invalid("device name cannot be '.' or '..'");
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '+'))
      return Invalid(fmt::format("device name '{}' has character '{}' (allowed: letters, digits, "
                                 "'-', '_', '.', '+')",
                                 name, c));
  }
  return Status::Ok();
}

Result<DevicePtr> open_path(const std::string& path, bool writable) {
  FileOpenOptions o;
  o.writable = writable;
  auto f = FileDevice::open(path, o);
  if (!f.ok() && writable && (f.status().code() == EROFS || f.status().code() == EACCES)) {
    o.writable = false;
    f = FileDevice::open(path, o);
  }
  if (!f.ok()) return f.status();
  return DevicePtr(std::move(f).value());
}

Resolver::Resolver(NameOpener names, SchemeRegistry* schemes) : names_(std::move(names)), schemes_(schemes) {}

Result<DevicePtr> Resolver::open(const std::string& spec, bool writable) {
  switch (spec_kind(spec)) {
    case SpecKind::kPath:
      return open_path(spec, writable);
    case SpecKind::kUri: {
      std::string scheme(spec_scheme(spec));
      const SchemeRegistry::Opener* op = schemes_ ? schemes_->find(scheme) : nullptr;
      if (!op) {
        std::string known = schemes_ ? fmt::format("{}", fmt::join(schemes_->schemes(), ", ")) : "";
        return Invalid(fmt::format("'{}': no backing source handles {}:// (known: {})", spec, scheme,
                                   known.empty() ? "none" : known));
      }
      auto r = (*op)(spec, writable);
      if (!r.ok()) return r.status().context(spec);
      return r;
    }
    case SpecKind::kName:
      break;
  }
  if (!names_)
    return Invalid(fmt::format("'{}' is not an absolute path or a URI (device names need the udm daemon)", spec));
  UDM_TRY(validate_device_name(spec).context("'" + spec + "'"));
  return names_(spec, writable);
}

Result<std::string> Resolver::identity(const std::string& spec) {
  switch (spec_kind(spec)) {
    case SpecKind::kPath: {
      struct stat st;
      if (::stat(spec.c_str(), &st) != 0) return ErrnoStatus("stat " + spec);
      if (S_ISBLK(st.st_mode)) return "blk:" + std::to_string(uint64_t(st.st_rdev));
      return "file:" + std::to_string(uint64_t(st.st_dev)) + ":" + std::to_string(uint64_t(st.st_ino));
    }
    case SpecKind::kUri:
      return "uri:" + spec;
    case SpecKind::kName:
      return "udm:" + spec;
  }
  return "udm:" + spec;
}

}  // namespace udm
