#include <gtest/gtest.h>

#include "device/table.h"

using namespace udm;

namespace {
std::string parse_error(const std::string& text) {
  auto r = parse_table(text);
  EXPECT_FALSE(r.ok()) << "table parsed but should not: " << text;
  return r.ok() ? "" : r.status().message();
}
}  // namespace

TEST(TableParser, SingleLine) {
  auto r = parse_table("0 2048 linear /dev/sda1 0");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->lines.size(), 1u);
  EXPECT_EQ(r->lines[0].start, 0u);
  EXPECT_EQ(r->lines[0].length, 2048u);
  EXPECT_EQ(r->lines[0].type, "linear");
  EXPECT_EQ(r->lines[0].args, (std::vector<std::string>{"/dev/sda1", "0"}));
  EXPECT_EQ(r->total_sectors(), 2048u);
}

TEST(TableParser, SeveralLinesCommentsBlanksTabs) {
  auto r = parse_table(
      "# a comment\n"
      "\n"
      "0 100 linear /a 0   # trailing comment\n"
      "  \t\n"
      "100\t50\tzero\r\n"
      "150 10 error\n");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->lines.size(), 3u);
  EXPECT_EQ(r->lines[0].line_no, 3);
  EXPECT_EQ(r->lines[1].line_no, 5);
  EXPECT_EQ(r->lines[1].type, "zero");
  EXPECT_TRUE(r->lines[1].args.empty());
  EXPECT_EQ(r->lines[2].start, 150u);
  EXPECT_EQ(r->total_sectors(), 160u);
  EXPECT_EQ(r->to_string(), "0 100 linear /a 0\n100 50 zero\n150 10 error\n");
}

TEST(TableParser, EmptyTable) {
  EXPECT_NE(parse_error("").find("empty table"), std::string::npos);
  EXPECT_NE(parse_error("# only comments\n\n").find("empty table"), std::string::npos);
}

TEST(TableParser, TooFewFields) {
  EXPECT_EQ(parse_error("0 100"), "line 1: expected '<start> <length> <target> [args...]', got 2 fields");
  EXPECT_EQ(parse_error("\n0"), "line 2: expected '<start> <length> <target> [args...]', got 1 field");
}

TEST(TableParser, BadNumbers) {
  EXPECT_EQ(parse_error("x 100 zero"), "line 1: start sector 'x' is not a non-negative integer");
  EXPECT_EQ(parse_error("-1 100 zero"), "line 1: start sector '-1' is not a non-negative integer");
  EXPECT_EQ(parse_error("0 1e3 zero"), "line 1: length '1e3' is not a non-negative integer");
  EXPECT_EQ(parse_error("0 99999999999999999999999 zero"),
            "line 1: length '99999999999999999999999' is not a non-negative integer");
  EXPECT_EQ(parse_error("0 +5 zero"), "line 1: length '+5' is not a non-negative integer");
}

TEST(TableParser, ZeroLength) { EXPECT_EQ(parse_error("0 0 zero"), "line 1: length must be > 0"); }

TEST(TableParser, Overflow) {
  EXPECT_EQ(parse_error("0 36028797018963968 zero"), "line 1: segment end overflows");
  EXPECT_EQ(parse_error("0 36028797018963967 zero\n36028797018963967 1 zero"),
            "line 2: segment end overflows");
}

TEST(TableParser, GapsAndOverlapsNameTheLine) {
  EXPECT_EQ(parse_error("1 100 zero"),
            "line 1: gap: segment starts at sector 1 but the previous one ends at sector 0");
  EXPECT_EQ(parse_error("0 100 zero\n\n100 10 zero\n120 5 zero"),
            "line 4: gap: segment starts at sector 120 but the previous one ends at sector 110");
  EXPECT_EQ(parse_error("0 100 zero\n50 100 zero"),
            "line 2: segment at sector 50 overlaps the previous segment (which ends at sector 100)");
}

TEST(TableParser, BadTargetTypeAndNul) {
  EXPECT_EQ(parse_error("0 1 lin$ear"), "line 1: bad target type 'lin$ear'");
  EXPECT_EQ(parse_error(std::string("0 1 zero\n0 1 z\0ero", 19)), "line 2: NUL byte in table");
}
