// udm: the command. Verbs follow dmsetup (create, remove, ls, info, table,
// status, message, suspend, resume, reload) plus the offline tools of each
// feature. See README.md.
#include <signal.h>

#include "cli/cli_common.h"
#include "device/feature.h"

int main(int argc, char** argv) {
  // A client that vanishes must not kill us with SIGPIPE; writes report EPIPE.
  signal(SIGPIPE, SIG_IGN);
  CLI::App app{"udm: a user-space device mapper"};
  app.require_subcommand(1);
  app.fallthrough(false);
  udm::register_features();  // targets and backing sources, before any verb runs
  udm::register_control_cli(app);
  udm::register_features_cli(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return udm::cli::exit_code();
}
