// Both directions against veritysetup, byte for byte, over the parameter
// matrix of ../shared/notes/verity.md §2.3 (formats 0/1; 512..4096 and mixed
// block sizes; sha1/sha256/sha512; salt, no salt, short salt; separate hash
// file and same-file --hash-offset; no superblock; 0 to 4 levels):
//   (a) veritysetup format -> udm verity-verify passes, udm verity-dump ==
//       veritysetup dump, and the verity target reads every data byte back;
//   (b) udm verity-format (same uuid and salt) == veritysetup's file (cmp),
//       same root, and veritysetup verify accepts it.
// Skipped (with the reason) where veritysetup is not installed.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "common/sys_util.h"
#include "device/mapped_device.h"
#include "device/table.h"
#include "io/resolver.h"
#include "verity/format.h"

using namespace udm;
using namespace udm::test;

namespace {

const std::string kSalt = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const std::string kUuid = "12345678-1234-1234-1234-123456789abc";

struct Case {
  std::string name;
  std::vector<std::string> opts;  // veritysetup/udm format options (besides --uuid)
  uint64_t data_bytes;
  int levels;                     // expected tree levels
  bool same_file = false;         // hash area in the data file at --hash-offset
  uint64_t hash_offset = 0;
  bool no_sb = false;
};

std::vector<Case> cases() {
  const std::string S = "--salt=" + kSalt;
  return {
      {"sha256_4k", {S}, 8 << 20, 2},
      {"sha256_4k_nosalt", {"--salt=-"}, 8 << 20, 2},
      {"sha256_4k_salt2", {"--salt=a5e1"}, 8 << 20, 2},
      {"sha256_512", {S, "--data-block-size=512", "--hash-block-size=512"}, 1 << 20, 3},
      {"sha256_512_4levels", {S, "--data-block-size=512", "--hash-block-size=512"}, 5000 * 512, 4},
      {"sha256_1k", {S, "--data-block-size=1024", "--hash-block-size=1024"}, 2 << 20, 3},
      {"sha256_4k_data_1k_hash", {S, "--hash-block-size=1024"}, 8 << 20, 3},
      {"sha256_1k_data_4k_hash", {S, "--data-block-size=1024"}, 2 << 20, 2},
      {"sha256_format0", {S, "--format=0"}, 8 << 20, 2},
      {"sha1_format1", {S, "--hash=sha1"}, 8 << 20, 2},
      {"sha1_format0", {S, "--hash=sha1", "--format=0"}, 8 << 20, 2},
      {"sha1_format0_512", {S, "--hash=sha1", "--format=0", "--data-block-size=512", "--hash-block-size=512"},
       1 << 20, 3},
      {"sha512_4k_512", {S, "--hash=sha512", "--hash-block-size=512"}, 4 << 20, 4},
      {"sha512_format0", {"--salt=-", "--hash=sha512", "--format=0"}, 4 << 20, 2},
      {"blocks_1", {S, "--data-blocks=1"}, 1 << 20, 0},
      {"blocks_2", {S, "--data-blocks=2"}, 1 << 20, 1},
      {"blocks_129", {S, "--data-blocks=129"}, 1 << 20, 2},
      {"blocks_1000_odd_file", {S, "--data-blocks=1000"}, (4 << 20) + 1234, 2},
      {"no_superblock", {S, "--no-superblock"}, 8 << 20, 2, false, 0, true},
      {"hash_offset_separate", {S, "--hash-offset=8192"}, 2 << 20, 2, false, 8192},
      {"same_file_aligned", {S, "--data-blocks=512", "--hash-offset=2097152"}, 2 << 20, 2, true, 2097152},
      {"same_file_plus512", {S, "--data-blocks=512", "--hash-offset=2097664"}, 2 << 20, 2, true, 2097664},
      {"same_file_no_superblock", {S, "--data-blocks=512", "--hash-offset=2097152", "--no-superblock"}, 2 << 20, 2,
       true, 2097152, true},
  };
}

std::string opt_value(const Case& c, const std::string& key, const std::string& dflt) {
  for (auto& o : c.opts)
    if (o.rfind(key + "=", 0) == 0) return o.substr(key.size() + 1);
  return dflt;
}

std::string root_of(const std::string& out) {
  auto p = out.find("Root hash:");
  if (p == std::string::npos) return "";
  p = out.find_first_not_of(" \t", p + 10);
  return out.substr(p, out.find('\n', p) - p);
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class Compat : public ::testing::TestWithParam<Case> {};

TEST_P(Compat, BothWaysByteForByte) {
  if (!have_tool("veritysetup")) GTEST_SKIP() << "veritysetup not installed (apt-get install cryptsetup-bin)";
  const Case& c = GetParam();
  TempDir t;
  std::string data = t.file("data.img"), h1 = t.file("vs.hash"), h2 = t.file("udm.hash");
  auto bytes = random_bytes(c.data_bytes, 7);
  // A few zero blocks and repeated blocks, as real images have.
  std::fill(bytes.begin(), bytes.begin() + std::min<size_t>(bytes.size(), 8192), 0);
  write_file(data, bytes);
  if (c.same_file) {
    ASSERT_EQ(0, ::truncate(data.c_str(), c.hash_offset + (1 << 20)));
    // veritysetup and udm each format their own copy of the same file.
    ASSERT_TRUE(sh("cp " + data + " " + h1 + " && cp " + data + " " + h2).ok());
  }
  std::string d1 = c.same_file ? h1 : data, d2 = c.same_file ? h2 : data;
  std::vector<std::string> vs = {"veritysetup", "format", "--uuid=" + kUuid};
  vs.insert(vs.end(), c.opts.begin(), c.opts.end());
  vs.push_back(d1);
  vs.push_back(h1);
  auto r1 = run(vs);
  ASSERT_TRUE(r1.ok()) << r1.describe();
  std::string root = root_of(r1.out);
  ASSERT_FALSE(root.empty()) << r1.out;

  // (b) udm verity-format: same bytes, same root, veritysetup verify accepts it.
  std::vector<std::string> us = {udm_bin(), "verity-format", "--uuid=" + kUuid, "--threads=2"};
  us.insert(us.end(), c.opts.begin(), c.opts.end());
  us.push_back(d2);
  us.push_back(h2);
  auto r2 = run(us);
  ASSERT_TRUE(r2.ok()) << r2.describe();
  EXPECT_EQ(root_of(r2.out), root);
  EXPECT_EQ(r2.out, r1.out.substr(0, r1.out.find("for ")) + "for " + h2 + r1.out.substr(r1.out.find('\n')))
      << "udm prints veritysetup's header";
  EXPECT_EQ(read_file(h1), read_file(h2)) << "hash files differ";
  std::vector<std::string> vv = {"veritysetup", "verify"};
  for (auto& o : c.opts)
    if (o.rfind("--uuid", 0) != 0) vv.push_back(o);
  vv.push_back(d2);
  vv.push_back(h2);
  vv.push_back(root);
  auto r3 = run(vv);
  EXPECT_TRUE(r3.ok()) << r3.describe();

  // (a) udm verity-verify and verity-dump on veritysetup's output.
  std::vector<std::string> uv = {udm_bin(), "verity-verify"};
  for (auto& o : c.opts) uv.push_back(o);
  uv.push_back(d1);
  uv.push_back(h1);
  uv.push_back(root);
  auto r4 = run(uv);
  EXPECT_TRUE(r4.ok()) << r4.describe();
  if (!c.no_sb) {
    auto off = opt_value(c, "--hash-offset", "0");
    auto vd = run({"veritysetup", "dump", "--hash-offset=" + off, h1});
    auto ud = run({udm_bin(), "verity-dump", "--hash-offset=" + off, h1});
    EXPECT_TRUE(ud.ok()) << ud.describe();
    EXPECT_EQ(ud.out, vd.out);
  }

  // The target over veritysetup's tree reads the data back, and its table
  // line is what verity-table prints.
  std::vector<std::string> ut = {udm_bin(), "verity-table"};
  for (auto& o : c.opts)
    if (o.rfind("--uuid", 0) != 0) ut.push_back(o);
  ut.push_back(d1);
  ut.push_back(h1);
  ut.push_back(root);
  auto r5 = run(ut);
  ASSERT_TRUE(r5.ok()) << r5.describe();
  auto spec = parse_table(r5.out);
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  ASSERT_EQ(spec->lines.size(), 1u);
  auto tl = verity::parse_table_args(spec->lines[0].args);
  ASSERT_TRUE(tl.ok()) << tl.status().message();
  auto g = verity::compute_geometry(tl->params);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->levels, c.levels);
  Resolver res;
  auto table = Table::build(*spec, res, TargetRegistry::builtin(), "v");
  ASSERT_TRUE(table.ok()) << table.status().message();
  auto dev = std::make_shared<MappedDevice>("v", *table);
  std::vector<uint8_t> got(dev->size());
  ASSERT_TRUE(dev->read(0, got).ok());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), bytes.begin())) << "verity reads differ from the data";
}

