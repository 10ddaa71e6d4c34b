// A feature is one folder under src/ (update, snapshot, bow, overlaybd, the
// core targets, ...) that registers what it adds: target types, backing
// sources (URI schemes) and `udm` verbs. The feature list in the top-level
// CMakeLists.txt names them; CMake generates the code that calls each
// feature's hooks, so nothing in device/ (or anywhere else) names a feature:
//
//   void register_feature_<name>(Features& f);       // in library udm_<name>
//   void register_feature_<name>_cli(CLI::App& app);  // in udm_<name>_cli, if any
//
// docs/architecture.md, "How to add a target" and "How to add a backing
// source", lists the exact files.
#pragma once

#include "device/scheme_registry.h"
#include "device/target.h"

namespace udm {

struct Features {
  TargetRegistry& targets;
  SchemeRegistry& schemes;
};

// Registers every feature on the list into TargetRegistry::builtin() and
// SchemeRegistry::global(), once (TargetRegistry::builtin() calls it too).
// Defined by the generated code in library udm_features.
void register_features();

}  // namespace udm
