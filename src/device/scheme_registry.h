// Backing sources by URI scheme (http://, oci://, ...): what the resolver
// (io/resolver.h) asks when a spec is a URI. A feature module adds its
// schemes when the feature list registers it (device/feature.h).
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "device/background_job.h"
#include "device/block_device.h"

namespace udm {

class SchemeRegistry {
 public:
  using Opener = std::function<Result<DevicePtr>(const std::string& uri, bool writable)>;
  // Live counters of an opened source as a JSON object text ("" if none):
  // `udm info NAME --json` lists them under "sources".
  using Describer = std::function<std::string(const std::string& uri)>;
  // Background jobs a source runs (a remote prefetch): listed with the
  // targets' jobs by `udm info NAME --json` and `udm wait`, controlled by
  // `udm prefetch NAME [...]` (args: start, stop, pause, resume, throttle X).
  struct SourceJobs {
    std::function<std::vector<JobInfo>(const std::string& uri)> list;
    std::function<Result<std::string>(const std::string& uri, const std::vector<std::string>& args)> control;
  };
  // Operator messages to an open source (`udm message NAME SECTOR source
  // WORDS...`: the words after "source", for each URI of that segment).
  using SourceMessage = std::function<Result<std::string>(const std::string& uri, const std::vector<std::string>& args)>;
  static SchemeRegistry& global();
  void add(const std::string& scheme, Opener open, std::string usage);
  void set_describer(const std::string& scheme, Describer d);
  std::string describe(std::string_view scheme, const std::string& uri) const;
  void set_jobs(const std::string& scheme, SourceJobs j);
  // Null-free copy of the scheme's job hooks (empty functions if none).
  SourceJobs jobs(std::string_view scheme) const;
  void set_message(const std::string& scheme, SourceMessage m);
  // Empty if the scheme takes no messages.
  SourceMessage message(std::string_view scheme) const;
  // Null if nothing registered the scheme.
  const Opener* find(std::string_view scheme) const;
  std::vector<std::string> schemes() const;

 private:
  struct Entry {
    Opener open;
    std::string usage;
    Describer describe;
    SourceJobs jobs;
    SourceMessage message;
  };
  // A copy of one of a scheme's hooks, taken under the lock (empty if none).
  template <class H>
  H hook(std::string_view scheme, H Entry::*member) const {
    std::lock_guard lk(mu_);
    auto it = entries_.find(scheme);
    return it == entries_.end() ? H{} : it->second.*member;
  }
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace udm
