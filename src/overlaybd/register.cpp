// Registers this feature's targets and subcommands. The feature's owner
// replaces these bodies as the feature lands.
#include "cli/cli_common.h"
#include "device/target.h"

namespace udm {
void register_overlaybd_targets(TargetRegistry&) {}
void register_overlaybd_cli(CLI::App&) {}
}  // namespace udm
