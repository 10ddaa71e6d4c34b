#include "device/table.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <limits>

namespace udm {
namespace {

std::vector<std::string> split_ws(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) i++;
    size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != '\t' && s[j] != '\r') j++;
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

bool parse_u64(const std::string& s, uint64_t* v) {
  if (s.empty() || s.size() > 20) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

std::string TableLine::args_text() const {
  std::string out;
  for (size_t i = 0; i < args.size(); i++) {
    if (i) out += ' ';
    out += args[i];
  }
  return out;
}

std::string TableSpec::to_string() const {
  std::string out;
  for (const auto& l : lines) {
    out += fmt::format("{} {} {}", l.start, l.length, l.type);
    if (!l.args.empty()) out += " " + l.args_text();
    out += "\n";
  }
  return out;
}

Result<TableSpec> parse_table(std::string_view text) {
  TableSpec spec;
  int line_no = 0;
  size_t pos = 0;
  uint64_t next_start = 0;
  while (pos <= text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view raw = text.substr(pos, eol - pos);
    pos = eol + 1;
    line_no++;
    if (raw.find('\0') != std::string_view::npos)
      return Invalid(fmt::format("line {}: NUL byte in table", line_no));
    size_t hash = raw.find('#');
    if (hash != std::string_view::npos) raw = raw.substr(0, hash);
    auto words = split_ws(raw);
    if (words.empty()) {
      if (eol == text.size()) break;
      continue;
    }
    if (words.size() < 3)
      return Invalid(fmt::format(
          "line {}: expected '<start> <length> <target> [args...]', got {} field{}", line_no,
          words.size(), words.size() == 1 ? "" : "s"));
    TableLine tl;
    tl.line_no = line_no;
    if (!parse_u64(words[0], &tl.start))
      return Invalid(fmt::format("line {}: start sector '{}' is not a non-negative integer",
                                 line_no, words[0]));
    if (!parse_u64(words[1], &tl.length))
      return Invalid(fmt::format("line {}: length '{}' is not a non-negative integer", line_no,
                                 words[1]));
    if (tl.length == 0) return Invalid(fmt::format("line {}: length must be > 0", line_no));
    // Sizes are kept in bytes internally: keep start+length*512 in range.
    constexpr uint64_t kMaxSectors = std::numeric_limits<uint64_t>::max() / kSectorSize;
    if (tl.start > kMaxSectors || tl.length > kMaxSectors - tl.start)
      return Invalid(fmt::format("line {}: segment end overflows", line_no));
    if (tl.start < next_start)
      return Invalid(fmt::format("line {}: segment at sector {} overlaps the previous segment "
                                 "(which ends at sector {})",
                                 line_no, tl.start, next_start));
    if (tl.start > next_start)
      return Invalid(fmt::format("line {}: gap: segment starts at sector {} but the previous "
                                 "one ends at sector {}",
                                 line_no, tl.start, next_start));
    tl.type = words[2];
    for (char c : tl.type) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'))
        return Invalid(fmt::format("line {}: bad target type '{}'", line_no, tl.type));
    }
    tl.args.assign(words.begin() + 3, words.end());
    next_start = tl.start + tl.length;
    spec.lines.push_back(std::move(tl));
    if (eol == text.size()) break;
  }
  if (spec.lines.empty()) return Invalid("empty table: no segments");
  return spec;
}

}  // namespace udm
