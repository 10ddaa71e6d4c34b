#include "remote/config.h"

#include <cctype>
#include <cstdlib>
#include <string>
#include <mutex>

namespace udm::remote {
namespace {

std::mutex g_mu;
bool g_init = false;
RemoteConfig g_cfg;

void init_locked() {
  if (g_init) return;
  g_init = true;
  if (const char* v = std::getenv("UDM_CACHE_DIR"); v && *v) g_cfg.cache_dir = v;
  if (const char* v = std::getenv("UDM_CACHE_SIZE"); v && *v) {
    if (auto r = parse_byte_size(v); r.ok()) g_cfg.cache_size = *r;
  }
  if (const char* v = std::getenv("UDM_REMOTE_ON_ERROR"); v && *v) {
    if (auto r = parse_on_error(v); r.ok()) g_cfg.on_error = *r;
  }
  if (const char* v = std::getenv("UDM_REGISTRY_AUTH"); v && *v) g_cfg.registry_auth = v;
  if (const char* v = std::getenv("UDM_REMOTE_CA"); v && *v) g_cfg.ca_file = v;
  auto list = [](const char* v, std::vector<std::string>& out) {
    std::string s = v;
    size_t p = 0;
    while (p <= s.size()) {
      size_t c = s.find(',', p);
      if (c == std::string::npos) c = s.size();
      if (c > p) out.push_back(s.substr(p, c - p));
      p = c + 1;
    }
  };
  if (const char* v = std::getenv("UDM_INSECURE_REGISTRY"); v && *v) list(v, g_cfg.insecure_registries);
  if (const char* v = std::getenv("UDM_REMOTE_RESOLVE"); v && *v) {
    std::vector<std::string> r;
    list(v, r);
    for (auto& e : r)
      if (check_resolve(e).ok()) g_cfg.resolve.push_back(e);
  }
}

}  // namespace

RemoteConfig config() {
  std::lock_guard lk(g_mu);
  init_locked();
  return g_cfg;
}

void set_config(const RemoteConfig& c) {
  std::lock_guard lk(g_mu);
  g_init = true;
  g_cfg = c;
}

Result<uint64_t> parse_byte_size(const std::string& s) {
  if (s.empty()) return Invalid("empty size");
  uint64_t v = 0;
  size_t i = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; i++) {
    if (v > (UINT64_MAX - 9) / 10) return Invalid("size too large: " + s);
    v = v * 10 + uint64_t(s[i] - '0');
  }
  if (i == 0) return Invalid("bad size '" + s + "' (want e.g. 4G, 512M, 1048576)");
  std::string unit = s.substr(i);
  int shift = 0;
  if (unit.empty() || unit == "B") shift = 0;
  else if (unit == "K" || unit == "k" || unit == "KiB") shift = 10;
  else if (unit == "M" || unit == "MiB") shift = 20;
  else if (unit == "G" || unit == "GiB") shift = 30;
  else if (unit == "T" || unit == "TiB") shift = 40;
  else return Invalid("bad size unit in '" + s + "' (K, M, G, T)");
  if (shift && v > (UINT64_MAX >> shift)) return Invalid("size too large: " + s);
  return v << shift;
}

Status check_resolve(const std::string& s) {
  auto bad = [&] { return Invalid("--remote-resolve '" + s + "': want HOST:PORT:ADDR (e.g. registry.example:443:10.0.0.5)"); };
  size_t c1 = s.find(':');
  if (c1 == std::string::npos || c1 == 0) return bad();
  size_t c2 = s.find(':', c1 + 1);
  if (c2 == std::string::npos || c2 == c1 + 1 || c2 + 1 >= s.size()) return bad();
  std::string port = s.substr(c1 + 1, c2 - c1 - 1);
  if (port.size() > 5) return bad();
  for (char ch : port)
    if (ch < '0' || ch > '9') return bad();
  if (std::stoul(port) == 0 || std::stoul(port) > 65535) return bad();
  for (char ch : s.substr(0, c1))
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '-') return bad();
  for (char ch : s.substr(c2 + 1))
    if (!std::isxdigit(static_cast<unsigned char>(ch)) && ch != '.' && ch != ':' && ch != '[' && ch != ']') return bad();
  return Status::Ok();
}

Result<OnError> parse_on_error(const std::string& s) {
  if (s == "fail") return OnError::kFail;
  if (s == "queue") return OnError::kQueue;
  return Invalid("--remote-on-error must be fail or queue, not '" + s + "'");
}

}  // namespace udm::remote
