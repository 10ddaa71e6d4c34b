#include "cli/cli_common.h"

#include <cstdio>
#include <string>

namespace udm::cli {

int& exit_code() {
  static int code = 0;
  return code;
}

void fail(const Status& s, int code) { fail(std::string_view(s.message()), code); }

void fail(std::string_view msg, int code) {
  std::fprintf(stderr, "udm: error: %.*s\n", static_cast<int>(msg.size()), msg.data());
  exit_code() = code;
}

}  // namespace udm::cli
