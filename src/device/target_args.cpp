#include "device/target_args.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace udm {

namespace {
constexpr uint64_t kSector = 512;

std::string quote(std::string_view s) {
  if (s.size() > 64) return fmt::format("'{}...'", s.substr(0, 64));
  return fmt::format("'{}'", s);
}
}  // namespace

Result<uint64_t> parse_u64(std::string_view s, std::string_view what) {
  if (s.empty()) return Invalid(fmt::format("{}: empty number", what));
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return Invalid(fmt::format("{}: {} is not a decimal number", what, quote(s)));
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return Invalid(fmt::format("{}: {} is too large", what, quote(s)));
    v = v * 10 + d;
  }
  return v;
}

Result<uint64_t> parse_size(std::string_view s, std::string_view what) {
  size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') n++;
  std::string_view num = s.substr(0, n), unit = s.substr(n);
  if (num.empty()) return Invalid(fmt::format("{}: {} is not a size (e.g. 4096, 64k, 1MiB)", what, quote(s)));
  UDM_ASSIGN_OR_RETURN(uint64_t v, parse_u64(num, what));
  unsigned shift = 0;
  if (!unit.empty()) {
    switch (unit[0]) {
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      case 't': case 'T': shift = 40; break;
      case 'b': case 'B': shift = 0; break;
      default: return Invalid(fmt::format("{}: unknown unit in {} (k, M, G, T)", what, quote(s)));
    }
    std::string_view rest = unit.substr(1);
    bool ok = rest.empty() || ((unit[0] != 'b' && unit[0] != 'B') && (rest == "iB" || rest == "B"));
    if (!ok) return Invalid(fmt::format("{}: unknown unit in {} (k, M, G, T)", what, quote(s)));
  }
  if (shift && v > (UINT64_MAX >> shift)) return Invalid(fmt::format("{}: {} is too large", what, quote(s)));
  return v << shift;
}

// ---------------------------------------------------------------- TargetArgs

TargetArgs::TargetArgs(std::string target, const std::vector<std::string>& args)
    : target_(std::move(target)), args_(args) {}

Status TargetArgs::error(std::string_view what, std::string_view msg) const {
  return Invalid(fmt::format("{}: {}: {}", target_, what, msg));
}

Result<std::string> TargetArgs::next(std::string_view what) {
  if (pos_ >= args_.size()) return Invalid(fmt::format("{}: missing {}", target_, what));
  return args_[pos_++];
}

Result<uint64_t> TargetArgs::next_u64(std::string_view what, uint64_t min, uint64_t max) {
  UDM_ASSIGN_OR_RETURN(std::string s, next(what));
  auto v = parse_u64(s, fmt::format("{}: {}", target_, what));
  if (!v.ok()) return v.status();
  if (*v < min || *v > max) return error(what, fmt::format("{} is outside {}..{}", *v, min, max));
  return *v;
}

Result<uint64_t> TargetArgs::next_sectors(std::string_view what) {
  UDM_ASSIGN_OR_RETURN(uint64_t s, next_u64(what));
  if (s > UINT64_MAX / kSector) return error(what, fmt::format("{} sectors overflow a byte offset", s));
  return s * kSector;
}

Result<uint64_t> TargetArgs::next_size(std::string_view what) {
  UDM_ASSIGN_OR_RETURN(std::string s, next(what));
  return parse_size(s, fmt::format("{}: {}", target_, what));
}

Result<OptArgs> TargetArgs::opt_group(unsigned max) {
  if (empty()) return OptArgs(target_, {});
  UDM_ASSIGN_OR_RETURN(uint64_t n, next_u64("<#opt_args>"));
  if (n > max) return error("<#opt_args>", fmt::format("{} is more than the {} allowed", n, max));
  if (n != remaining())
    return error("<#opt_args>", fmt::format("says {} but {} optional argument{} follow", n, remaining(),
                                            remaining() == 1 ? "" : "s"));
  std::vector<std::string> tokens(args_.begin() + static_cast<ptrdiff_t>(pos_), args_.end());
  pos_ = args_.size();
  return OptArgs(target_, std::move(tokens));
}

