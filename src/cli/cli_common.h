// Shared plumbing for `udm` subcommands. Every feature adds its subcommands
// in register_feature_<name>_cli(); a subcommand's callback does its work and
// reports failure through fail(), which prints one clear line and sets the
// process exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <string_view>

#include "util/status.h"

namespace udm::cli {

int& exit_code();
// "udm: error: <message>" on stderr; exit code 1 (or `code`).
void fail(const Status& s, int code = 1);
void fail(std::string_view msg, int code = 1);

}  // namespace udm::cli

namespace udm {
void register_control_cli(CLI::App& app);   // daemon + dmsetup-like verbs (src/daemon)
void register_features_cli(CLI::App& app);  // every feature's verbs (generated: cmake/features.cmake)
void register_manpage_cli(CLI::App& app);   // hidden `udm manpage`: udm(8) from this parser (manpage.cpp)
}  // namespace udm
