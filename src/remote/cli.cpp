// The remote feature's command-line part: options of `udm daemon` that
// configure remote sources (process-wide, remote/config.h). They are added
// to the daemon's subcommand here, so the daemon does not name the feature.
#include <CLI/CLI.hpp>
#include <memory>

#include "cli/cli_common.h"
#include "remote/config.h"

namespace udm {

void register_feature_remote_cli(CLI::App& app) {
  CLI::App* d = nullptr;
  try {
    d = app.get_subcommand("daemon");
  } catch (const CLI::OptionNotFound&) {
    return;
  }
  struct Opts {
    std::string cache_dir, cache_size, on_error, auth, ca;
    std::vector<std::string> insecure;
    int stall = -1, retries = -1;
  };
  auto o = std::make_shared<Opts>();
  d->add_option("--cache-dir", o->cache_dir, "remote sources: persistent cache directory (default /var/cache/udm; 'none')")
      ->envname("UDM_CACHE_DIR");
  d->add_option("--cache-size", o->cache_size, "remote sources: cache cap in bytes (K/M/G/T; default 4G)")
      ->envname("UDM_CACHE_SIZE");
  d->add_option("--remote-on-error", o->on_error,
                "remote sources, when retries run out: fail (EIO, default) or queue (wait for the server)")
      ->envname("UDM_REMOTE_ON_ERROR");
  d->add_option("--insecure-registry", o->insecure, "HOST[:PORT] of a registry reached over plain HTTP (repeatable)");
  d->add_option("--registry-auth", o->auth, "docker config.json with registry credentials (\"auths\")")
      ->envname("UDM_REGISTRY_AUTH");
  d->add_option("--remote-ca", o->ca, "CA bundle for https:// and registries")->envname("UDM_REMOTE_CA");
  d->add_option("--remote-stall-timeout", o->stall, "seconds without a byte before a transfer fails (default 30)");
  d->add_option("--remote-retries", o->retries, "retries per request before --remote-on-error applies (default 5)");
  d->parse_complete_callback([o] {
    remote::RemoteConfig c = remote::config();
    if (!o->cache_dir.empty()) c.cache_dir = o->cache_dir;
    if (!o->cache_size.empty()) {
      auto r = remote::parse_byte_size(o->cache_size);
      if (!r.ok()) throw CLI::ValidationError("--cache-size", r.status().message());
      c.cache_size = *r;
    }
    if (!o->on_error.empty()) {
      auto r = remote::parse_on_error(o->on_error);
      if (!r.ok()) throw CLI::ValidationError("--remote-on-error", r.status().message());
      c.on_error = *r;
    }
    for (auto& h : o->insecure) c.insecure_registries.push_back(h);
    if (!o->auth.empty()) c.registry_auth = o->auth;
    if (!o->ca.empty()) c.ca_file = o->ca;
    if (o->stall > 0) c.stall_seconds = o->stall;
    if (o->retries >= 0) c.retries = o->retries;
    remote::set_config(c);
  });
}

}  // namespace udm