Status TargetArgs::done() const {
  if (pos_ < args_.size())
    return Invalid(fmt::format("{}: unexpected argument {} (the line has {} argument{}, {} expected)", target_,
                               quote(args_[pos_]), args_.size(), args_.size() == 1 ? "" : "s", pos_));
  return Status::Ok();
}

// ---------------------------------------------------------------- OptArgs

Status OptArgs::error(std::string_view what, std::string_view msg) const {
  return Invalid(fmt::format("{}: {}: {}", target_, what, msg));
}

Result<bool> OptArgs::flag(std::string_view name) {
  known_.emplace_back(name);
  bool found = false;
  for (size_t i = 0; i < tokens_.size(); i++) {
    if (used_[i] || tokens_[i] != name) continue;
    if (found) return error(name, "given twice");
    used_[i] = true;
    found = true;
  }
  return found;
}

Result<std::optional<std::string>> OptArgs::value(std::string_view key, bool pair) {
  known_.push_back(pair ? fmt::format("{} <value>", key) : fmt::format("{}=<value>", key));
  std::optional<std::string> out;
  for (size_t i = 0; i < tokens_.size(); i++) {
    if (used_[i]) continue;
    const std::string& t = tokens_[i];
    std::optional<std::string> v;
    if (pair && t == key) {
      if (i + 1 >= tokens_.size()) return error(key, "missing its value");
      v = tokens_[i + 1];
      used_[i + 1] = true;
    } else if (!pair && t.size() > key.size() && t.compare(0, key.size(), key) == 0 && t[key.size()] == '=') {
      v = t.substr(key.size() + 1);
      if (v->empty()) return error(key, "empty value");
    } else {
      continue;
    }
    if (out) return error(key, "given twice");
    used_[i] = true;
    out = std::move(v);
  }
  return out;
}

Result<std::optional<uint64_t>> OptArgs::u64(std::string_view key, uint64_t min, uint64_t max, bool pair) {
  UDM_ASSIGN_OR_RETURN(auto s, value(key, pair));
  if (!s) return std::optional<uint64_t>();
  auto v = parse_u64(*s, fmt::format("{}: {}", target_, key));
  if (!v.ok()) return v.status();
  if (*v < min || *v > max) return error(key, fmt::format("{} is outside {}..{}", *v, min, max));
  return std::optional<uint64_t>(*v);
}

Result<std::optional<uint64_t>> OptArgs::size(std::string_view key, bool pair) {
  UDM_ASSIGN_OR_RETURN(auto s, value(key, pair));
  if (!s) return std::optional<uint64_t>();
  auto v = parse_size(*s, fmt::format("{}: {}", target_, key));
  if (!v.ok()) return v.status();
  return std::optional<uint64_t>(*v);
}

Result<std::string> OptArgs::choice(std::string_view key, const std::vector<std::string>& choices,
                                    std::string dflt) {
  UDM_ASSIGN_OR_RETURN(auto s, value(key));
  known_.back() = fmt::format("{}={}", key, fmt::join(choices, "|"));
  if (!s) return dflt;
  if (std::find(choices.begin(), choices.end(), *s) == choices.end())
    return error(key, fmt::format("{} is not one of {}", quote(*s), fmt::join(choices, ", ")));
  return *s;
}

Status OptArgs::done() const {
  for (size_t i = 0; i < tokens_.size(); i++)
    if (!used_[i])
      return Invalid(fmt::format("{}: unknown optional argument {} (known: {})", target_, quote(tokens_[i]),
                                 known_.empty() ? std::string("none") : fmt::format("{}", fmt::join(known_, ", "))));
  return Status::Ok();
}

}  // namespace udm
