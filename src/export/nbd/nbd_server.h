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

#include "export/export_provider.h"

namespace udm {

struct NbdServerOptions {
  std::string unix_path;    // listen here if non-empty (a stale socket is replaced)
  std::string tcp_address;  // "HOST:PORT" if non-empty; port 0 = ephemeral (tests)
  unsigned workers = 0;     // threads serving each connection's requests; 0 = 8
};

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

  ExportProvider& provider_;
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

};

}  // namespace udm
