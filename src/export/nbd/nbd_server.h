// NBD server (fixed newstyle) for udm devices: the export name is the device
// name. See docs/nbd.md for what is negotiated and how requests are run.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <map>

#include "export/export_policy.h"
#include "export/export_provider.h"
#include "export/nbd/nbd_tls.h"

namespace udm {

struct NbdServerOptions {
  std::string unix_path;    // listen here if non-empty (a stale socket is replaced)
  // "HOST:PORT", "[IPv6]:PORT", ":PORT" or "PORT" if non-empty; without a host
  // the listener binds to loopback (127.0.0.1) only. Port 0 = ephemeral (tests).
  std::string tcp_address;
  unsigned workers = 0;     // requests in flight per connection (its threads); 0 = 8
  TlsOptions tls;           // NBD_OPT_STARTTLS (nbd_tls.h)
  std::vector<ExportRule> exports;  // allow-list (export_policy.h); empty = every device
  // Connections at once per client (TCP: its address; Unix socket: its uid);
  // more are closed at accept. 0 = no limit.
  unsigned max_client_connections = 16;
};

// The TCP address to listen on for a --nbd-tcp value: HOST and PORT, with
// loopback when no host is given. Exposed for tests.
Result<std::pair<std::string, std::string>> nbd_listen_address(const std::string& spec);

class NbdServer {
 public:
  NbdServer(ExportProvider& provider, NbdServerOptions opts);
  ~NbdServer();  // calls stop()
  Status start();  // bind + listen, serve on own threads, return once listening
  void stop();     // stop accepting, let in-flight requests finish, close all, join
  std::string tcp_bound_address() const { return tcp_bound_; }

  struct Conn;  // one client connection (nbd_server.cpp)

 private:
  void accept_loop();
  void serve(std::shared_ptr<Conn> c);
  void reap(bool all);
  void transmit(Conn& c);  // one of a connection's request threads

  std::unique_ptr<FilteredExportProvider> filtered_;  // the allow-list's view, if one is given
  ExportProvider* provider_;  // what clients see: the base or filtered_
  std::unique_ptr<TlsServer> tls_;
  NbdServerOptions opts_;
  int unix_fd_ = -1, tcp_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::string tcp_bound_;
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  std::thread accept_thread_;

  struct ConnThread {
    std::shared_ptr<Conn> conn;
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex conns_mu_;
  std::list<ConnThread> conns_;
  std::map<std::string, unsigned> per_client_;  // live connections per client key (conns_mu_)

};

}  // namespace udm
