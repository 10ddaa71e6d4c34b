// The zfile and lsmt table lines (`zfile <dev>`, `lsmt <layer> [<layer> ...]
// [rw <data> <index>]`) read through device/target_args.h: every refusal
// names the argument; backing specs go through the resolver (here udm
// device names), and each shape of line builds the target it should.
#include <gtest/gtest.h>

#include "obd_test_util.h"
#include "io/resolver.h"
#include "overlaybd/targets.h"
#include "overlaybd/writer.h"

namespace udm::obd::test {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr uint64_t kSize = 1 << 20;

struct Fixture {
  udm::test::TempDir tmp;
  std::map<std::string, DevicePtr> devs;
  Resolver res{[this](const std::string& name, bool) -> Result<DevicePtr> {
    auto it = devs.find(name);
    if (it == devs.end()) return Status::Error(ENOENT, "no udm device " + name);
    return it->second;
  }};
  Bytes raw = udm::test::random_bytes(kSize, 71);
  std::string data, index;

  Fixture() {
    auto out = std::make_shared<MemGrowFile>();
    auto sink = file_sink(out, false);
    MemoryDevice rd(raw, true);
    EXPECT_TRUE(raw_to_layer(rd, *sink, {}).ok());
    devs["base"] = mem(out->contents());
    auto zout = std::make_shared<MemGrowFile>();
    ZFileWriteOptions o;
    o.tar = true;
    auto zs = zfile_sink(zout, o);
    EXPECT_TRUE(zs->write(out->contents()).ok());
    EXPECT_TRUE(zs->finish().ok());
    devs["tzbase"] = mem(zout->contents());
    data = tmp.file("data");
    index = tmp.file("index");
    auto d = open_grow_file(data, true, true), x = open_grow_file(index, true, true);
    EXPECT_TRUE(d.ok() && x.ok());
    EXPECT_TRUE(create_rw_layer(**d, **x, kSize, "", "").ok());
  }
  TargetParams params(const std::string& type, std::vector<std::string> args, uint64_t len = kSize) {
    TargetParams p;
    p.type = type;
    p.length = len;
    p.args = std::move(args);
    p.resolver = &res;
    return p;
  }
};

void expect_refused(const Result<TargetPtr>& t, const std::string& words, int code = EINVAL) {
  ASSERT_FALSE(t.ok()) << "accepted, expected: " << words;
  EXPECT_EQ(t.status().code(), code) << t.status().to_string();
  EXPECT_NE(t.status().message().find(words), std::string::npos)
      << "'" << t.status().message() << "' lacks '" << words << "'";
}

TEST(OverlaybdTargets, RefusalsNameTheArgument) {
  Fixture f;
  expect_refused(make_zfile_target(f.params("zfile", {})), "zfile: missing <dev>");
  expect_refused(make_zfile_target(f.params("zfile", {"tzbase", "x"})), "zfile: unexpected argument 'x'");
  expect_refused(make_zfile_target(f.params("zfile", {"nosuch"})), "zfile: <dev>: no udm device nosuch", ENOENT);
  expect_refused(make_zfile_target(f.params("zfile", {"base"})), "zfile base", EUCLEAN);  // not a ZFile

  expect_refused(make_lsmt_target(f.params("lsmt", {})), "lsmt: missing <layer>");
  expect_refused(make_lsmt_target(f.params("lsmt", {"base", "rw", f.data})), "lsmt: missing <index>");
  expect_refused(make_lsmt_target(f.params("lsmt", {"base", "rw"})), "lsmt: missing <data>");
  expect_refused(make_lsmt_target(f.params("lsmt", {"base", "rw", f.data, f.index, "x"})),
                 "lsmt: unexpected argument 'x'");
  expect_refused(make_lsmt_target(f.params("lsmt", {"rw", "data", f.index})), "lsmt: <data>: 'data' is not a file path");
  expect_refused(make_lsmt_target(f.params("lsmt", {"rw", f.data, "idx"})), "lsmt: <index>: 'idx' is not a file path");
  expect_refused(make_lsmt_target(f.params("lsmt", {"base", "nosuch"})), "lsmt: <layer> 1 (nosuch): no udm device", ENOENT);
  expect_refused(make_lsmt_target(f.params("lsmt", {"base", "rw", f.data + ".missing", f.index})), "lsmt: <data>", ENOENT);
  expect_refused(make_lsmt_target(f.params("lsmt", {"/nonexistent/layer"})), "lsmt: <layer> 0 (/nonexistent/layer)",
                 ENOENT);
}

TEST(OverlaybdTargets, EveryShapeOfLineBuildsItsTarget) {
  Fixture f;
  Bytes got(kSize);
  // zfile over a tar-wrapped ZFile device: the decompressed LSMT file.
  auto z = make_zfile_target(f.params("zfile", {"tzbase"}, 8192));
  ASSERT_TRUE(z.ok()) << z.status().to_string();
  EXPECT_EQ((*z)->type(), "zfile");
  EXPECT_TRUE((*z)->caps().read_only);
  EXPECT_EQ((*z)->size(), 8192u);
  // lsmt, read-only: layers only.
  for (const char* layer : {"base", "tzbase"}) {
    SCOPED_TRACE(layer);
    auto t = make_lsmt_target(f.params("lsmt", {layer}));
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_EQ((*t)->type(), "lsmt");
    EXPECT_TRUE((*t)->caps().read_only);
    EXPECT_EQ((*t)->status().substr(0, 2), "1 ");
    EXPECT_EQ((*t)->status().substr((*t)->status().size() - 3), " ro");
    ASSERT_TRUE((*t)->read(0, got).ok());
    EXPECT_TRUE(got == f.raw);
    EXPECT_EQ((*t)->write(0, Bytes(512, 1)).code(), EROFS);
  }
  // An RW layer alone, then over a read-only layer (the write of the first
  // round is still there).
  Bytes expect = f.raw;
  std::fill(expect.begin() + 4096, expect.begin() + 4608, 7);
  for (bool with_base : {false, true}) {
    SCOPED_TRACE(with_base);
    std::vector<std::string> args = {"rw", f.data, f.index};
    if (with_base) args.insert(args.begin(), "base");
    auto t = make_lsmt_target(f.params("lsmt", args));
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_FALSE((*t)->caps().read_only);
    EXPECT_NE((*t)->status().find(" rw "), std::string::npos) << (*t)->status();
    ASSERT_TRUE((*t)->read(0, got).ok());
    EXPECT_TRUE(with_base ? got == expect : got == Bytes(kSize, 0));
    ASSERT_TRUE((*t)->write(4096, Bytes(512, 7)).ok());
    ASSERT_TRUE((*t)->flush().ok());
    Bytes s(512);
    ASSERT_TRUE((*t)->read(4096, s).ok());
    EXPECT_TRUE(s == Bytes(512, 7));
  }
}

}  // namespace
}  // namespace udm::obd::test
