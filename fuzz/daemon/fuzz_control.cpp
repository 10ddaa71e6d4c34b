// Control protocol: any request line gets exactly one JSON reply line and
// never crashes the daemon. Tables may only name the zero/error targets or
// files under /nonexistent, so the fuzzer never touches real files.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/control_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static udm::DeviceRegistry* reg = new udm::DeviceRegistry();
  std::string_view line(reinterpret_cast<const char*>(data), size);
  // Keep fuzzed tables away from real paths.
  if (line.find('/') != std::string_view::npos) return 0;
  std::string reply = udm::handle_request_line(*reg, line);
  if (reply.empty() || reply.back() != '\n') std::abort();
  auto j = nlohmann::json::parse(reply, nullptr, false);
  if (j.is_discarded() || !j.contains("ok")) std::abort();
  return 0;
}
