// Other features' diff formats for `udm update-diff --format NAME` (the
// android_cow feature registers android-cow-v2 and android-cow-v3), so the
// update verb names no other feature. A format runs with the verb's
// arguments and prints its own summary.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "util/status.h"

namespace udm::update {

struct ExternalDiffArgs {
  std::string old_path, new_path, out_path;
  std::string algorithm;   // -a, as given ("" = the format's default)
  std::string cow_unit;    // --cow-unit, as given ("" = default)
};
using ExternalDiffFormat = std::function<Status(const ExternalDiffArgs&)>;

// Registered formats by --format name; filled by the features' CLI hooks.
inline std::map<std::string, ExternalDiffFormat>& external_diff_formats() {
  static std::map<std::string, ExternalDiffFormat> m;
  return m;
}

}  // namespace udm::update
