// `udm cache ls|verify|evict`: the operator's view and control of a
// persistent cache directory (cache_store.h, docs/remote.md "udm cache").
//
// Ownership: one process owns a directory (flock on DIR/lock). list_cache()
// only reads, so it works while a daemon owns the directory (pins, held in
// the owner's memory, are then unknown). verify_cache() and evict_cache()
// change the directory, so they take the lock themselves and refuse (EBUSY,
// naming the owner's PID and command) while another process holds it: a
// daemon's cache is changed by its own --cache-size LRU, or after it stops.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm::remote {

struct CacheOwner {
  int pid = 0;
  std::string command;  // /proc/PID/cmdline, spaces between the words
};
// The process holding DIR/lock (from /proc/locks, else the PID the owner
// wrote into the lock file after a failed probe); nullopt if none.
std::optional<CacheOwner> cache_owner(const std::string& dir);

// {"dir", "owner": {"pid","command"}|null, "objects": [...], "damaged": [...],
//  "states": [...], "total_bytes_cached", "total_disk_bytes"}; objects most
// recently used first; states (ID.overlay files, the local state of an update
// copy-back over a remote object) most recently written first.
// Changes nothing.
Result<nlohmann::json> list_cache(const std::string& dir);

// Checks every object (or those matching `select`: a key, a URL, or an id
// prefix of at least 8 hex digits): a fully cached OCI blob is hashed and
// compared with its digest (a mismatch drops the copy), every present block
// must have data in the data file (a block whose bytes are a hole is
// dropped), damaged files are removed. {"dir", "objects": [{"id","key",
// "status": "ok"|"partial"|"bad"|"removed", "detail", "blocks_dropped"}],
// "bad": N}. Takes the directory's lock.
Result<nlohmann::json> verify_cache(const std::string& dir, const std::vector<std::string>& select);

struct EvictRequest {
  std::vector<std::string> select;  // keys, URLs or id prefixes
  bool all = false;
  std::optional<uint64_t> to_bytes;  // evict least recently used data until at most this much is cached
  // The local state files (ID.overlay: an update copy-back's progress over a
  // remote object, io/region_overlay.h) the selectors name, or all, instead
  // of cached data; never with to_bytes. Without it they are never removed.
  bool state = false;
};
// {"dir", "evicted": [{"id","key","bytes","whole","state_kept"?}], "bytes_cached_before", "bytes_cached_after"}
// (with state: "states_removed": [{"id","file","key"}]).
// Takes the directory's lock. Block accounting as --cache-size counts it
// (whole blocks).
Result<nlohmann::json> evict_cache(const std::string& dir, const EvictRequest& req);

}  // namespace udm::remote
