// `udm daemon` and the dmsetup-like verbs that talk to it.
#include <fmt/format.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <chrono>

#include "cli/cli_common.h"
#include "daemon/control_socket.h"
#include "daemon/daemon.h"
#include "device/table.h"
#include "util/log.h"

namespace udm {
namespace {
using nlohmann::json;

struct Common {
  std::string socket = default_control_socket();
  bool json_out = false;
};

void add_common(CLI::App* sub, Common& c, bool with_json = true) {
  sub->add_option("--socket", c.socket, "control socket of the daemon (env UDM_SOCKET)")
      ->envname("UDM_SOCKET");
  if (with_json) sub->add_flag("--json", c.json_out, "print JSON for scripts");
}

// Send a request; on failure print the daemon's error and return nullopt.
std::optional<json> call(const Common& c, const json& req) {
  auto r = control_call(c.socket, req);
  if (!r.ok()) {
    cli::fail(r.status());
    return std::nullopt;
  }
  const json& rep = *r;
  if (!rep.value("ok", false)) {
    int code = rep.value("errno", 0);
    cli::fail(rep.value("error", std::string("unknown error")) +
              (code ? fmt::format(" ({})", std::strerror(code)) : ""));
    return std::nullopt;
  }
  return rep.contains("result") ? rep["result"] : json();
}

// --table TEXT | --table-file F | stdin, like dmsetup.
std::optional<std::string> table_text(const std::string& table, const std::string& file) {
  if (!table.empty() && !file.empty()) {
    cli::fail("give either --table or --table-file, not both");
    return std::nullopt;
  }
  if (!table.empty()) return table;
  std::string text;
  if (!file.empty()) {
    std::ifstream f(file == "-" ? "/dev/stdin" : file);
    if (!f) {
      cli::fail("cannot read table file " + file);
      return std::nullopt;
    }
    text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  } else if (!isatty(STDIN_FILENO)) {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    cli::fail("no table: give --table \"<start> <length> <target> [args]\" or --table-file");
    return std::nullopt;
  }
  return text;
}

// Check the table syntax on the client side for an early, local error.
bool check_table(const std::string& text) {
  auto spec = parse_table(text);
  if (!spec.ok()) {
    cli::fail("table: " + spec.status().message());
    return false;
  }
  return true;
}

void print_info(const json& i) {
  std::cout << fmt::format(
      "Name:              {}\n"
      "State:             {}{}\n"
      "Tables present:    LIVE{}\n"
      "Open count:        {}\n"
      "Event number:      {}\n"
      "Size:              {} bytes ({} sectors)\n"
      "Number of targets: {}\n",
      i.value("name", ""), i.value("suspended", false) ? "SUSPENDED" : "ACTIVE",
      i.value("read_only", false) ? " (READ-ONLY)" : "",
      i.value("inactive_table", false) ? " & INACTIVE" : "", i.value("open_count", 0),
      i.value("event_nr", 0), i.value("size_bytes", uint64_t{0}), i.value("size_sectors", uint64_t{0}),
      i.value("targets", 0));
  if (i.contains("jobs"))
    for (const auto& j : i["jobs"]) {
      double total = static_cast<double>(j.value("total", uint64_t{0}));
      double pct = total > 0 ? 100.0 * static_cast<double>(j.value("done", uint64_t{0})) / total : 100.0;
      std::string eta = j["eta_seconds"].is_number() ? fmt::format(", eta {:.0f} s", j["eta_seconds"].get<double>()) : "";
      std::cout << fmt::format("Job:               {} {} {}/{} {} ({:.1f}%), {:.1f} MiB/s{}, throttle {}{}\n",
                               j.value("kind", ""), j.value("state", ""), j.value("done", uint64_t{0}),
                               j.value("total", uint64_t{0}), j.value("unit", ""), pct,
                               j.value("bytes_per_second", 0.0) / (1 << 20), eta, j.value("throttle", ""),
                               j.value("paused", false) ? ", paused" : "");
    }
}

// `udm wait`: the jobs of one `info` reply summed up.
struct JobsSummary {
  bool failed = false, all_done = true;
  uint64_t done_bytes = 0, total_bytes = 0;
  double rate = 0, eta = 0;
  bool eta_known = true;
  std::string states, error;
};

JobsSummary summarize_jobs(const json& info) {
  JobsSummary s;
  if (!info.contains("jobs")) return s;
  for (const auto& j : info["jobs"]) {
    std::string st = j.value("state", "");
    if (st == "failed") {
      s.failed = true;
      if (s.error.empty()) s.error = j.value("kind", "") + ": " + j.value("error", std::string("failed"));
    }
    if (st != "done") s.all_done = false;
    s.done_bytes += j.value("done_bytes", uint64_t{0});
    s.total_bytes += j.value("total_bytes", uint64_t{0});
    s.rate += j.value("bytes_per_second", 0.0);
    if (j["eta_seconds"].is_number())
      s.eta = std::max(s.eta, j["eta_seconds"].get<double>());
    else
      s.eta_known = false;
    if (s.states.find(st) == std::string::npos) s.states += (s.states.empty() ? "" : ",") + st;
  }
  return s;
}

void draw_bar(const std::string& name, const JobsSummary& s, bool final) {
  constexpr int kWidth = 30;
  double f = s.total_bytes ? static_cast<double>(s.done_bytes) / static_cast<double>(s.total_bytes) : 1.0;
  int fill = static_cast<int>(f * kWidth);
  std::string eta = s.eta_known && !s.all_done ? fmt::format(" eta {:.0f}s", s.eta) : "";
  std::cout << fmt::format("\r\033[K{} [{}{}] {:5.1f}% {:.1f}/{:.1f} MiB {:.1f} MiB/s{} {}", name,
                           std::string(fill, '#'), std::string(kWidth - fill, '.'), 100 * f,
                           static_cast<double>(s.done_bytes) / (1 << 20),
                           static_cast<double>(s.total_bytes) / (1 << 20), s.rate / (1 << 20), eta,
                           s.states.empty() ? "no jobs" : s.states)
            << (final ? "\n" : "") << std::flush;
}

}  // namespace

void register_control_cli(CLI::App& app) {
  // ---- daemon
  {
    auto* sub = app.add_subcommand("daemon", "run the udm daemon in the foreground (until SIGTERM)");
    auto o = std::make_shared<DaemonOptions>();
    o->socket = default_control_socket();
    auto level = std::make_shared<std::string>();
    sub->add_option("--socket", o->socket, "control socket (default /run/udm/control)")
        ->envname("UDM_SOCKET");
    sub->add_option("--nbd-unix", o->nbd_unix, "serve NBD on this Unix socket");
    sub->add_option("--nbd-tcp", o->nbd_tcp,
                    "serve NBD on HOST:PORT (':PORT' or 'PORT': loopback only; 0.0.0.0:PORT: every interface)");
    sub->add_option("--fuse", o->fuse_dir, "export each device as the file DIR/NAME");
    sub->add_option("--log-level", *level, "debug|info|warn|error (default: info)");
    auto tls = std::make_shared<std::string>("off");
    auto rules = std::make_shared<std::vector<std::string>>();
    sub->add_option("--tls", *tls, "NBD TLS: off, on (STARTTLS offered) or require (nothing else before it)")
        ->capture_default_str();
    sub->add_option("--tls-certificates", o->nbd.tls.certificates_dir,
                    "X.509 credentials: DIR/ca-cert.pem, server-cert.pem, server-key.pem (nbdkit's layout)");
    sub->add_option("--tls-psk", o->nbd.tls.psk_file, "pre-shared keys, psktool's format (username:hexkey)");
    sub->add_flag("--tls-verify-peer", o->nbd.tls.verify_peer,
                  "require a client certificate signed by DIR/ca-cert.pem");
    sub->add_option("--nbd-export", *rules,
                    "serve only these devices over NBD (repeatable); NAME:ro serves NAME read-only")
        ->type_name("NAME[:ro]");
    sub->add_option("--nbd-max-connections", o->nbd.max_client_connections,
                    "connections at once per client address (Unix socket: per uid); 0 = no limit")
        ->capture_default_str();
    sub->add_option("--nbd-max-inflight", o->nbd.workers,
                    "requests in flight per NBD connection (default 8)")
        ->check(CLI::Range(1u, 256u));
    sub->add_option("--control-group", o->control_group,
                    "members of this group may use the control socket (default: root only)");
    sub->callback([o, level, tls, rules] {
      auto mode = parse_tls_mode(*tls);
      if (!mode.ok()) return cli::fail(mode.status(), 2);
      o->nbd.tls.mode = *mode;
      if (*mode == TlsMode::Off && (!o->nbd.tls.certificates_dir.empty() || !o->nbd.tls.psk_file.empty()))
        return cli::fail("--tls-certificates/--tls-psk given but --tls is off (use --tls on or require)", 2);
      o->nbd.exports.clear();
      for (const auto& r : *rules) {
        auto rule = parse_export_rule(r);
        if (!rule.ok()) return cli::fail(rule.status(), 2);
        o->nbd.exports.push_back(*rule);
      }
      if (o->nbd_unix.empty() && o->nbd_tcp.empty() && (*mode != TlsMode::Off || !rules->empty()))
        return cli::fail("--tls and --nbd-export need an NBD listener (--nbd-unix or --nbd-tcp)", 2);
      log::set_threshold(log::Level::Info);
      if (*level == "debug") log::set_threshold(log::Level::Debug);
      else if (*level == "warn") log::set_threshold(log::Level::Warn);
      else if (*level == "error") log::set_threshold(log::Level::Error);
      else if (!level->empty() && *level != "info") return cli::fail("bad --log-level " + *level, 2);
      cli::exit_code() = run_daemon(*o);
    });
  }
  // ---- create / reload
  for (const char* verb : {"create", "reload"}) {
    bool is_create = std::string(verb) == "create";
    auto* sub = app.add_subcommand(
        verb, is_create ? "create a device from a table" : "load an inactive table (live on resume)");
    auto c = std::make_shared<Common>();
    auto name = std::make_shared<std::string>();
    auto table = std::make_shared<std::string>();
    auto file = std::make_shared<std::string>();
    auto ro = std::make_shared<bool>(false);
    sub->add_option("name", *name, "device name")->required();
    sub->add_option("--table", *table, "table text: '<start> <length> <target> [args]' per line");
    sub->add_option("--table-file", *file, "read the table from a file ('-' = stdin)");
    if (is_create) sub->add_flag("-r,--readonly", *ro, "create the device read-only");
    add_common(sub, *c);
    sub->callback([=] {
      auto text = table_text(*table, *file);
      if (!text || !check_table(*text)) return;
      json req = {{"verb", verb}, {"name", *name}, {"table", *text}};
      if (is_create) req["read_only"] = *ro;
      auto r = call(*c, req);
      if (r && c->json_out) std::cout << r->dump(2) << "\n";
    });
  }
  // ---- verbs taking just a name
  struct Simple {
    const char* verb;
    const char* help;
  };
  for (Simple s : {Simple{"remove", "remove a device (refused while it is open)"},
                   Simple{"suspend", "suspend a device: block new I/O, drain in-flight, flush"},
                   Simple{"resume", "resume a device, swapping in a loaded table"},
                   Simple{"clear", "drop a loaded inactive table"},
                   Simple{"info", "show a device's state"},
                   Simple{"status", "one status line per table segment"},
                   Simple{"table", "print the live (or --inactive) table"}}) {
    auto* sub = app.add_subcommand(s.verb, s.help);
    auto c = std::make_shared<Common>();
    auto name = std::make_shared<std::string>();
    auto inactive = std::make_shared<bool>(false);
    sub->add_option("name", *name, "device name")->required();
    if (std::string(s.verb) == "table") sub->add_flag("--inactive", *inactive, "show the inactive table");
    add_common(sub, *c);
    std::string verb = s.verb;
    sub->callback([=] {
      json req = {{"verb", verb}, {"name", *name}};
      if (verb == "table") req["inactive"] = *inactive;
      auto r = call(*c, req);
      if (!r) return;
      if (c->json_out) {
        std::cout << r->dump(2) << "\n";
      } else if (verb == "info") {
        print_info(*r);
      } else if (verb == "status") {
        for (const auto& seg : *r) {
          std::string st = seg.value("status", "");
          std::cout << fmt::format("{} {} {}{}{}\n", seg.value("start", uint64_t{0}),
                                   seg.value("length", uint64_t{0}), seg.value("target", ""),
                                   st.empty() ? "" : " ", st);
        }
      } else if (verb == "table") {
        std::cout << r->get<std::string>();
      }
    });
  }
  // ---- ls
  {
    auto* sub = app.add_subcommand("ls", "list devices, one name per line");
    auto c = std::make_shared<Common>();
    add_common(sub, *c);
    sub->callback([=] {
      auto r = call(*c, {{"verb", "ls"}});
      if (!r) return;
      if (c->json_out) {
        std::cout << r->dump(2) << "\n";
        return;
      }
      for (const auto& d : *r) std::cout << d.value("name", "") << "\n";
    });
  }
  // ---- wait
  {
    auto* sub = app.add_subcommand(
        "wait", "wait for NAME's background jobs: exit 0 all done, 1 one failed, 2 timeout (3: could not ask)");
    auto c = std::make_shared<Common>();
    auto name = std::make_shared<std::string>();
    auto timeout = std::make_shared<double>(-1);
    sub->add_option("name", *name, "device name")->required();
    sub->add_option("--timeout", *timeout, "give up after S seconds (exit 2); default: wait forever")
        ->type_name("S")
        ->check(CLI::NonNegativeNumber);
    add_common(sub, *c, /*with_json=*/false);
    sub->callback([=] {
      const bool bar = isatty(STDOUT_FILENO);
      const auto start = std::chrono::steady_clock::now();
      // Every 10 ms for the first two seconds (a short job is seen done
      // within ~10 ms, not a tenth of a second late), then every 100 ms.
      for (;;) {
        auto r = control_call(c->socket, {{"verb", "info"}, {"name", *name}});
        if (!r.ok()) return cli::fail(r.status(), 3);
        if (!r->value("ok", false)) return cli::fail(r->value("error", std::string("unknown error")), 3);
        JobsSummary s = summarize_jobs((*r)["result"]);
        if (s.failed || s.all_done) {
          if (bar) draw_bar(*name, s, true);
          if (s.failed) return cli::fail("background job failed: " + s.error, 1);
          return;
        }
        if (bar) draw_bar(*name, s, false);
        if (*timeout >= 0 && std::chrono::steady_clock::now() - start >= std::chrono::duration<double>(*timeout)) {
          if (bar) std::cout << "\n";
          return cli::fail(fmt::format("{}: background jobs not done after {} s ({})", *name, *timeout, s.states), 2);
        }
        const bool early = std::chrono::steady_clock::now() - start < std::chrono::seconds(2);
        std::this_thread::sleep_for(std::chrono::milliseconds(early ? 10 : 100));
      }
    });
  }
  // ---- targets
  {
    auto* sub = app.add_subcommand("targets", "list the target types and their table arguments");
    auto c = std::make_shared<Common>();
    add_common(sub, *c);
    sub->callback([=] {
      auto r = call(*c, {{"verb", "targets"}});
      if (!r) return;
      if (c->json_out) {
        std::cout << r->dump(2) << "\n";
        return;
      }
      for (const auto& t : *r) std::cout << t.value("usage", t.value("name", "")) << "\n";
    });
  }
  // ---- prefetch
  {
    auto* sub = app.add_subcommand(
        "prefetch",
        "fill the cache of NAME's remote sources in the background (so the device can go offline later)");
    auto c = std::make_shared<Common>();
    auto name = std::make_shared<std::string>();
    auto throttle = std::make_shared<std::string>();
    auto stop = std::make_shared<bool>(false), pause = std::make_shared<bool>(false),
         resume = std::make_shared<bool>(false);
    sub->add_option("name", *name, "device name")->required();
    auto* t = sub->add_option("--throttle", *throttle, "rate limit: <MiB/s>, auto (yield to client I/O) or off");
    auto* so = sub->add_flag("--stop", *stop, "stop the prefetch (what it fetched stays cached)");
    auto* po = sub->add_flag("--pause", *pause, "pause the prefetch");
    auto* ro = sub->add_flag("--resume", *resume, "resume a paused prefetch");
    so->excludes(po)->excludes(ro)->excludes(t);
    po->excludes(ro);
    add_common(sub, *c);
    sub->callback([=] {
      std::vector<std::string> args;
      if (*stop) args = {"stop"};
      else if (*pause) args = {"pause"};
      else if (*resume) args = {"resume"};
      if (!throttle->empty()) {
        if (args.empty()) args = {"start", *throttle};
        else {
          // --pause/--resume with --throttle: both, the throttle first.
          auto r = call(*c, {{"verb", "prefetch"}, {"name", *name}, {"args", {"throttle", *throttle}}});
          if (!r) return;
        }
      }
      if (args.empty()) args = {"start"};
      auto r = call(*c, {{"verb", "prefetch"}, {"name", *name}, {"args", args}});
      if (!r) return;
      if (c->json_out)
        std::cout << r->dump(2) << "\n";
      else if (r->is_string() && !r->get<std::string>().empty())
        std::cout << r->get<std::string>() << "\n";
    });
  }
  // ---- message
  {
    auto* sub = app.add_subcommand(
        "message",
        "send a message to the target at SECTOR; words starting with 'source' go to that segment's URI backing "
        "sources instead (remote: source retry|release|on-error fail|queue [URI], docs/remote.md)");
    auto c = std::make_shared<Common>();
    auto name = std::make_shared<std::string>();
    auto sector = std::make_shared<uint64_t>(0);
    auto args = std::make_shared<std::vector<std::string>>();
    sub->add_option("name", *name, "device name")->required();
    sub->add_option("sector", *sector, "sector inside the target's segment")->required();
    sub->add_option("args", *args, "message words")->required();
    add_common(sub, *c);
    sub->callback([=] {
      auto r = call(*c, {{"verb", "message"}, {"name", *name}, {"sector", *sector}, {"args", *args}});
      if (!r) return;
      if (c->json_out)
        std::cout << r->dump(2) << "\n";
      else if (r->is_string() && !r->get<std::string>().empty())
        std::cout << r->get<std::string>() << "\n";
    });
  }
}

}  // namespace udm
