// Real servers for the remote tests, started on 127.0.0.1 free ports from
// temp configs and stopped by PID: nginx, docker-registry (optionally with a
// python3-jwt token server) and fault_server.py (faults nginx cannot make).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/sys_util.h"

namespace udm::test {

int free_port();
bool wait_port(int port, int timeout_ms = 10000);

// A child process, SIGTERM then SIGKILL on stop().
class Proc {
 public:
  Proc(const std::vector<std::string>& argv, const std::string& log_path, const std::string& cwd = "");
  ~Proc() { stop(); }
  void stop();
  int pid() const { return pid_; }

 private:
  int pid_ = -1;
};

// A throwaway certificate authority and a server certificate it signed for
// 127.0.0.1 (subjectAltName IP:127.0.0.1, DNS:localhost, and DNS:dns_name if
// given), made with the openssl CLI in a temp dir: ca.pem (what a client
// trusts), server.pem and server.key (what the server presents).
struct TestCa {
  TempDir dir;
  std::string ca_pem() const { return dir.file("ca.pem"); }
  std::string cert_pem() const { return dir.file("server.pem"); }
  std::string key_pem() const { return dir.file("server.key"); }
  // Null (and error set) if openssl is missing or fails.
  static std::unique_ptr<TestCa> make(std::string* error, const std::string& dns_name = "");
};

class Nginx {
 public:
  // Serves root (must be world-readable) on a free port; "" if nginx is missing (see error).
  // With tls: https with HTTP/2 (`listen ... ssl http2`) using tls's server certificate.
  static std::unique_ptr<Nginx> start(const std::string& root, std::string* error, const TestCa* tls = nullptr);
  std::string url(const std::string& name) const;
  struct Hit {
    std::string method, uri, range;
    int status = 0;
    uint64_t bytes = 0;
    std::string protocol;  // $server_protocol: "HTTP/1.1", "HTTP/2.0"
  };
  std::vector<Hit> log() const;  // access log so far
  void clear_log() const;
  int port = 0;
  bool tls = false;

 private:
  TempDir dir_;
  std::unique_ptr<Proc> proc_;
};

class FaultServer {
 public:
  static std::unique_ptr<FaultServer> start(const std::string& root, std::string* error);
  std::string url(const std::string& mode, const std::string& name) const;
  std::string get(const std::string& path) const;  // "/_stats", "/_set?x=1", ...
  int port = 0;

 private:
  TempDir dir_;
  std::unique_ptr<Proc> proc_;
};

class Registry {
 public:
  // token: also start a token server (TTL seconds) and configure token auth.
  // tls: serve https with tls's server certificate (the registry's own
  // http.tls config; Go's net/http then offers HTTP/2 too).
  static std::unique_ptr<Registry> start(bool token, int token_ttl, std::string* error, const TestCa* tls = nullptr);
  std::string authority() const { return "127.0.0.1:" + std::to_string(port); }
  // Uploads a blob (monolithic, with curl; with a push token if token auth); returns its sha256 hex.
  std::string push_blob(const std::string& repo, const std::string& file) const;
  std::string token_log() const;  // the token server's request log
  int port = 0, token_port = 0;
  bool token = false;
  std::string ca_pem;  // with tls: the CA curl trusts in push_blob
  int pid() const { return reg_ ? reg_->pid() : -1; }
  std::string log() const;  // the registry's own log (access log lines)

 private:
  TempDir dir_;
  std::unique_ptr<Proc> reg_, tok_;
};

}  // namespace udm::test
