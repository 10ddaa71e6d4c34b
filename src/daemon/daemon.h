// `udm daemon`: holds named devices, serves the control socket and exports
// them over NBD and FUSE until SIGTERM/SIGINT, then drains I/O, flushes every
// device and exits 0.
#pragma once

#include <string>

namespace udm {

struct DaemonOptions {
  std::string socket;    // control socket
  std::string nbd_unix;  // NBD on a Unix socket (optional)
  std::string nbd_tcp;   // NBD on HOST:PORT (optional)
  std::string fuse_dir;  // FUSE export directory (optional)
};

// Runs in the foreground; returns the process exit code.
int run_daemon(const DaemonOptions& opts);

}  // namespace udm
