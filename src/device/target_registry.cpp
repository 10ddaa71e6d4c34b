#include <fmt/format.h>


#include "device/target.h"

namespace udm {

void TargetRegistry::add(const std::string& type, TargetFactory factory, std::string usage) {
  entries_[type] = Entry{std::move(factory), std::move(usage)};
}

Result<TargetPtr> TargetRegistry::create(const TargetParams& params) const {
  auto it = entries_.find(params.type);
  if (it == entries_.end()) {
    std::string known;
    for (auto& [k, v] : entries_) known += (known.empty() ? "" : ", ") + k;
    return Invalid(fmt::format("unknown target type '{}' (known: {})", params.type, known));
  }
  auto r = it->second.factory(params);
  if (!r.ok() && r.status().code() == EINVAL && !it->second.usage.empty())
    return Invalid(r.status().message() + " (usage: " + it->second.usage + ")");
  return r;
}

std::vector<std::string> TargetRegistry::types() const {
  std::vector<std::string> out;
  for (auto& [k, v] : entries_) out.push_back(k);
  return out;
}

std::string TargetRegistry::usage(const std::string& type) const {
  auto it = entries_.find(type);
  return it == entries_.end() ? "" : it->second.usage;
}

}  // namespace udm
