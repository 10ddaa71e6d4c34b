#include "daemon/control_protocol.h"

#include <fmt/format.h>

#include <algorithm>

#include "io/resolver.h"

namespace udm {
using nlohmann::json;

namespace {

Result<std::string> get_string(const json& req, const char* key) {
  auto it = req.find(key);
  if (it == req.end()) return Invalid(fmt::format("request lacks field '{}'", key));
  if (!it->is_string()) return Invalid(fmt::format("field '{}' must be a string", key));
  return it->get<std::string>();
}

Result<bool> get_bool(const json& req, const char* key, bool def) {
  auto it = req.find(key);
  if (it == req.end()) return def;
  if (!it->is_boolean()) return Invalid(fmt::format("field '{}' must be a boolean", key));
  return it->get<bool>();
}

Result<MappedDevicePtr> get_device(DeviceRegistry& reg, const json& req) {
  UDM_ASSIGN_OR_RETURN(std::string name, get_string(req, "name"));
  auto dev = reg.get(name);
  if (!dev) return Status::Error(ENXIO, "no device named '" + name + "'");
  return dev;
}

json ok_reply(json result = nullptr) { return json{{"ok", true}, {"result", std::move(result)}}; }

json status_json(const MappedDevice& d) {
  json arr = json::array();
  auto t = d.active_table();
  for (const auto& s : t->segments()) {
    arr.push_back({{"start", s.start / kSectorSize},
                   {"length", s.length / kSectorSize},
                   {"target", s.type},
                   {"status", s.target->status()}});
  }
  return arr;
}

}  // namespace

json error_reply(const Status& s) {
  return json{{"ok", false}, {"errno", s.code()}, {"error", s.message()}};
}

// Counters of the URI backing sources (http://, oci://, ...) a table names,
// from the scheme's describer (device/scheme_registry.h).
// The URIs (http://, oci://, ...) a table's segments name, in order, once each.
std::vector<std::pair<std::string, std::string>> table_uris(const Table& t) {  // (uri, target type)
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& s : t.segments()) {
    size_t p = 0;
    while (p < s.args.size()) {
      size_t q = s.args.find_first_of(" \t", p);
      if (q == std::string::npos) q = s.args.size();
      std::string w = s.args.substr(p, q - p);
      p = q + 1;
      if (w.empty() || spec_kind(w) != SpecKind::kUri) continue;
      bool seen = false;
      for (auto& [u, ty] : out) seen = seen || u == w;
      if (!seen) out.emplace_back(w, s.type);
    }
  }
  return out;
}

json sources_json(const Table& t) {
  json arr = json::array();
  for (const auto& [w, type] : table_uris(t)) {
    std::string d = SchemeRegistry::global().describe(spec_scheme(w), w);
    if (d.empty()) continue;
    json j = json::parse(d, nullptr, false);
    if (!j.is_discarded()) arr.push_back(std::move(j));
  }
  return arr;
}

// The background jobs of every segment (Target::jobs, device/background_job.h).
json job_json(const JobInfo& j) {
  json o{{"kind", j.kind},
         {"state", j.state},
         {"unit", j.unit},
         {"done", j.done},
         {"total", j.total},
         {"done_bytes", j.done_bytes},
         {"total_bytes", j.total_bytes},
         {"bytes_per_second", j.bytes_per_second},
         {"eta_seconds", j.eta_seconds ? json(*j.eta_seconds) : json(nullptr)},
         {"active_seconds", j.active_seconds},
         {"paused", j.paused},
         {"throttle", j.throttle}};
  if (!j.error.empty()) o["error"] = j.error;
  return o;
}

json jobs_json(const Table& t) {
  json arr = json::array();
  for (const auto& s : t.segments()) {
    for (const JobInfo& j : s.target->jobs()) {
      json o = job_json(j);
      o["segment_start"] = s.start / kSectorSize;
      o["target"] = s.type;
      arr.push_back(std::move(o));
    }
  }
  // Jobs of the backing sources (a remote prefetch), after the targets'.
  for (const auto& [uri, type] : table_uris(t)) {
    auto hooks = SchemeRegistry::global().jobs(spec_scheme(uri));
    if (!hooks.list) continue;
    for (const JobInfo& j : hooks.list(uri)) {
      json o = job_json(j);
      o["source"] = uri;
      o["target"] = type;
      arr.push_back(std::move(o));
    }
  }
  return arr;
}

