// Table parser: any text either parses into contiguous segments or fails with
// a message naming a line; it never crashes.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "device/table.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto r = udm::parse_table(text);
  if (r.ok()) {
    uint64_t next = 0;
    for (const auto& l : r->lines) {
      if (l.start != next || l.length == 0) std::abort();
      next = l.start + l.length;
    }
    // Canonical text must parse to the same segments.
    auto again = udm::parse_table(r->to_string());
    if (!again.ok() || again->lines.size() != r->lines.size()) std::abort();
  } else if (r.status().message().empty()) {
    std::abort();
  }
  return 0;
}