// udm verity-verify reports what veritysetup verify reports (words and exit
// code) for a flipped data byte, level-0 digest, top-block padding and root.
TEST(VerityCompat, VerifyReportsLikeVeritysetup) {
  if (!have_tool("veritysetup")) GTEST_SKIP() << "veritysetup not installed (apt-get install cryptsetup-bin)";
  TempDir t;
  std::string data = t.file("d.img"), hash = t.file("d.hash");
  write_file(data, random_bytes(8 << 20, 11));
  auto f = run({"veritysetup", "format", "--salt=" + kSalt, data, hash});
  ASSERT_TRUE(f.ok()) << f.describe();
  std::string root = root_of(f.out);
  struct Flip {
    std::string file;
    uint64_t off;
    bool bad_root;
  } flips[] = {{data, 4096000 + 9, false}, {hash, 4096 * 2 + 40, false}, {hash, 4096 + 4000, false}, {"", 0, true}};
  for (auto& fl : flips) {
    SCOPED_TRACE(fl.off);
    std::string d2 = t.file("c.img"), h2 = t.file("c.hash");
    ASSERT_TRUE(sh("cp " + data + " " + d2 + " && cp " + hash + " " + h2).ok());
    std::string r = root;
    if (fl.bad_root) r[63] = r[63] == '0' ? '1' : '0';
    else ASSERT_TRUE(sh("printf X | dd of=" + (fl.file == data ? d2 : h2) + " bs=1 seek=" + std::to_string(fl.off) +
                        " conv=notrunc status=none").ok());
    auto v = run({"veritysetup", "verify", d2, h2, r});
    auto u = run({udm_bin(), "verity-verify", d2, h2, r});
    EXPECT_NE(v.exit_code, 0);
    EXPECT_EQ(u.exit_code, v.exit_code);
    EXPECT_EQ(u.err, v.err);
  }
}

INSTANTIATE_TEST_SUITE_P(Verity, Compat, ::testing::ValuesIn(cases()),
                         [](const auto& i) { return i.param.name; });

}  // namespace