// `udm prefetch NAME [words]`: the words go to every URI source of the live
// table whose scheme runs source jobs.
Result<std::string> prefetch(const MappedDevice& d, const std::vector<std::string>& args) {
  auto t = d.active_table();
  std::string out;
  int n = 0;
  for (const auto& [uri, type] : table_uris(*t)) {
    auto hooks = SchemeRegistry::global().jobs(spec_scheme(uri));
    if (!hooks.control) continue;
    auto r = hooks.control(uri, args);
    if (!r.ok()) return r.status();
    n++;
    if (!r->empty()) out += (out.empty() ? "" : "\n") + uri + ": " + *r;
  }
  if (n == 0) return Invalid(d.name() + ": prefetch: the table has no remote source (http://, https://, oci://)");
  return out;
}

// `udm message NAME SECTOR source WORDS... [URI]`: the words go to the URI
// backing sources (their scheme's message hook) of the segment at SECTOR,
// or to the one URI named last; each reply line starts with its URI.
Result<std::string> source_message(const MappedDevice& d, uint64_t sector, const std::vector<std::string>& args) {
  auto t = d.active_table();
  uint64_t off;
  if (__builtin_mul_overflow(sector, kSectorSize, &off) || off >= t->size())
    return Invalid(fmt::format("message: sector {} is beyond the end of {}", sector, d.name()));
  const Segment& s = t->segments()[t->find(off)];
  std::vector<std::string> words(args.begin() + 1, args.end());
  std::vector<std::string> uris;
  for (size_t p = 0; p < s.args.size();) {  // the segment's URI words, once each
    size_t q = std::min(s.args.find_first_of(" \t", p), s.args.size());
    std::string u = s.args.substr(p, q - p);
    p = q + 1;
    if (u.empty() || spec_kind(u) != SpecKind::kUri || std::find(uris.begin(), uris.end(), u) != uris.end()) continue;
    if (SchemeRegistry::global().message(spec_scheme(u))) uris.push_back(u);
  }
  if (!words.empty() && spec_kind(words.back()) == SpecKind::kUri) {
    std::string want = words.back();
    words.pop_back();
    if (std::find(uris.begin(), uris.end(), want) == uris.end())
      return Invalid(fmt::format("message: source: {} is not a backing source of the {} segment at sector {} of {}",
                                 want, s.type, sector, d.name()));
    uris = {want};
  }
  if (uris.empty())
    return Invalid(fmt::format("message: source: the {} segment at sector {} of {} has no backing source that takes "
                               "messages (http://, https://, oci://)",
                               s.type, sector, d.name()));
  std::string out;
  for (const auto& u : uris) {
    auto r = SchemeRegistry::global().message(spec_scheme(u))(u, words);
    if (!r.ok()) return r.status();
    out += (out.empty() ? "" : "\n") + u + ": " + *r;
  }
  return out;
}

json device_info_json(const MappedDevice& d) {
  auto t = d.active_table();
  json sources = sources_json(*t);
  json info{{"name", d.name()},
              {"size_bytes", d.size()},
              {"size_sectors", d.size() / kSectorSize},
              {"read_only", d.caps().read_only},
              {"suspended", d.suspended()},
              {"open_count", d.open_count()},
              {"event_nr", d.event_nr()},
              {"targets", t->segments().size()},
              {"live_table", true},
              {"inactive_table", d.has_inactive()}};
  if (!sources.empty()) info["sources"] = std::move(sources);
  info["jobs"] = jobs_json(*t);
  return info;
}

