// dmsetup table syntax: one segment per line,
//   <start_sector> <length_sectors> <target_type> [<arg>...]
// sectors of 512 bytes; blank lines and '#' comments (whole line or trailing)
// are ignored. Segments must be listed in order, start at sector 0 and leave
// no gaps or overlaps; every error names its line.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace udm {

constexpr uint64_t kSectorSize = 512;

struct TableLine {
  int line_no = 0;          // 1-based line in the table text
  uint64_t start = 0;       // sectors
  uint64_t length = 0;      // sectors
  std::string type;
  std::vector<std::string> args;
  std::string args_text() const;  // args joined by single spaces
};

struct TableSpec {
  std::vector<TableLine> lines;
  uint64_t total_sectors() const {
    return lines.empty() ? 0 : lines.back().start + lines.back().length;
  }
  std::string to_string() const;  // canonical text, one line per segment
};

// Parse a whole table. Errors read "line N: ...".
Result<TableSpec> parse_table(std::string_view text);

}  // namespace udm
