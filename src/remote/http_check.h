// Pure checks of HTTP replies (no I/O; fuzzed by fuzz/remote/fuzz_http_check):
// Content-Range, Retry-After, WWW-Authenticate challenges, and the one
// function that decides whether a reply to a ranged GET may be used.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "util/status.h"

namespace udm::remote {

struct ContentRange {
  uint64_t first = 0, last = 0;  // inclusive
  std::optional<uint64_t> total;  // "*" => unknown
};
// Strict "bytes FIRST-LAST/TOTAL" (or "/*"); nullopt if malformed or first > last
// or last >= total.
std::optional<ContentRange> parse_content_range(std::string_view v);
// "bytes */TOTAL" of a 416 reply: the total, else nullopt.
std::optional<uint64_t> parse_unsatisfied_range(std::string_view v);

// Retry-After: delta-seconds or an HTTP-date (relative to now_epoch); capped
// at max_seconds; nullopt if absent/malformed.
std::optional<uint64_t> parse_retry_after(std::string_view v, int64_t now_epoch, uint64_t max_seconds = 300);

struct Challenge {
  std::string scheme;  // lowercase: "bearer", "basic"
  std::map<std::string, std::string> params;  // lowercase keys: realm, service, scope, error
};
// The first challenge of a WWW-Authenticate value; nullopt if malformed.
std::optional<Challenge> parse_challenge(std::string_view v);

using Headers = std::map<std::string, std::string>;  // lowercase names, last value wins

// What a ranged GET of [off, off+len) of an object of known size/ETag must
// look like. etag empty: no validator known.
struct RangeExpect {
  uint64_t off = 0, len = 0;
  uint64_t size = 0;
  std::string etag;
};
// OK only for: 206, a Content-Range naming exactly the range and the size,
// no changed ETag, and exactly len body bytes. Every other reply is an error
// naming url and the range: EIO for the lot (the caller decides which codes
// to retry: see retryable_status()).
Status check_range_reply(long status, const Headers& h, size_t body_len, const RangeExpect& e,
                         const std::string& url);
// 408, 425, 429, 500, 502, 503, 504: worth another try.
bool retryable_status(long status);

}  // namespace udm::remote
