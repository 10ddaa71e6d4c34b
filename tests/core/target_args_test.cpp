#include <gtest/gtest.h>

#include "device/target_args.h"

using namespace udm;

namespace {
std::string err(const Status& s) { return s.message(); }
}  // namespace

TEST(TargetArgs, PositionalsAndDone) {
  TargetArgs a("linear", {"/dev/sda", "2048"});
  auto dev = a.next("<device>");
  ASSERT_TRUE(dev.ok());
  EXPECT_EQ(*dev, "/dev/sda");
  auto off = a.next_sectors("<offset_sectors>");
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(*off, 2048u * 512);
  EXPECT_TRUE(a.done().ok());
  auto more = a.next("<x>");
  EXPECT_EQ(more.status().code(), EINVAL);
  EXPECT_EQ(err(more.status()), "linear: missing <x>");
}

TEST(TargetArgs, ErrorsNameTheArgument) {
  TargetArgs a("linear", {"/dev/sda", "12x", "extra"});
  ASSERT_TRUE(a.next("<device>").ok());
  auto off = a.next_sectors("<offset_sectors>");
  EXPECT_EQ(err(off.status()), "linear: <offset_sectors>: '12x' is not a decimal number");
  EXPECT_EQ(err(a.done()), "linear: unexpected argument 'extra' (the line has 3 arguments, 2 expected)");
  TargetArgs b("t", {"99999999999999999999", "36028797018963968", "-1", "", "7"});
  EXPECT_EQ(err(b.next_u64("<n>").status()), "t: <n>: '99999999999999999999' is too large");
  EXPECT_EQ(err(b.next_sectors("<s>").status()), "t: <s>: 36028797018963968 sectors overflow a byte offset");
  EXPECT_EQ(err(b.next_u64("<n>").status()), "t: <n>: '-1' is not a decimal number");
  EXPECT_EQ(err(b.next_u64("<n>").status()), "t: <n>: empty number");
  EXPECT_EQ(err(b.next_u64("<n>", 8, 9).status()), "t: <n>: 7 is outside 8..9");
}

TEST(TargetArgs, Sizes) {
  struct {
    const char* s;
    uint64_t v;
  } ok[] = {{"4096", 4096}, {"64k", 65536}, {"64K", 65536}, {"1M", 1 << 20}, {"1MiB", 1 << 20},
            {"2G", 2ull << 30}, {"1TB", 1ull << 40}, {"512B", 512}};
  for (auto& c : ok) {
    auto v = parse_size(c.s, "size");
    ASSERT_TRUE(v.ok()) << c.s << ": " << v.status().to_string();
    EXPECT_EQ(*v, c.v) << c.s;
  }
  for (const char* bad : {"", "k", "4q", "4kk", "4BiB", "16777216T", "1.5M", " 4"})
    EXPECT_EQ(parse_size(bad, "size").status().code(), EINVAL) << bad;
}

TEST(TargetArgs, OptionalGroup) {
  TargetArgs a("bow", {"/dev/x", "3", "on_full=drop", "block_size=1k", "no_merge"});
  ASSERT_TRUE(a.next("<dev>").ok());
  auto o = a.opt_group();
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_TRUE(a.done().ok());
  auto full = o->choice("on_full", {"fail", "drop"}, "fail");
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(*full, "drop");
  auto bs = o->size("block_size");
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->value_or(0), 1024u);
  auto nf = o->flag("no_merge");
  ASSERT_TRUE(nf.ok());
  EXPECT_TRUE(*nf);
  auto absent = o->u64("throttle");
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->has_value());
  EXPECT_TRUE(o->done().ok());
}

TEST(TargetArgs, OptionalGroupErrors) {
  {
    TargetArgs a("bow", {"/dev/x", "2", "on_full=drop"});
    ASSERT_TRUE(a.next("<dev>").ok());
    EXPECT_EQ(err(a.opt_group().status()), "bow: <#opt_args>: says 2 but 1 optional argument follow");
  }
  {
    TargetArgs a("bow", {"/dev/x"});
    ASSERT_TRUE(a.next("<dev>").ok());
    auto o = a.opt_group();
    ASSERT_TRUE(o.ok());
    EXPECT_TRUE(o->empty());
  }
  {
    TargetArgs a("bow", {"2", "on_full=maybe", "bogus"});
    auto o = a.opt_group();
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(err(o->choice("on_full", {"fail", "drop"}, "fail").status()),
              "bow: on_full: 'maybe' is not one of fail, drop");
    EXPECT_EQ(err(o->done()), "bow: unknown optional argument 'bogus' (known: on_full=fail|drop)");
  }
  {
    // dm-verity style `key value` pairs count in #opt_args.
    TargetArgs a("verity", {"3", "use_fec_from_device", "/dev/y", "ignore_zero_blocks"});
    auto o = a.opt_group();
    ASSERT_TRUE(o.ok());
    auto fec = o->value("use_fec_from_device", /*pair=*/true);
    ASSERT_TRUE(fec.ok());
    EXPECT_EQ(fec->value_or(""), "/dev/y");
    auto z = o->flag("ignore_zero_blocks");
    ASSERT_TRUE(z.ok());
    EXPECT_TRUE(*z);
    EXPECT_TRUE(o->done().ok());
  }
  {
    TargetArgs a("t", {"2", "x=1", "x=2"});
    auto o = a.opt_group();
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(err(o->u64("x").status()), "t: x: given twice");
  }
  {
    TargetArgs a("t", {"1", "k"});
    auto o = a.opt_group();
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(err(o->value("k", true).status()), "t: k: missing its value");
  }
}
