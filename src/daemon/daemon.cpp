#include "daemon/daemon.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <memory>

#include "daemon/control_socket.h"
#include "daemon/registry.h"
#include "export/fuse/fuse_export.h"
#include "export/nbd/nbd_server.h"
#include "util/log.h"

namespace udm {
namespace {

// systemd Type=notify: tell the manager we are ready/stopping (no libsystemd).
void sd_notify_msg(const char* msg) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  size_t n = std::strlen(path);
  if (n >= sizeof a.sun_path) return;
  std::memcpy(a.sun_path, path, n);
  if (a.sun_path[0] == '@') a.sun_path[0] = 0;  // abstract namespace
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  ::sendto(fd, msg, std::strlen(msg), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&a),
           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n));
  ::close(fd);
}

}  // namespace

int run_daemon(const DaemonOptions& opts) {
  // Signals are taken synchronously by this thread only; block them before
  // any thread starts so workers inherit the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto registry = std::make_unique<DeviceRegistry>();
  ControlServer control(*registry, opts.socket, opts.control_group);
  if (Status s = control.start(); !s.ok()) {
    log::error("control socket: {}", s.to_string());
    return 1;
  }
  std::unique_ptr<NbdServer> nbd;
  if (!opts.nbd_unix.empty() || !opts.nbd_tcp.empty()) {
    NbdServerOptions no = opts.nbd;
    no.unix_path = opts.nbd_unix;
    no.tcp_address = opts.nbd_tcp;
    nbd = std::make_unique<NbdServer>(*registry, no);
    if (Status s = nbd->start(); !s.ok()) {
      log::error("nbd: {}", s.to_string());
      return 1;
    }
  }
  std::unique_ptr<FuseExport> fuse;
  if (!opts.fuse_dir.empty()) {
    // The mountpoint is made if missing (under /run/udm for the packaged service).
    std::error_code ec;
    if (!std::filesystem::exists(opts.fuse_dir, ec) && !std::filesystem::create_directories(opts.fuse_dir, ec)) {
      log::error("fuse: cannot create {}: {}", opts.fuse_dir, ec.message());
      if (nbd) nbd->stop();
      return 1;
    }
    fuse = std::make_unique<FuseExport>(*registry, opts.fuse_dir);
    if (Status s = fuse->start(); !s.ok()) {
      log::error("fuse: {}", s.to_string());
      if (nbd) nbd->stop();
      return 1;
    }
  }
  log::info("ready: control {}{}{}{}", opts.socket,
            opts.nbd_unix.empty() ? "" : ", nbd unix " + opts.nbd_unix,
            opts.nbd_tcp.empty() ? "" : ", nbd tcp " + (nbd ? nbd->tcp_bound_address() : ""),
            opts.fuse_dir.empty() ? "" : ", fuse " + opts.fuse_dir);
  sd_notify_msg("READY=1");

  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) continue;  // nothing to reload; keep running
    break;
  }
  sd_notify_msg("STOPPING=1");
  log::info("stopping: draining I/O and flushing devices");
  // Order: no new control requests, no new client I/O, then drain + flush
  // every device (stacked ones first) and close them.
  control.stop();
  if (fuse) fuse->stop();
  if (nbd) nbd->stop();
  Status s = registry->shutdown_all();
  registry.reset();
  if (!s.ok()) {
    log::error("shutdown: {}", s.to_string());
    return 1;
  }
  return 0;
}

}  // namespace udm
