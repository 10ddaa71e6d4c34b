#include "cli/cli_common.h"
namespace udm {
void register_control_cli(CLI::App&) {}
}  // namespace udm
