// The remote feature's command-line part:
//  * options of `udm daemon` that configure remote sources (process-wide,
//    remote/config.h), added to the daemon's subcommand here so the daemon
//    does not name the feature; `udm push` and `udm pull` take them too;
//  * `udm push REF FILE...` and `udm pull REF [--create NAME]` (oci_image.h);
//  * `udm cache ls|verify|evict` over a cache directory (cache_admin.h).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <sys/stat.h>

#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/cli_common.h"
#include "daemon/control_socket.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/lsmt_format.h"
#include "overlaybd/zfile_device.h"
#include "overlaybd/zfile_format.h"
#include "remote/cache_admin.h"
#include "remote/config.h"
#include "remote/oci_image.h"
#include "remote/remote.h"
#include "update/format.h"

namespace udm {
namespace {

struct RemoteOpts {
  std::string cache_dir, cache_size, on_error, auth, ca;
  std::vector<std::string> insecure, resolve;
  int stall = -1, retries = -1;
};

void add_remote_options(CLI::App* d, std::shared_ptr<RemoteOpts> o, bool daemon) {
  d->add_option("--cache-dir", o->cache_dir, "remote sources: persistent cache directory (default /var/cache/udm; 'none')")
      ->envname("UDM_CACHE_DIR");
  d->add_option("--cache-size", o->cache_size, "remote sources: cache cap in bytes (K/M/G/T; default 4G)")
      ->envname("UDM_CACHE_SIZE");
  if (daemon)
    d->add_option("--remote-on-error", o->on_error,
                  "remote sources, when retries run out: fail (EIO, default) or queue (wait for the server)")
        ->envname("UDM_REMOTE_ON_ERROR");
  d->add_option("--insecure-registry", o->insecure, "HOST[:PORT] of a registry reached over plain HTTP (repeatable)");
  d->add_option("--registry-auth", o->auth, "docker config.json with registry credentials (\"auths\")")
      ->envname("UDM_REGISTRY_AUTH");
  d->add_option("--remote-ca", o->ca, "CA bundle for https:// and registries")->envname("UDM_REMOTE_CA");
  d->add_option("--remote-resolve", o->resolve,
                "HOST:PORT:ADDR: connect to ADDR for HOST:PORT, TLS still checks HOST (curl --resolve; repeatable)");
  if (daemon) {
    d->add_option("--remote-stall-timeout", o->stall, "seconds without a byte before a transfer fails (default 30)");
    d->add_option("--remote-retries", o->retries, "retries per request before --remote-on-error applies (default 5)");
  }
}

void apply(const RemoteOpts& o) {
  remote::RemoteConfig c = remote::config();
  if (!o.cache_dir.empty()) c.cache_dir = o.cache_dir;
  if (!o.cache_size.empty()) {
    auto r = remote::parse_byte_size(o.cache_size);
    if (!r.ok()) throw CLI::ValidationError("--cache-size", r.status().message());
    c.cache_size = *r;
  }
  if (!o.on_error.empty()) {
    auto r = remote::parse_on_error(o.on_error);
    if (!r.ok()) throw CLI::ValidationError("--remote-on-error", r.status().message());
    c.on_error = *r;
  }
  for (auto& h : o.insecure) c.insecure_registries.push_back(h);
  if (!o.auth.empty()) c.registry_auth = o.auth;
  if (!o.ca.empty()) c.ca_file = o.ca;
  for (auto& r : o.resolve) {
    Status st = remote::check_resolve(r);
    if (!st.ok()) throw CLI::ValidationError("--remote-resolve", st.message());
    c.resolve.push_back(r);
  }
  if (o.stall > 0) c.stall_seconds = o.stall;
  if (o.retries >= 0) c.retries = o.retries;
  remote::set_config(c);
}

// What a file is, by its first bytes: its layer media type and whether it is an overlaybd layer.
struct Kind {
  std::string media_type;
  bool overlaybd = false, diff = false;
};
Kind file_kind(const std::string& path) {
  std::vector<uint8_t> head(1024, 0);
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(head.data()), long(head.size()));
  head.resize(size_t(f.gcount()));
  bool tar = head.size() >= 512 && std::string(reinterpret_cast<char*>(&head[257]), 5) == "ustar";
  if (obd::is_zfile_magic(head) || obd::is_lsmt_magic(head) || tar)
    return {"application/vnd.oci.image.layer.v1.tar", true, false};
  if (update::has_diff_magic(head)) return {remote::kUpdateDiffArtifact, false, true};
  return {"application/octet-stream", false, false};
}

void push(const std::string& refs, const std::vector<std::string>& files, const std::string& chunk_s) {
  auto ref = remote::parse_image_ref(refs);
  if (!ref.ok()) return cli::fail(ref.status());
  if (!ref->digest.empty()) return cli::fail("push needs a tag, not a digest: " + refs);
  auto chunk = remote::parse_byte_size(chunk_s);
  if (!chunk.ok() || *chunk == 0) return cli::fail("--chunk-size: " + chunk.status().message());
  remote::RegistryClient c(*ref, "pull,push");
  nlohmann::json layers = nlohmann::json::array(), diff_ids = nlohmann::json::array();
  bool artifact = false;
  for (const auto& file : files) {
    struct stat st;
    if (::stat(file.c_str(), &st) != 0) return cli::fail(ErrnoStatus(file));
    Kind k = file_kind(file);
    if (k.diff) {
      if (files.size() != 1) return cli::fail(file + ": an update diff is pushed alone, as an artifact");
      artifact = true;
    }
    bool uploaded = false;
    auto dg = c.push_blob_file(file, *chunk, &uploaded);
    if (!dg.ok()) return cli::fail(dg.status());
    fmt::print(stderr, "{} {} ({} bytes) {}\n", uploaded ? "pushed" : "exists", *dg, uint64_t(st.st_size), file);
    nlohmann::json l{{"mediaType", k.media_type}, {"digest", *dg}, {"size", uint64_t(st.st_size)}};
    if (k.overlaybd)
      l["annotations"] = {{remote::kObdDigest, *dg}, {remote::kObdSize, std::to_string(uint64_t(st.st_size))}};
    layers.push_back(l);
    diff_ids.push_back(*dg);
  }
  nlohmann::json manifest{{"schemaVersion", 2}, {"mediaType", remote::kOciManifest}};
  if (artifact) {
    auto cfg = c.push_blob_bytes("{}");
    if (!cfg.ok()) return cli::fail(cfg.status());
    manifest["artifactType"] = remote::kUpdateDiffArtifact;
    manifest["config"] = {{"mediaType", "application/vnd.oci.empty.v1+json"}, {"digest", *cfg}, {"size", 2}};
  } else {
    std::string config = nlohmann::json{{"architecture", "amd64"},
                                        {"os", "linux"},
                                        {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}}
                             .dump();
    auto cfg = c.push_blob_bytes(config);
    if (!cfg.ok()) return cli::fail(cfg.status());
    manifest["config"] = {{"mediaType", "application/vnd.oci.image.config.v1+json"}, {"digest", *cfg}, {"size", config.size()}};
  }
  manifest["layers"] = layers;
  auto md = c.put_manifest(ref->tag, manifest.dump(), remote::kOciManifest);
  if (!md.ok()) return cli::fail(md.status());
  fmt::print("{}\n", *md);
}

void pull(const std::string& refs, const std::string& create, const std::string& socket) {
  auto ref = remote::parse_image_ref(refs);
  if (!ref.ok()) return cli::fail(ref.status());
  remote::RegistryClient c(*ref, "pull");
  std::string digest;
  auto m = remote::resolve_image(c, &digest);
  if (!m.ok()) return cli::fail(m.status());
  if (m->layers.empty()) return cli::fail(refs + ": the image has no layers");
  std::vector<std::string> specs;
  for (auto& l : m->layers) {
    std::string d = l.digest;
    if (auto it = l.annotations.find(remote::kObdDigest); it != l.annotations.end()) d = it->second;
    specs.push_back("oci://" + ref->authority + "/" + ref->repo + "@" + d);
  }
  std::string table;
  if (m->artifact_type == remote::kUpdateDiffArtifact) {
    // An update diff: the spec to give the update target.
    fmt::print("{}\n", specs.front());
    return;
  }
  // The virtual size: the top layer's LSMT header.
  auto top = remote::open_remote(specs.back(), false);
  if (!top.ok()) return cli::fail(top.status());
  auto blob = obd::open_layer_blob(*top);
  if (!blob.ok()) return cli::fail(blob.status().context(specs.back()));
  auto layer = obd::open_lsmt_layer(*blob, specs.back());
  if (!layer.ok()) return cli::fail(layer.status().context(specs.back() + " (not an overlaybd layer)"));
  table = fmt::format("0 {} lsmt", layer->header.virtual_size / 512);
  for (auto& s : specs) table += " " + s;
  if (create.empty()) {
    fmt::print("{}\n", table);
    return;
  }
  auto r = control_call(socket, nlohmann::json{{"verb", "create"}, {"name", create}, {"table", table}, {"read_only", true}});
  if (!r.ok()) return cli::fail(r.status());
  if (!(*r).value("ok", false)) return cli::fail((*r).value("error", std::string("create failed")));
  fmt::print("{}\n", table);
}

// ---------------------------------------------------------------- udm cache

std::string human(uint64_t b) {
  const char* u[] = {"B", "K", "M", "G", "T"};
  double v = double(b);
  int i = 0;
  while (v >= 1024 && i < 4) {
    v /= 1024;
    i++;
  }
  return i == 0 ? fmt::format("{}B", b) : fmt::format("{:.1f}{}", v, u[i]);
}

std::string cache_dir_of(const std::string& opt) {
  return opt.empty() ? remote::config().cache_dir : opt;
}

void cache_ls(const std::string& dir, bool json_out) {
  auto r = remote::list_cache(dir);
  if (!r.ok()) return cli::fail(r.status());
  const auto& j = *r;
  if (json_out) {
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";  // keys hold server text
    return;
  }
  std::string owner = j["owner"].is_null()
                          ? "not in use"
                          : fmt::format("in use by pid {} ({})", j["owner"]["pid"].get<int>(),
                                        j["owner"]["command"].get<std::string>());
  fmt::print("{}: {} object(s), {} cached ({} on disk), {}\n", dir, j["objects"].size(),
             human(j["total_bytes_cached"].get<uint64_t>()), human(j["total_disk_bytes"].get<uint64_t>()), owner);
  if (!j["objects"].empty())
    fmt::print("{:<12}  {:<4}  {:>8}  {:>8}  {:>13}  {:<8}  {:<6}  {:<20}  {}\n", "ID", "KIND", "SIZE", "CACHED", "BLOCKS",
               "VERIFIED", "PINNED", "LAST USE", "KEY");
  for (const auto& o : j["objects"]) {
    std::string pinned = o["pinned_blocks"].is_null() ? "?" : std::to_string(o["pinned_blocks"].get<uint64_t>());
    fmt::print("{:<12}  {:<4}  {:>8}  {:>8}  {:>13}  {:<8}  {:<6}  {:<20}  {}\n", o["id"].get<std::string>().substr(0, 12),
               o["kind"].get<std::string>(), human(o["size"].get<uint64_t>()), human(o["bytes_cached"].get<uint64_t>()),
               fmt::format("{}/{}", o["blocks_cached"].get<uint64_t>(), o["blocks"].get<uint64_t>()),
               o["verified"].get<bool>() ? "yes" : "no", pinned, o.value("last_use", std::string("-")),
               o["key"].get<std::string>());
  }
  for (const auto& d : j["damaged"])
    fmt::print("damaged: {}: {} (`udm cache verify` removes it)\n", d["file"].get<std::string>(),
               d["problem"].get<std::string>());
  if (!j["states"].empty()) {
    fmt::print("local state (an update copy-back's progress over a remote object; `udm cache evict --state` removes it):\n");
    fmt::print("{:<12}  {:<4}  {:>8}  {:<6}  {:<20}  {}\n", "ID", "KIND", "REGIONS", "CACHED", "LAST WRITE", "KEY");
  }
  for (const auto& o : j["states"]) {
    if (o.contains("problem")) {
      fmt::print("{:<12}  damaged: {}: {}\n", o["id"].get<std::string>().substr(0, 12), o["file"].get<std::string>(),
                 o["problem"].get<std::string>());
      continue;
    }
    fmt::print("{:<12}  {:<4}  {:>8}  {:<6}  {:<20}  {}\n", o["id"].get<std::string>().substr(0, 12),
               o["kind"].get<std::string>(), human(o["bytes"].get<uint64_t>()),
               o["object_cached"].get<bool>() ? "yes" : "no", o.value("last_write", std::string("-")),
               o["key"].get<std::string>());
  }
  if (!j["owner"].is_null()) fmt::print("pinned blocks are known only to the owning process (\"?\")\n");
}

void cache_verify(const std::string& dir, const std::vector<std::string>& select, bool json_out) {
  auto r = remote::verify_cache(dir, select);
  if (!r.ok()) return cli::fail(r.status());
  const auto& j = *r;
  if (json_out) {
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";  // keys hold server text
  } else {
    for (const auto& o : j["objects"])
      fmt::print("{:<8} {}: {}\n", o["status"].get<std::string>(),
                 o["key"].is_null() ? o["id"].get<std::string>() : o["key"].get<std::string>(),
                 o["detail"].get<std::string>());
  }
  int bad = j["bad"].get<int>();
  if (bad) cli::fail(fmt::format("{}: {} object(s) held bad data or damaged files (dropped; the sources fetch them again)", dir, bad));
}

void cache_evict(const std::string& dir, const remote::EvictRequest& req, bool json_out) {
  auto r = remote::evict_cache(dir, req);
  if (!r.ok()) return cli::fail(r.status(), r.status().code() == EINVAL ? 2 : 1);
  const auto& j = *r;
  if (json_out) {
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";  // keys hold server text
    return;
  }
  for (const auto& e : j["evicted"]) {
    fmt::print("evicted {} {}: {}\n", e["whole"].get<bool>() ? "object" : "blocks of", e["key"].get<std::string>(),
               human(e["bytes"].get<uint64_t>()));
    if (e.contains("state_kept"))
      fmt::print("  kept its local state {} (`udm cache evict --state` removes it)\n", e["state_kept"].get<std::string>());
  }
  if (j.contains("states_removed")) {
    for (const auto& e : j["states_removed"])
      fmt::print("removed local state {}{}\n", e["file"].get<std::string>(),
                 e["key"].get<std::string>().empty() ? "" : " (" + e["key"].get<std::string>() + ")");
    return;
  }
  fmt::print("{}: {} cached before, {} now\n", dir, human(j["bytes_cached_before"].get<uint64_t>()),
             human(j["bytes_cached_after"].get<uint64_t>()));
}

void register_cache_cli(CLI::App& app) {
  auto* c = app.add_subcommand("cache", "the persistent cache of remote sources (--cache-dir): list, verify, evict");
  c->require_subcommand(1);
  auto add_common = [](CLI::App* s, std::shared_ptr<std::string> dir, std::shared_ptr<bool> js) {
    s->add_option("--cache-dir", *dir, "cache directory (default /var/cache/udm)")->envname("UDM_CACHE_DIR");
    s->add_flag("--json", *js, "print JSON");
  };
  {
    auto* s = c->add_subcommand("ls", "list cached objects: key, size, bytes and blocks cached, verified, pinned, last use");
    auto dir = std::make_shared<std::string>();
    auto js = std::make_shared<bool>(false);
    add_common(s, dir, js);
    s->callback([=] { cache_ls(cache_dir_of(*dir), *js); });
  }
  {
    auto* s = c->add_subcommand(
        "verify", "check cached objects (OCI blobs against their digest, cached blocks against the data file); drop bad data; exit 1 if any");
    auto dir = std::make_shared<std::string>();
    auto js = std::make_shared<bool>(false);
    auto sel = std::make_shared<std::vector<std::string>>();
    s->add_option("objects", *sel, "sha256:HEX, oci://...@sha256:HEX, http(s)://URL or an id from `udm cache ls` (default: all)");
    add_common(s, dir, js);
    s->callback([=] { cache_verify(cache_dir_of(*dir), *sel, *js); });
  }
  {
    auto* s = c->add_subcommand("evict", "remove objects, all, or least recently used data down to a size; with --state: local state files");
    auto dir = std::make_shared<std::string>();
    auto js = std::make_shared<bool>(false);
    auto sel = std::make_shared<std::vector<std::string>>();
    auto all = std::make_shared<bool>(false);
    auto to = std::make_shared<std::string>();
    auto state = std::make_shared<bool>(false);
    s->add_option("objects", *sel, "sha256:HEX, oci://...@sha256:HEX, http(s)://URL or an id from `udm cache ls`");
    s->add_flag("--all", *all, "evict every object");
    s->add_flag("--state", *state,
                "remove the named (or --all) local state files instead: an update copy-back's progress over a remote "
                "diff (kept otherwise)");
    s->add_option("--to", *to, "evict least recently used data until at most SIZE bytes are cached (K/M/G/T)");
    add_common(s, dir, js);
    s->callback([=] {
      remote::EvictRequest req;
      req.select = *sel;
      req.all = *all;
      req.state = *state;
      if (!to->empty()) {
        auto b = remote::parse_byte_size(*to);
        if (!b.ok()) return cli::fail("--to: " + b.status().message(), 2);
        req.to_bytes = *b;
      }
      cache_evict(cache_dir_of(*dir), req, *js);
    });
  }
}

}  // namespace

