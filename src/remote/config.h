// Process-wide settings of the remote backing sources (http://, https://,
// oci://). The daemon's options (--cache-dir, --cache-size, --remote-on-error,
// --insecure-registry, --registry-auth, --remote-ca, --remote-resolve,
// --remote-stall-timeout, --remote-retries)
// set it before any device opens; every option also has an environment
// variable (UDM_CACHE_DIR, ...) so offline tools (`udm update-info URL`,
// `udm pull`) use the same cache. See docs/remote.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm::remote {

enum class OnError { kFail, kQueue };

struct RemoteConfig {
  std::string cache_dir = "/var/cache/udm";  // "none": memory only, nothing persists
  uint64_t cache_size = 4ull << 30;          // bytes of cached blocks, all sources together
  uint32_t block_size = 64u << 10;           // cache and fetch unit of new objects (a cached one keeps its own)
  uint32_t max_fetch = 4u << 20;             // largest single ranged GET (coalesced misses + readahead)
  OnError on_error = OnError::kFail;
  std::vector<std::string> insecure_registries;  // host[:port] allowed over plain HTTP
  std::string registry_auth;                     // docker config.json ("auths")
  std::string ca_file;                           // extra CA bundle for https (tests, private CAs)
  std::vector<std::string> resolve;              // HOST:PORT:ADDR, libcurl's CURLOPT_RESOLVE (curl --resolve)
  int retries = 5;                               // per request, before on_error applies
  int stall_seconds = 30;                        // no byte for this long: the transfer failed
  int connect_seconds = 10;
  uint32_t retry_base_ms = 200;                  // backoff: base * 2^n, capped at retry_max_ms, jittered
  uint32_t retry_max_ms = 5000;
};

// A copy of the current settings (defaults overridden by UDM_* environment
// variables, then by set_config()).
RemoteConfig config();
void set_config(const RemoteConfig& c);

Result<uint64_t> parse_byte_size(const std::string& s);  // "4G", "512M", "1048576"
Result<OnError> parse_on_error(const std::string& s);
// Checks one --remote-resolve entry: HOST:PORT:ADDR (ADDR an IPv4 or [IPv6] address).
Status check_resolve(const std::string& s);

}  // namespace udm::remote
