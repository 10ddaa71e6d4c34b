// TLS for the NBD export (NBD_OPT_STARTTLS), with GnuTLS as nbdkit and qemu
// use it. Credentials are nbdkit's: an X.509 directory (ca-cert.pem,
// server-cert.pem, server-key.pem, optional ca-crl.pem) and/or a PSK file in
// psktool's format (one "username:hexkey" per line). See docs/nbd.md "TLS".
#pragma once

#include <sys/uio.h>

#include <memory>
#include <string>

#include "util/status.h"

namespace udm {

enum class TlsMode { Off, On, Require };

Result<TlsMode> parse_tls_mode(const std::string& s);  // off|on|require

struct TlsOptions {
  TlsMode mode = TlsMode::Off;
  std::string certificates_dir;  // X.509 credentials (nbdkit's layout)
  std::string psk_file;          // psktool format
  bool verify_peer = false;      // X.509: require a client certificate signed by ca-cert.pem
};

// One TLS connection on a socket. Thread rules (GnuTLS's): one thread may
// receive while another sends; callers serialise receivers among themselves
// and senders among themselves (the NBD server's read and write locks).
class TlsSession {
 public:
  virtual ~TlsSession() = default;
  // Exactly n bytes, or false (peer gone, timeout, TLS error).
  virtual bool recv_full(void* buf, size_t n) = 0;
  // All of iov as one corked batch of records, or false.
  virtual bool send_iov(const iovec* iov, int cnt) = 0;
  // Sends close_notify (best effort) before the socket is closed.
  virtual void bye() = 0;
  virtual std::string description() const = 0;  // "TLS1.3 x509 peer=CN..." for the log
};

// Server credentials, loaded once and shared by every connection.
class TlsServer {
 public:
  virtual ~TlsServer() = default;
  // Loads and checks the credentials; clear errors name the missing file.
  static Result<std::unique_ptr<TlsServer>> create(const TlsOptions& opts);
  // Runs the server side of the handshake on `fd` (already told "go ahead" by
  // the STARTTLS reply). Fails on a bad handshake, a refused client
  // certificate or an unknown PSK identity.
  virtual Result<std::unique_ptr<TlsSession>> handshake(int fd) = 0;
};

}  // namespace udm