void register_feature_remote_cli(CLI::App& app) {
  try {
    CLI::App* d = app.get_subcommand("daemon");
    auto o = std::make_shared<RemoteOpts>();
    add_remote_options(d, o, true);
    d->parse_complete_callback([o] { apply(*o); });
  } catch (const CLI::OptionNotFound&) {
  }
  {
    auto* s = app.add_subcommand("push", "upload files as the layers of an OCI image (lowest first); prints the manifest digest");
    auto o = std::make_shared<RemoteOpts>();
    auto ref = std::make_shared<std::string>();
    auto files = std::make_shared<std::vector<std::string>>();
    auto chunk = std::make_shared<std::string>("64M");
    s->add_option("ref", *ref, "HOST[:PORT]/REPO:TAG")->required();
    s->add_option("files", *files, "layer files (ZFile/LSMT layers, or one update diff)")->required();
    s->add_option("--chunk-size", *chunk, "upload files larger than this in chunks of this size (default 64M)");
    add_remote_options(s, o, false);
    s->callback([=] {
      apply(*o);
      push(*ref, *files, *chunk);
    });
  }
  {
    auto* s = app.add_subcommand("pull", "resolve an OCI image; print its lsmt table over oci:// layers, or create a device");
    auto o = std::make_shared<RemoteOpts>();
    auto ref = std::make_shared<std::string>();
    auto create = std::make_shared<std::string>();
    auto socket = std::make_shared<std::string>(default_control_socket());
    s->add_option("ref", *ref, "HOST[:PORT]/REPO[:TAG|@sha256:HEX]")->required();
    s->add_option("--create", *create, "create device NAME (read-only) from the table");
    s->add_option("--socket", *socket, "control socket of the daemon (env UDM_SOCKET)")->envname("UDM_SOCKET");
    add_remote_options(s, o, false);
    s->callback([=] {
      apply(*o);
      pull(*ref, *create, *socket);
    });
  }
  register_cache_cli(app);
}

}  // namespace udm
