// `udm daemon`: holds named devices, serves the control socket and exports
// them over NBD and FUSE until SIGTERM/SIGINT, then drains I/O, flushes every
// device and exits 0.
#pragma once

#include <string>
#include <vector>

#include "export/nbd/nbd_server.h"

namespace udm {

struct DaemonOptions {
  std::string socket;    // control socket
  std::string nbd_unix;  // NBD on a Unix socket (optional)
  std::string nbd_tcp;   // NBD on HOST:PORT (optional)
  std::string fuse_dir;  // FUSE export directory (optional)
  NbdServerOptions nbd;  // TLS, export allow-list, per-client limits (paths above are copied in)
  std::string control_group;  // group whose members may use the control socket (besides root)
};

// Runs in the foreground; returns the process exit code.
int run_daemon(const DaemonOptions& opts);

}  // namespace udm
