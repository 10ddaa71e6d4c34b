#include "remote/cache_admin.h"

#include <dirent.h>
#include <fmt/format.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "io/region_overlay.h"
#include "remote/cache_store.h"

namespace udm::remote {
namespace {

using nlohmann::json;

std::string slurp(const std::string& path, size_t max = 4096) {
  std::ifstream f(path, std::ios::binary);
  std::string s(max, '\0');
  f.read(s.data(), long(max));
  s.resize(size_t(f.gcount()));
  return s;
}

CacheOwner owner_of(int pid) {
  CacheOwner o;
  o.pid = pid;
  std::string c = slurp("/proc/" + std::to_string(pid) + "/cmdline", 300);
  while (!c.empty() && c.back() == '\0') c.pop_back();
  std::replace(c.begin(), c.end(), '\0', ' ');
  o.command = c;
  return o;
}

std::string iso_time(int64_t t) {
  std::time_t tt = std::time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool is_hex(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// The parts of a key: "sha256:HEX" (a blob) or "url URL\nVALIDATOR\nsize N".
struct KeyParts {
  std::string kind, digest, url, validator;
};
KeyParts split_key(const std::string& key) {
  KeyParts k;
  if (key.rfind("sha256:", 0) == 0) {
    k.kind = "blob";
    k.digest = key;
  } else if (key.rfind("url ", 0) == 0) {
    k.kind = "url";
    std::istringstream in(key.substr(4));
    std::getline(in, k.url);
    std::getline(in, k.validator);
  } else {
    k.kind = "unknown";
  }
  return k;
}

std::string display_key(const std::string& key) {
  KeyParts k = split_key(key);
  if (k.kind == "blob") return k.digest;
  if (k.kind == "url") return k.url + " (" + k.validator + ")";
  return key;
}

// One object as `udm cache ls` shows it; "problem" set if its files are damaged.
json object_json(const std::string& dir, const std::string& id, bool pins_known) {
  json o{{"id", id}};
  std::string base = dir + "/" + id;
  auto st = read_cache_state(base + ".state");
  if (!st.ok()) {
    o["problem"] = st.status().message();
    return o;
  }
  const std::string name = sha256_hex(std::span(reinterpret_cast<const uint8_t*>(st->key.data()), st->key.size()));
  if (name != id) o["problem"] = "misfiled: the file name is not the sha256 of the key it holds";
  KeyParts k = split_key(st->key);
  o["kind"] = k.kind;
  o["key"] = display_key(st->key);
  if (k.kind == "blob") o["digest"] = k.digest;
  if (k.kind == "url") {
    o["url"] = k.url;
    o["validator"] = k.validator;
  }
  o["size"] = st->size;
  o["block_size"] = st->block_size;
  o["blocks"] = st->blocks;
  o["blocks_cached"] = st->present;
  o["bytes_cached"] = st->bytes;  // the last block may be short
  o["verified"] = st->verified;
  o["pinned_blocks"] = pins_known ? json(0) : json(nullptr);
  struct stat ss {};
  if (::stat((base + ".state").c_str(), &ss) == 0) {
    o["last_use"] = iso_time(ss.st_mtim.tv_sec);
    o["last_use_unix"] = int64_t(ss.st_mtim.tv_sec);
  }
  struct stat ds {};
  if (::stat((base + ".data").c_str(), &ds) != 0) {
    o["problem"] = "no data file";
    o["disk_bytes"] = 0;
  } else {
    o["disk_bytes"] = uint64_t(ds.st_blocks) * 512;
    if (uint64_t(ds.st_size) != st->size && !o.contains("problem"))
      o["problem"] = "the data file has the wrong size (" + std::to_string(ds.st_size) + ")";
  }
  return o;
}

struct DirScan {
  std::vector<std::string> states, datas, overlays;
};
Result<DirScan> scan(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return ErrnoStatus("cache dir " + dir);
  DirScan s;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;  // only the store's names (as CacheStore::open)
    if (n.size() == 64 + 6 && n.substr(64) == ".state" && is_object_id(n.substr(0, 64))) s.states.push_back(n.substr(0, 64));
    if (n.size() == 64 + 5 && n.substr(64) == ".data" && is_object_id(n.substr(0, 64))) s.datas.push_back(n.substr(0, 64));
    if (n.size() == 64 + 8 && n.substr(64) == ".overlay" && is_object_id(n.substr(0, 64))) s.overlays.push_back(n.substr(0, 64));
  }
  ::closedir(d);
  std::sort(s.states.begin(), s.states.end());
  std::sort(s.datas.begin(), s.datas.end());
  std::sort(s.overlays.begin(), s.overlays.end());
  return s;
}

// One local state file (ID.overlay, io/region_overlay.h: the regions of the
// object written here, the update copy-back's progress over a remote diff)
// as `udm cache ls` shows it; "problem" set if it cannot be read.
json overlay_json(const std::string& dir, const std::string& id) {
  const std::string file = dir + "/" + id + ".overlay";
  json o{{"id", id}, {"file", file}};
  struct stat ss {};
  if (::stat(file.c_str(), &ss) == 0) {
    o["last_write"] = iso_time(ss.st_mtim.tv_sec);
    o["last_write_unix"] = int64_t(ss.st_mtim.tv_sec);
    o["disk_bytes"] = uint64_t(ss.st_blocks) * 512;
  }
  o["object_cached"] = ::access((dir + "/" + id + ".state").c_str(), F_OK) == 0;
  auto info = read_region_overlay(file);
  if (!info.ok()) {
    o["problem"] = info.status().message();
    return o;
  }
  const std::string name = sha256_hex(std::span(reinterpret_cast<const uint8_t*>(info->key.data()), info->key.size()));
  if (name != id) o["problem"] = "misfiled: the file name is not the sha256 of the key it holds (not used)";
  KeyParts k = split_key(info->key);
  o["kind"] = k.kind;
  o["key"] = display_key(info->key);
  if (k.kind == "blob") o["digest"] = k.digest;
  if (k.kind == "url") {
    o["url"] = k.url;
    o["validator"] = k.validator;
  }
  o["size"] = info->base_size;
  json regions = json::array();
  for (auto& r : info->regions) regions.push_back({r.offset, r.length});
  o["regions"] = std::move(regions);
  o["bytes"] = info->region_bytes;
  return o;
}

Status need_dir(const std::string& dir) {
  if (dir.empty() || dir == "none") return Invalid("no persistent cache directory (--cache-dir none)");
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return ErrnoStatus("cache dir " + dir);
  if (!S_ISDIR(st.st_mode)) return Invalid("cache dir " + dir + ": not a directory");
  // Every process that caches there creates DIR/lock first: without it this
  // is not (yet) a cache directory, and verify/evict must not touch it.
  if (::access((dir + "/lock").c_str(), F_OK) != 0)
    return Status::Error(ENOENT, "cache dir " + dir + ": not a udm cache directory (no " + dir +
                                     "/lock; the daemon creates it when it first caches a remote source)");
  return Status::Ok();
}

// The directory's store, owned by this process for the call; EBUSY naming the owner otherwise.
Result<std::shared_ptr<CacheStore>> take(const std::string& dir, const std::string& verb) {
  UDM_TRY(need_dir(dir));
  auto s = CacheStore::open(dir, UINT64_MAX);
  if (!s.ok()) return s.status();
  if (!*s) {
    auto o = cache_owner(dir);
    std::string who = o ? "pid " + std::to_string(o->pid) + (o->command.empty() ? "" : " (" + o->command + ")")
                        : "another process";
    return Status::Error(EBUSY, "cache dir " + dir + " is in use by " + who + ": `udm cache " + verb +
                                    "` changes the cache and needs it to itself; stop that process first "
                                    "(a running daemon evicts by its own --cache-size; `udm cache ls` works meanwhile)");
  }
  return *s;
}

// What a selector names: a key ("sha256:HEX"), an oci:// spec (its
// digest), a URL (every cached version of it) or an id prefix (>= 8 hex digits).
struct Selector {
  enum { kKey, kUrl, kId } how = kKey;
  std::string v;
  bool matches(const std::string& id, const std::string& key) const {
    switch (how) {
      case kKey: return key == v;
      case kUrl: return split_key(key).url == v;
      case kId: return id.rfind(v, 0) == 0;
    }
    return false;
  }
};
Result<Selector> parse_selector(const std::string& sel, const char* what) {
  std::string s = sel;
  if (s.rfind("oci://", 0) == 0) {
    auto at = s.rfind('@');
    if (at == std::string::npos) return Invalid(sel + ": an oci:// spec needs @sha256:HEX");
    s = s.substr(at + 1);
  }
  if (s.rfind("sha256:", 0) == 0) {
    if (s.size() != 71 || !is_hex(s.substr(7))) return Invalid(sel + ": a digest is sha256: and 64 lowercase hex digits");
    return Selector{Selector::kKey, s};
  }
  if (s.rfind("http://", 0) == 0 || s.rfind("https://", 0) == 0) return Selector{Selector::kUrl, s};
  if (s.size() >= 8 && s.size() <= 64 && is_hex(s)) return Selector{Selector::kId, s};
  return Invalid(fmt::format("{}: not a {}'s key (sha256:HEX, oci://…@sha256:HEX, http(s)://URL) or id (>= 8 hex "
                             "digits, see `udm cache ls`)",
                             sel, what));
}

// The objects a selector names (every one of them; an id prefix must name one).
Result<std::vector<std::shared_ptr<CacheObject>>> select_objects(const std::vector<std::shared_ptr<CacheObject>>& all,
                                                                 const std::string& sel) {
  auto p = parse_selector(sel, "cached object");
  if (!p.ok()) return p.status();
  std::vector<std::shared_ptr<CacheObject>> out;
  for (auto& o : all)
    if (p->matches(o->id(), o->key())) out.push_back(o);
  if (p->how == Selector::kId && out.size() > 1)
    return Invalid(sel + ": ambiguous id prefix (" + std::to_string(out.size()) + " objects); give more digits");
  if (out.empty()) return Status::Error(ENOENT, sel + ": no such object in the cache");
  return out;
}

Result<std::vector<std::shared_ptr<CacheObject>>> select_all(const std::vector<std::shared_ptr<CacheObject>>& all,
                                                             const std::vector<std::string>& select) {
  if (select.empty()) return all;
  std::vector<std::shared_ptr<CacheObject>> out;
  std::set<CacheObject*> seen;
  for (auto& s : select) {
    auto r = select_objects(all, s);
    if (!r.ok()) return r.status();
    for (auto& o : *r)
      if (seen.insert(o.get()).second) out.push_back(o);
  }
  return out;
}

int64_t last_use(const std::string& dir, const std::string& id) {
  struct stat st {};
  if (::stat((dir + "/" + id + ".state").c_str(), &st) != 0) return 0;
  return st.st_mtim.tv_sec;
}

uint64_t cached_bytes_as_counted(const CacheObject& o) { return o.present_count() * o.block_size(); }

}  // namespace

std::optional<CacheOwner> cache_owner(const std::string& dir) {
  std::string lock = dir + "/lock";
  struct stat st {};
  if (::stat(lock.c_str(), &st) != 0) return std::nullopt;
  // /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
  std::ifstream locks("/proc/locks");
  if (locks) {
    std::string line;
    while (std::getline(locks, line)) {
      std::istringstream in(line);
      std::string n, type, adv, mode, pid, dev;
      in >> n >> type;
      if (type == "->") in >> type;  // a waiter
      in >> adv >> mode >> pid >> dev;
      if (type != "FLOCK") continue;
      unsigned maj = 0, min = 0;
      unsigned long long ino = 0;
      if (sscanf(dev.c_str(), "%x:%x:%llu", &maj, &min, &ino) != 3) continue;
      if (ino == st.st_ino && maj == major(st.st_dev) && min == minor(st.st_dev)) return owner_of(std::atoi(pid.c_str()));
    }
    return std::nullopt;
  }
  // No /proc/locks: probe the lock (an instant) and read the PID the owner wrote.
  int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  bool held = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  if (!held) return std::nullopt;
  return owner_of(std::atoi(slurp(lock, 32).c_str()));
}

Result<json> list_cache(const std::string& dir) {
  UDM_TRY(need_dir(dir));
  auto sc = scan(dir);
  if (!sc.ok()) return sc.status();
  auto owner = cache_owner(dir);
  json out{{"dir", dir}};
  out["owner"] = owner ? json{{"pid", owner->pid}, {"command", owner->command}} : json(nullptr);
  json objects = json::array(), damaged = json::array();
  uint64_t total = 0, disk = 0;
  std::set<std::string> with_state(sc->states.begin(), sc->states.end());
  for (auto& id : sc->states) {
    json o = object_json(dir, id, !owner || owner->pid == ::getpid());
    if (o.contains("problem")) {
      damaged.push_back({{"id", id}, {"file", dir + "/" + id + ".state"}, {"problem", o["problem"]}});
      continue;
    }
    total += o["bytes_cached"].get<uint64_t>();
    disk += o["disk_bytes"].get<uint64_t>();
    objects.push_back(std::move(o));
  }
  for (auto& id : sc->datas)
    if (!with_state.count(id))
      damaged.push_back({{"id", id}, {"file", dir + "/" + id + ".data"}, {"problem", "a data file without a state file"}});
  std::stable_sort(objects.begin(), objects.end(), [](const json& a, const json& b) {
    return a.value("last_use_unix", int64_t(0)) > b.value("last_use_unix", int64_t(0));
  });
  json states = json::array();
  for (auto& id : sc->overlays) states.push_back(overlay_json(dir, id));
  std::stable_sort(states.begin(), states.end(), [](const json& a, const json& b) {
    return a.value("last_write_unix", int64_t(0)) > b.value("last_write_unix", int64_t(0));
  });
  out["objects"] = std::move(objects);
  out["damaged"] = std::move(damaged);
  out["states"] = std::move(states);
  out["total_bytes_cached"] = total;
  out["total_disk_bytes"] = disk;
  return out;
}

Result<json> verify_cache(const std::string& dir, const std::vector<std::string>& select) {
  UDM_TRY(need_dir(dir));
  // What is damaged before the store's open drops it (reported as removed).
  auto before = list_cache(dir);
  if (!before.ok()) return before.status();
  auto store = take(dir, "verify");
  if (!store.ok()) return store.status();
  json results = json::array();
  int bad = 0;
  if (select.empty()) {
    for (auto& d : (*before)["damaged"]) {
      // The store's open deleted a state file it could not read and a data
      // file without one; a misfiled object (its name not its key's hash)
      // loads, and goes here.
      std::string id = d["id"];
      for (auto& o : (*store)->objects())
        if (o->id() == id) UDM_TRY((*store)->remove(o.get()));
      bool gone = ::access((dir + "/" + id + ".state").c_str(), F_OK) != 0 &&
                  ::access((dir + "/" + id + ".data").c_str(), F_OK) != 0;
      results.push_back({{"id", id}, {"key", nullptr}, {"status", gone ? "removed" : "bad"},
                         {"detail", d["problem"].get<std::string>() + (gone ? "; removed " : "; could not remove ") +
                                        d["file"].get<std::string>()}});
      bad++;
    }
  }
  auto sel = select_all((*store)->objects(), select);
  if (!sel.ok()) return sel.status();
  for (auto& o : *sel) {
    json r{{"id", o->id()}, {"key", display_key(o->key())}, {"blocks_dropped", 0}};
    std::string what = "cache object " + display_key(o->key());
    // A set bit whose bytes are a hole lost its data: drop it (a refetch, never wrong bytes).
    auto holes = o->present_blocks_over_holes();
    std::string detail;
    if (!holes.empty()) {
      Status st = (*store)->drop_blocks(o.get(), holes);
      if (!st.ok()) return st;
      r["blocks_dropped"] = holes.size();
      detail = std::to_string(holes.size()) + " block(s) marked cached had no data in the data file: dropped";
      bad++;
      r["status"] = "bad";
    }
    KeyParts k = split_key(o->key());
    if (k.kind == "blob" && o->present_count() == o->blocks()) {
      Status st = o->verify_sha256(k.digest.substr(7), what);
      if (!st.ok()) {
        if (st.code() != EIO) return st;
        // verify_sha256 cleared the bits durably; take the bytes out too.
        std::vector<uint64_t> all(o->blocks());
        for (uint64_t b = 0; b < o->blocks(); b++) all[b] = b;
        Status ds = (*store)->drop_blocks(o.get(), all);
        if (!ds.ok()) return ds;
        r["blocks_dropped"] = o->blocks();
        detail += (detail.empty() ? "" : "; ") + st.message();
        if (r.value("status", "") != "bad") bad++;
        r["status"] = "bad";
      } else if (!r.contains("status")) {
        r["status"] = "ok";
        detail = "every block cached; content matches its digest";
      }
    } else if (!r.contains("status")) {
      r["status"] = o->present_count() == o->blocks() ? "ok" : "partial";
      std::string held = std::to_string(o->present_count()) + "/" + std::to_string(o->blocks()) + " blocks cached";
      if (k.kind == "blob")
        detail = held + "; every cached block has data (the digest is checked once every block is cached)";
      else
        detail = held + "; every cached block has data (a URL has no digest to check the bytes against)";
    }
    r["detail"] = detail;
    r["verified"] = o->verified();
    results.push_back(std::move(r));
  }
  return json{{"dir", dir}, {"objects", std::move(results)}, {"bad", bad}};
}

namespace {

// `evict --state`: the local state files the selectors name (or all), removed.
Result<json> evict_states(const std::string& dir, const EvictRequest& req, CacheStore& store) {
  auto sc = scan(dir);
  if (!sc.ok()) return sc.status();
  std::vector<json> all;
  for (auto& id : sc->overlays) all.push_back(overlay_json(dir, id));
  std::vector<json> chosen;
  std::set<std::string> seen;
  for (auto& sel : req.select) {  // every selector checked before anything changes
    auto p = parse_selector(sel, "local state file");
    if (!p.ok()) return p.status();
    size_t n = 0;
    for (auto& o : all) {
      // Keys are matched as the file holds them; a damaged file by its id only.
      auto info = read_region_overlay(o["file"].get<std::string>());
      bool m = p->how == Selector::kId ? p->matches(o["id"], "") : info.ok() && p->matches(o["id"], info->key);
      if (!m) continue;
      n++;
      if (seen.insert(o["id"]).second) chosen.push_back(o);
    }
    if (p->how == Selector::kId && n > 1)
      return Invalid(sel + ": ambiguous id prefix (" + std::to_string(n) + " state files); give more digits");
    if (n == 0) return Status::Error(ENOENT, sel + ": no such local state file in the cache dir");
  }
  if (req.all) chosen = all;
  json removed = json::array();
  for (auto& o : chosen) {
    const std::string file = o["file"];
    if (::unlink(file.c_str()) != 0 && errno != ENOENT) return ErrnoStatus("unlink " + file);
    removed.push_back({{"id", o["id"]}, {"file", file}, {"key", o.value("key", std::string())}});
  }
  if (!chosen.empty()) {
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
  return json{{"dir", dir}, {"evicted", json::array()}, {"states_removed", std::move(removed)},
              {"bytes_cached_before", store.used_bytes()}, {"bytes_cached_after", store.used_bytes()}};
}

}  // namespace

Result<json> evict_cache(const std::string& dir, const EvictRequest& req) {
  int modes = (req.all ? 1 : 0) + (req.to_bytes ? 1 : 0) + (req.select.empty() ? 0 : 1);
  if (modes != 1) return Invalid("evict: give exactly one of: objects (KEY|URL|ID...), --all, --to SIZE");
  if (req.state && req.to_bytes) return Invalid("evict: --state takes state files (KEY|URL|ID...) or --all, not --to");
  auto store = take(dir, "evict");
  if (!store.ok()) return store.status();
  if (req.state) return evict_states(dir, req, **store);
  auto all = (*store)->objects();
  uint64_t before = (*store)->used_bytes();
  json evicted = json::array();
  auto remove_whole = [&](const std::shared_ptr<CacheObject>& o) -> Status {
    uint64_t bytes = cached_bytes_as_counted(*o);
    std::string id = o->id(), key = display_key(o->key());
    UDM_TRY((*store)->remove(o.get()));
    json e{{"id", id}, {"key", key}, {"bytes", bytes}, {"whole", true}};
    // Its local state (an update copy-back's progress) is not cache: kept.
    if (::access((dir + "/" + id + ".overlay").c_str(), F_OK) == 0) e["state_kept"] = dir + "/" + id + ".overlay";
    evicted.push_back(std::move(e));
    return Status::Ok();
  };
  if (req.all || !req.select.empty()) {
    auto sel = select_all(all, req.select);  // every selector checked before anything changes
    if (!sel.ok()) return sel.status();
    for (auto& o : *sel) UDM_TRY(remove_whole(o));
  } else {
    // Least recently used objects first (the state file's mtime), whole while
    // that stays above the target; then blocks of the next one, its middle
    // first (ZFile and LSMT keep headers and indexes at the ends).
    std::vector<std::pair<int64_t, std::shared_ptr<CacheObject>>> by_use;
    for (auto& o : all) by_use.push_back({last_use(dir, o->id()), o});
    std::stable_sort(by_use.begin(), by_use.end(), [](auto& a, auto& b) { return a.first < b.first; });
    uint64_t target = *req.to_bytes;
    for (auto& [t, o] : by_use) {
      uint64_t used = (*store)->used_bytes();
      if (used <= target) break;
      uint64_t mine = cached_bytes_as_counted(*o);
      if (mine == 0) continue;
      if (used - mine >= target) {
        UDM_TRY(remove_whole(o));
        continue;
      }
      uint64_t need = (used - target + o->block_size() - 1) / o->block_size();
      std::vector<uint64_t> order;
      for (uint64_t b = 1; b + 1 < o->blocks(); b++) order.push_back(b);
      order.push_back(0);
      if (o->blocks() > 1) order.push_back(o->blocks() - 1);
      std::vector<uint64_t> drop;
      for (uint64_t b : order) {
        if (drop.size() == need) break;
        if (o->present(b)) drop.push_back(b);
      }
      UDM_TRY((*store)->drop_blocks(o.get(), drop));
      evicted.push_back({{"id", o->id()}, {"key", display_key(o->key())}, {"bytes", drop.size() * o->block_size()}, {"whole", false}});
    }
  }
  return json{{"dir", dir}, {"evicted", std::move(evicted)}, {"bytes_cached_before", before},
              {"bytes_cached_after", (*store)->used_bytes()}};
}

}  // namespace udm::remote
