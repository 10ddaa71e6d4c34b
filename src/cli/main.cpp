// udm: the command. Verbs follow dmsetup (create, remove, ls, info, table,
// status, message, suspend, resume, reload) plus the offline tools of each
// feature. See README.md.
#include <signal.h>

#include "cli/cli_common.h"
#include "device/feature.h"
#include "udm_version.h"

int main(int argc, char** argv) {
  // A client that vanishes must not kill us with SIGPIPE; writes report EPIPE.
  signal(SIGPIPE, SIG_IGN);
  CLI::App app{"udm: a user-space device mapper"};
  // "udm 0.1.0 (git 0123456789ab)": the first word is the program, the second
  // the release, the parenthesis the source revision (-dirty: local changes).
  app.set_version_flag("-V,--version", "udm " UDM_VERSION " (git " UDM_GIT_REVISION ")",
                       "print the version and the source revision, then exit");
  app.require_subcommand(1);
  app.fallthrough(false);
  udm::register_features();  // targets and backing sources, before any verb runs
  udm::register_control_cli(app);
  udm::register_features_cli(app);
  udm::register_manpage_cli(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return udm::cli::exit_code();
}
