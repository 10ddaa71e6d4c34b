#include "device/scheme_registry.h"

namespace udm {

SchemeRegistry& SchemeRegistry::global() {
  static auto* r = new SchemeRegistry();
  return *r;
}

void SchemeRegistry::add(const std::string& scheme, Opener open, std::string usage) {
  std::lock_guard lk(mu_);
  auto& e = entries_[scheme];
  e.open = std::move(open);
  e.usage = std::move(usage);
}

void SchemeRegistry::set_describer(const std::string& scheme, Describer d) {
  std::lock_guard lk(mu_);
  entries_[scheme].describe = std::move(d);
}

std::string SchemeRegistry::describe(std::string_view scheme, const std::string& uri) const {
  Describer d;
  {
    std::lock_guard lk(mu_);
    auto it = entries_.find(scheme);
    if (it == entries_.end() || !it->second.describe) return "";
    d = it->second.describe;
  }
  return d(uri);
}

void SchemeRegistry::set_jobs(const std::string& scheme, SourceJobs j) {
  std::lock_guard lk(mu_);
  entries_[scheme].jobs = std::move(j);
}

SchemeRegistry::SourceJobs SchemeRegistry::jobs(std::string_view scheme) const { return hook(scheme, &Entry::jobs); }

void SchemeRegistry::set_message(const std::string& scheme, SourceMessage m) {
  std::lock_guard lk(mu_);
  entries_[scheme].message = std::move(m);
}

SchemeRegistry::SourceMessage SchemeRegistry::message(std::string_view scheme) const {
  return hook(scheme, &Entry::message);
}

const SchemeRegistry::Opener* SchemeRegistry::find(std::string_view scheme) const {
  std::lock_guard lk(mu_);
  auto it = entries_.find(scheme);
  return it == entries_.end() ? nullptr : &it->second.open;
}

std::vector<std::string> SchemeRegistry::schemes() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (auto& [k, v] : entries_) out.push_back(k);
  return out;
}

}  // namespace udm
