// Unix-socket transport of the control protocol (control_protocol.h).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <memory>
#include <mutex>
#include <vector>

#include "daemon/registry.h"

namespace udm {

// Serves requests on a Unix socket. The socket is created mode 0600 (root
// only, like /dev/mapper/control) in a directory made 0700 if missing; a
// stale socket file left by a crashed daemon is replaced, a live one is not.
// Every connection's peer is checked (SO_PEERCRED): root, the daemon's own
// user, or — with a control group — a member of that group (primary or
// supplementary, SO_PEERGROUPS); the socket is then 0660 and group-owned.
class ControlServer {
 public:
  ControlServer(DeviceRegistry& reg, std::string path, std::string group = "")
      : reg_(reg), path_(std::move(path)), group_(std::move(group)) {}
  ~ControlServer() { stop(); }
  Status start();
  void stop();

 private:
  void accept_loop();
  void serve(int fd);
  bool peer_allowed(int fd, std::string* who) const;
  DeviceRegistry& reg_;
  std::string path_;
  std::string group_;
  gid_t gid_ = 0;
  bool have_group_ = false;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  void reap(bool all);
  std::mutex mu_;
  std::vector<Worker> workers_;  // one per connection; finished ones are joined on accept
};

// Send one request and wait for the reply (no timeout: suspend may take as
// long as in-flight I/O takes to drain).
Result<nlohmann::json> control_call(const std::string& socket_path, const nlohmann::json& req);

std::string default_control_socket();  // $UDM_SOCKET or /run/udm/control

}  // namespace udm
