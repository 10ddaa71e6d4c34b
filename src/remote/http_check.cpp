#include "remote/http_check.h"

#include <curl/curl.h>
#include <fmt/format.h>

#include <cctype>

namespace udm::remote {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) s.remove_suffix(1);
  return s;
}

// Decimal digits only, no sign, no overflow.
std::optional<uint64_t> parse_u64(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    uint64_t d = uint64_t(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (auto& c : r) c = char(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

}  // namespace

std::optional<ContentRange> parse_content_range(std::string_view v) {
  v = trim(v);
  if (v.size() < 6 || lower(v.substr(0, 6)) != "bytes ") return std::nullopt;
  v.remove_prefix(6);
  v = trim(v);
  size_t dash = v.find('-'), slash = v.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || dash > slash) return std::nullopt;
  auto a = parse_u64(v.substr(0, dash));
  auto b = parse_u64(v.substr(dash + 1, slash - dash - 1));
  if (!a || !b || *a > *b) return std::nullopt;
  ContentRange r{*a, *b, std::nullopt};
  std::string_view t = v.substr(slash + 1);
  if (t != "*") {
    auto tot = parse_u64(t);
    if (!tot || *b >= *tot) return std::nullopt;
    r.total = *tot;
  }
  return r;
}

std::optional<uint64_t> parse_unsatisfied_range(std::string_view v) {
  v = trim(v);
  if (v.size() < 8 || lower(v.substr(0, 8)) != "bytes */") return std::nullopt;
  return parse_u64(v.substr(8));
}

std::optional<uint64_t> parse_retry_after(std::string_view v, int64_t now_epoch, uint64_t max_seconds) {
  v = trim(v);
  if (v.empty()) return std::nullopt;
  if (auto n = parse_u64(v)) return std::min(*n, max_seconds);
  if (v.size() > 64) return std::nullopt;
  std::string s(v);
  time_t t = curl_getdate(s.c_str(), nullptr);
  if (t < 0) return std::nullopt;
  if (int64_t(t) <= now_epoch) return 0;
  return std::min(uint64_t(int64_t(t) - now_epoch), max_seconds);
}

std::optional<Challenge> parse_challenge(std::string_view v) {
  v = trim(v);
  size_t sp = v.find(' ');
  Challenge c;
  c.scheme = lower(v.substr(0, sp));
  if (c.scheme.empty()) return std::nullopt;
  for (char ch : c.scheme)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_') return std::nullopt;
  if (sp == std::string_view::npos) return c;
  std::string_view rest = v.substr(sp + 1);
  size_t i = 0;
  while (i < rest.size()) {
    while (i < rest.size() && (rest[i] == ' ' || rest[i] == ',' || rest[i] == '\t')) i++;
    if (i >= rest.size()) break;
    size_t eq = rest.find('=', i);
    if (eq == std::string_view::npos) return std::nullopt;
    std::string key = lower(trim(rest.substr(i, eq - i)));
    if (key.empty() || key.find(' ') != std::string::npos) return std::nullopt;
    i = eq + 1;
    std::string val;
    if (i < rest.size() && rest[i] == '"') {
      i++;
      bool closed = false;
      while (i < rest.size()) {
        char ch = rest[i++];
        if (ch == '\\' && i < rest.size()) {
          val.push_back(rest[i++]);
        } else if (ch == '"') {
          closed = true;
          break;
        } else {
          val.push_back(ch);
        }
      }
      if (!closed) return std::nullopt;
    } else {
      size_t e = rest.find(',', i);
      if (e == std::string_view::npos) e = rest.size();
      val = std::string(trim(rest.substr(i, e - i)));
      i = e;
    }
    c.params[key] = val;
  }
  return c;
}

bool retryable_status(long s) { return s == 408 || s == 425 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504; }

Status check_range_reply(long status, const Headers& h, size_t body_len, const RangeExpect& e,
                         const std::string& url) {
  std::string what = fmt::format("{}: bytes {}-{}", url, e.off, e.off + e.len - 1);
  if (status == 200)
    return IoError(what + ": server answered 200 (whole object) to a ranged request: it ignores Range, "
                   "or the object changed (If-Range)");
  if (status == 416) {
    auto it = h.find("content-range");
    auto tot = it == h.end() ? std::nullopt : parse_unsatisfied_range(it->second);
    return IoError(what + ": 416 range not satisfiable" +
                   (tot ? fmt::format(" (server says size {}, expected {}: the object changed)", *tot, e.size) : ""));
  }
  if (status != 206) return IoError(fmt::format("{}: HTTP {}", what, status));
  if (h.count("content-type") && h.at("content-type").rfind("multipart/", 0) == 0)
    return IoError(what + ": multipart reply to a single-range request");
  auto it = h.find("content-range");
  if (it == h.end()) return IoError(what + ": 206 without Content-Range");
  auto cr = parse_content_range(it->second);
  if (!cr) return IoError(what + ": malformed Content-Range '" + it->second + "'");
  if (cr->first != e.off || cr->last != e.off + e.len - 1)
    return IoError(fmt::format("{}: server sent Content-Range '{}' for another range", what, it->second));
  if (!cr->total || *cr->total != e.size)
    return IoError(fmt::format("{}: Content-Range '{}' gives size {}, expected {}: the object changed", what,
                               it->second, cr->total ? std::to_string(*cr->total) : "*", e.size));
  if (!e.etag.empty()) {
    auto et = h.find("etag");
    if (et != h.end() && et->second != e.etag)
      return IoError(what + ": ETag changed from " + e.etag + " to " + et->second + ": the object changed");
  }
  if (body_len != e.len)
    return IoError(fmt::format("{}: body has {} bytes, expected {} (truncated or too long)", what, body_len, e.len));
  return Status::Ok();
}

}  // namespace udm::remote