json handle_request(DeviceRegistry& reg, const json& req) {
  if (!req.is_object()) return error_reply(Invalid("request must be a JSON object"));
  auto verb_r = get_string(req, "verb");
  if (!verb_r.ok()) return error_reply(verb_r.status());
  const std::string& verb = *verb_r;

  if (verb == "version") return ok_reply(json{{"version", "0.1.0"}});
  if (verb == "ls") {
    json arr = json::array();
    for (const auto& n : reg.names()) {
      auto d = reg.get(n);
      if (d) arr.push_back(device_info_json(*d));
    }
    return ok_reply(arr);
  }
  if (verb == "targets") {
    json arr = json::array();
    for (const auto& t : TargetRegistry::builtin().types())
      arr.push_back({{"name", t}, {"usage", TargetRegistry::builtin().usage(t)}});
    return ok_reply(arr);
  }
  if (verb == "create") {
    auto name = get_string(req, "name");
    if (!name.ok()) return error_reply(name.status());
    auto table = get_string(req, "table");
    if (!table.ok()) return error_reply(table.status());
    auto ro = get_bool(req, "read_only", false);
    if (!ro.ok()) return error_reply(ro.status());
    auto d = reg.create(*name, *table, *ro);
    if (!d.ok()) return error_reply(d.status());
    return ok_reply(device_info_json(**d));
  }
  if (verb == "remove") {
    auto name = get_string(req, "name");
    if (!name.ok()) return error_reply(name.status());
    Status s = reg.remove(*name);
    return s.ok() ? ok_reply() : error_reply(s);
  }
  if (verb == "reload") {
    auto name = get_string(req, "name");
    if (!name.ok()) return error_reply(name.status());
    auto table = get_string(req, "table");
    if (!table.ok()) return error_reply(table.status());
    Status s = reg.load(*name, *table);
    return s.ok() ? ok_reply() : error_reply(s);
  }
  if (verb == "clear") {
    auto name = get_string(req, "name");
    if (!name.ok()) return error_reply(name.status());
    Status s = reg.clear(*name);
    return s.ok() ? ok_reply() : error_reply(s);
  }

  auto dev_r = get_device(reg, req);
  if (!dev_r.ok()) return error_reply(dev_r.status());
  MappedDevice& d = **dev_r;
  if (verb == "info") return ok_reply(device_info_json(d));
  if (verb == "status") return ok_reply(status_json(d));
  if (verb == "table") {
    auto inactive = get_bool(req, "inactive", false);
    if (!inactive.ok()) return error_reply(inactive.status());
    std::shared_ptr<Table> t = *inactive ? d.inactive_table() : d.active_table();
    if (!t) return ok_reply("");
    return ok_reply(t->text());
  }
  if (verb == "suspend") {
    Status s = d.suspend();
    return s.ok() ? ok_reply() : error_reply(s);
  }
  if (verb == "resume") {
    Status s = d.resume();
    return s.ok() ? ok_reply() : error_reply(s);
  }
  if (verb == "message") {
    auto it = req.find("sector");
    if (it == req.end() || !it->is_number_integer() ||
        (!it->is_number_unsigned() && it->get<int64_t>() < 0))
      return error_reply(Invalid("field 'sector' must be a non-negative integer"));
    auto ait = req.find("args");
    if (ait == req.end() || !ait->is_array())
      return error_reply(Invalid("field 'args' must be an array of strings"));
    std::vector<std::string> args;
    for (const auto& a : *ait) {
      if (!a.is_string()) return error_reply(Invalid("field 'args' must be an array of strings"));
      args.push_back(a.get<std::string>());
    }
    auto r = !args.empty() && args[0] == "source" ? source_message(d, it->get<uint64_t>(), args)
                                                   : d.message(it->get<uint64_t>(), args);
    if (!r.ok()) return error_reply(r.status());
    return ok_reply(*r);
  }
  if (verb == "prefetch") {
    std::vector<std::string> args;
    auto ait = req.find("args");
    if (ait != req.end()) {
      if (!ait->is_array()) return error_reply(Invalid("field 'args' must be an array of strings"));
      for (const auto& a : *ait) {
        if (!a.is_string()) return error_reply(Invalid("field 'args' must be an array of strings"));
        args.push_back(a.get<std::string>());
      }
    }
    auto r = prefetch(d, args);
    if (!r.ok()) return error_reply(r.status());
    return ok_reply(*r);
  }
  return error_reply(Invalid("unknown verb '" + verb + "'"));
}

std::string handle_request_line(DeviceRegistry& reg, std::string_view line) {
  json reply;
  if (line.size() > kMaxControlRequest) {
    reply = error_reply(Invalid("request too large"));
  } else {
    json req = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (req.is_discarded())
      reply = error_reply(Invalid("request is not valid JSON"));
    else {
      try {
        reply = handle_request(reg, req);
      } catch (const std::exception& e) {
        reply = error_reply(IoError(std::string("internal error: ") + e.what()));
      }
    }
  }
  // Replace invalid UTF-8 (names and messages echo client input) instead of throwing.
  return reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace udm
