// The reference's sample images: every representation of every layer reads
// back to the expected sha256 alone and in every stack; udm's writers
// reproduce the reference's files byte for byte.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstring>
#include <sstream>

#include "obd_test_util.h"
#include "util/crc.h"
#include "overlaybd/tar_format.h"
#include "overlaybd/targets.h"
#include "overlaybd/writer.h"
#include "io/resolver.h"

namespace udm::obd::test {
namespace {

using udm::test::read_file;

std::vector<uint8_t> file_bytes(const std::string& name) { return read_file(data_dir() + "/" + name); }

// Compresses `in` into a ZFile held in memory.
std::vector<uint8_t> zfile_of(const std::vector<uint8_t>& in, ZFileWriteOptions o) {
  auto f = std::make_shared<MemGrowFile>();
  auto sink = zfile_sink(f, o);
  EXPECT_TRUE(sink->write(in).ok());
  EXPECT_TRUE(sink->finish().ok());
  return f->contents();
}

std::vector<uint8_t> tar_of(const std::vector<uint8_t>& in) {
  auto f = std::make_shared<MemGrowFile>();
  auto sink = file_sink(f, true);
  EXPECT_TRUE(sink->write(in).ok());
  EXPECT_TRUE(sink->finish().ok());
  return f->contents();
}

// overlaybd's CRC convention (util/crc.h crc32c_raw): the register starts at
// the seed and is stored as is, no inversion. Checked against a bitwise
// CRC-32C with the ZFile block seed, and chaining over a split.
TEST(Crc32c, ConventionMatchesStandard) {
  const char* s = "123456789";
  EXPECT_EQ(~crc32c_raw(0xFFFFFFFFu, s, 9), 0xE3069283u);
  std::vector<uint8_t> v = udm::test::random_bytes(10007, 3);
  uint32_t ref = kZFileBlockCrcSeed;
  for (uint8_t byte : v) {
    ref ^= byte;
    for (int k = 0; k < 8; k++) ref = (ref >> 1) ^ (0x82F63B78u & (0u - (ref & 1)));
  }
  uint32_t a = crc32c_raw(kZFileBlockCrcSeed, v.data(), v.size());
  EXPECT_EQ(a, ref);
  uint32_t b = crc32c_raw(crc32c_raw(kZFileBlockCrcSeed, v.data(), 5), v.data() + 5, v.size() - 5);
  EXPECT_EQ(a, b);
}

// Every representation of each layer: plain, the reference's ZFiles, udm's
// ZFiles (every block size, both algorithms, with/without CRC, trailer form),
// and tar-wrapped.
std::vector<std::pair<std::string, std::vector<uint8_t>>> representations(const std::string& lsmt_name) {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> out;
  auto plain = file_bytes(lsmt_name);
  out.push_back({lsmt_name, plain});
  if (lsmt_name == "base.lsmt") {
    out.push_back({"base.lz4.zfile", file_bytes("base.lz4.zfile")});
    out.push_back({"base.zstd.zfile", file_bytes("base.zstd.zfile")});
    out.push_back({"tar(base.zstd.zfile)", tar_of(file_bytes("base.zstd.zfile"))});
  }
  uint32_t sizes[] = {4096, 8192, 16384, 32768, 65536};
  int i = 0;
  for (uint32_t bs : sizes) {
    ZFileWriteOptions o;
    o.algo = (i % 2) ? ZAlgo::kZstd : ZAlgo::kLz4;
    o.block_size = bs;
    o.verify = i != 2;
    o.overwrite_header = (i % 3) == 0;
    out.push_back({fmt::format("udm-zfile({},{},{})", i % 2 ? "zstd" : "lz4", bs, o.verify), zfile_of(plain, o)});
    i++;
  }
  out.push_back({"tar(plain)", tar_of(plain)});
  return out;
}

TEST(Sample, EveryRepresentationInEveryStack) {
  auto exp = expected();
  const char* stacks[][3] = {{"base.lsmt", nullptr, nullptr},
                             {"base.lsmt", "l2.lsmt", nullptr},
                             {"base.lsmt", "l2.lsmt", "l3.lsmt"}};
  const char* keys[] = {"base", "base+l2", "base+l2+l3"};
  std::map<std::string, std::vector<std::pair<std::string, std::vector<uint8_t>>>> reps;
  for (auto n : {"base.lsmt", "l2.lsmt", "l3.lsmt"}) reps[n] = representations(n);
  int checked = 0;
  for (int s = 0; s < 3; s++) {
    // Vary one layer's representation at a time (others plain) plus the
    // "all compressed" combination: covers every file in every stack.
    for (int vary = 0; vary < 3 && stacks[s][vary]; vary++) {
      for (auto& [rname, bytes] : reps[stacks[s][vary]]) {
        std::vector<DevicePtr> blobs;
        for (int l = 0; l < 3 && stacks[s][l]; l++)
          blobs.push_back(l == vary ? mem(bytes) : mem(reps[stacks[s][l]][0].second));
        auto dev = stack(blobs);
        ASSERT_TRUE(dev.ok()) << keys[s] << " with " << rname << ": " << dev.status().to_string();
        std::vector<std::string> mib;
        std::string got = sha256_dev(**dev, &mib);
        EXPECT_EQ(got, exp[keys[s]]["sha256"].get<std::string>()) << keys[s] << " with " << rname;
        if (got != exp[keys[s]]["sha256"].get<std::string>()) {
          for (size_t m = 0; m < mib.size(); m++)
            if (mib[m] != exp[keys[s]]["sha256_per_MiB"][m].get<std::string>())
              ADD_FAILURE() << "  first bad MiB: " << m;
        }
        checked++;
      }
    }
  }
  EXPECT_GE(checked, 30);
}

TEST(Sample, ZFileAloneDecompressesToLsmtFile) {
  auto plain = file_bytes("base.lsmt");
  for (auto n : {"base.lz4.zfile", "base.zstd.zfile"}) {
    auto z = ZFileDevice::open(open_file(data_dir() + "/" + n));
    ASSERT_TRUE(z.ok()) << z.status().to_string();
    ASSERT_EQ((*z)->size(), plain.size());
    std::vector<uint8_t> out(plain.size());
    ASSERT_TRUE((*z)->read(0, out).ok());
    EXPECT_TRUE(out == plain) << n;
    // Unaligned, block-straddling reads.
    std::vector<uint8_t> part(10000);
    ASSERT_TRUE((*z)->read(4095, part).ok());
    EXPECT_EQ(0, std::memcmp(part.data(), plain.data() + 4095, part.size()));
  }
}

TEST(Sample, UdmZFileIsByteIdenticalToReference) {
  auto plain = file_bytes("base.lsmt");
  ZFileWriteOptions o;
  o.overwrite_header = true;  // the samples come from overlaybd-commit -z
  o.algo = ZAlgo::kLz4;
  EXPECT_TRUE(zfile_of(plain, o) == file_bytes("base.lz4.zfile"));
  o.algo = ZAlgo::kZstd;
  EXPECT_TRUE(zfile_of(plain, o) == file_bytes("base.zstd.zfile"));
}

TEST(Sample, TargetsThroughRegistry) {
  auto exp = expected();
  Resolver res;
  TargetParams p;
  p.type = "lsmt";
  p.length = 64 << 20;
  p.resolver = &res;
  p.args = {data_dir() + "/base.zstd.zfile", data_dir() + "/l2.lsmt", data_dir() + "/l3.lsmt"};
  auto t = make_lsmt_target(p);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(sha256_dev(**t), exp["base+l2+l3"]["sha256"].get<std::string>());
  EXPECT_TRUE((*t)->caps().read_only);
  EXPECT_FALSE((*t)->write(0, std::vector<uint8_t>(512)).ok());

  TargetParams z = p;
  z.type = "zfile";
  z.args = {data_dir() + "/base.lz4.zfile"};
  z.length = file_bytes("base.lsmt").size();
  auto zt = make_zfile_target(z);
  ASSERT_TRUE(zt.ok()) << zt.status().to_string();
  EXPECT_EQ(sha256_dev(**zt), udm::test::sha256_file(data_dir() + "/base.lsmt"));
  z.length += 512;
  EXPECT_FALSE(make_zfile_target(z).ok());

  // Chain check: l3 directly on base is refused (l3's parent is l2).
  p.args = {data_dir() + "/base.lsmt", data_dir() + "/l3.lsmt"};
  auto bad = make_lsmt_target(p);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("parent_uuid"), std::string::npos) << bad.status().message();
}

// Replays gen_data.py's operations into a udm RW layer and commits it: the
// result must equal the reference's committed file byte for byte.
TEST(Sample, CommitOfReplayedOpsIsByteIdentical) {
  udm::test::TempDir tmp;
  auto r = udm::test::run({"python3", data_dir() + "/gen_data.py", "sources", tmp.path()});
  if (!r.ok()) GTEST_SKIP() << "python3 gen_data.py failed: " << r.describe();
  for (auto layer : {"base", "l2", "l3"}) {
    auto ref = file_bytes(std::string(layer) + ".lsmt");
    auto refl = layer_from(mem(ref));
    ASSERT_TRUE(refl.ok());
    auto data = std::make_shared<MemGrowFile>(), index = std::make_shared<MemGrowFile>();
    ASSERT_TRUE(create_rw_layer(*data, *index, refl->trailer.virtual_size, "", refl->trailer.parent_uuid).ok());
    auto dev = LsmtDevice::open({}, RwLayerFiles{data, index}, LsmtDevice::Options{false});
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    auto ops = udm::test::run({"python3", data_dir() + "/gen_data.py", "ops", layer});
    ASSERT_TRUE(ops.ok());
    std::istringstream in(ops.out);
    std::string op, src, range;
    while (in >> op >> src >> range) {
      uint64_t off = std::stoull(range.substr(0, range.find(':')));
      uint64_t len = std::stoull(range.substr(range.find(':') + 1));
      if (op == "write") {
        auto f = open_file(tmp.file(src));
        std::vector<uint8_t> buf(len);
        ASSERT_TRUE(f->read(off, buf).ok());
        ASSERT_TRUE((*dev)->write(off, buf).ok());
      } else {
        ASSERT_TRUE((*dev)->trim(off, len).ok());
      }
    }
    ASSERT_TRUE((*dev)->flush().ok());
    dev->reset();
    auto out = std::make_shared<MemGrowFile>();
    auto sink = file_sink(out, false);
    CommitOptions co;
    co.uuid = refl->trailer.uuid;
    co.user_tag = refl->trailer.user_tag;
    ASSERT_TRUE(commit_rw_layer(data, index, *sink, co).ok());
    auto got = out->contents();
    EXPECT_EQ(got.size(), ref.size()) << layer;
    EXPECT_TRUE(got == ref) << layer << ": committed file differs from the reference's";
  }
}

}  // namespace
}  // namespace udm::obd::test
