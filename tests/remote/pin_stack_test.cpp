// An LSMT layer inside a ZFile, in a registry, read through a stack of udm
// devices in the daemon: `z: zfile oci://…`, `v: linear z 0`, `l: lsmt v`.
// The LSMT reader's keep_cached of its header, index and trailer goes
// through the mapped devices, linear and the ZFile to the registry blob's
// stored bytes, which stay pinned while l and z are read whole, and z's
// first half again, through a 1 MiB --cache-size. Then the daemon restarts on the same cache with the
// registry stopped: the three devices are created again, from the cache
// alone (the ZFile's and the LSMT layer's metadata), fetching nothing.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "io/file_device.h"
#include "overlaybd/lsmt_format.h"
#include "overlaybd/zfile_device.h"
#include "remote_util.h"
#include "servers.h"

namespace udm::test {
namespace {

TEST(RemotePinStack, LsmtIndexInZFileThroughStackedDevicesOpensAfterRestartWithRegistryGone) {
  TempDir t, cache;
  // 32 MiB whose sectors are zero at random: an LSMT index of about 16 Ki
  // entries (256 KiB), compressed to more than one cache block.
  auto raw = random_bytes(32u << 20, 61);
  std::mt19937_64 rng(62);
  for (size_t s = 0; s < raw.size(); s += 512)
    if (rng() % 2) std::memset(raw.data() + s, 0, 512);
  write_file(t.file("raw.img"), raw);
  auto r = run({udm_bin(), "overlaybd", "from-raw", t.file("raw.img"), t.file("layer.zfile"), "-z"});
  ASSERT_TRUE(r.ok()) << r.describe();
  // What the daemon's cache blocks hold, from the file itself.
  const uint64_t bs = remote::RemoteConfig{}.block_size;
  auto file = FileDevice::open(t.file("layer.zfile"), {.writable = false});
  ASSERT_TRUE(file.ok()) << file.status().message();
  const uint64_t zsize = (*file)->size();
  auto local = obd::ZFileDevice::open(*file);
  ASSERT_TRUE(local.ok()) << local.status().message();
  const auto& L = (*local)->layout();
  const uint64_t lsize = (*local)->size();
  std::vector<uint8_t> tb(obd::kLsmtHeaderSize);
  ASSERT_TRUE((*local)->read(lsize - tb.size(), tb).ok());
  auto trailer = obd::parse_lsmt_header(tb, "trailer");
  ASSERT_TRUE(trailer.ok()) << trailer.status().message();
  std::set<uint64_t> zfile_own, lsmt_own;
  auto blocks_of = [&](uint64_t off, uint64_t len, std::set<uint64_t>& out) {
    for (uint64_t b = off / bs; b <= (off + len - 1) / bs; b++) out.insert(b);
  };
  auto stored = [&](uint64_t off, uint64_t len) {
    uint64_t b0 = off / L.h.block_size, b1 = (off + len - 1) / L.h.block_size;
    blocks_of(L.starts[b0], L.starts[b1 + 1] - L.starts[b0], lsmt_own);
  };
  blocks_of(0, obd::kZFileHeaderSize, zfile_own);
  if (!(*local)->header().has(obd::kZfHeaderOverwrite))
    blocks_of(zsize - obd::kZFileHeaderSize, obd::kZFileHeaderSize, zfile_own);
  blocks_of(L.h.index_offset, L.h.index_size * 4, zfile_own);
  stored(0, obd::kLsmtHeaderSize);
  stored(lsize - obd::kLsmtHeaderSize, obd::kLsmtHeaderSize);
  stored(trailer->index_offset, trailer->index_size * 16);
  uint64_t only_lsmt = 0;
  for (uint64_t b : lsmt_own) only_lsmt += !zfile_own.count(b);
  ASSERT_GE(only_lsmt, 1u) << "the test needs index blocks the ZFile does not pin itself";
  std::set<uint64_t> pinned = zfile_own;
  pinned.insert(lsmt_own.begin(), lsmt_own.end());
  uint64_t pinned_bytes = 0;
  for (uint64_t b : pinned) pinned_bytes += std::min<uint64_t>(bs, zsize - b * bs);

  std::string err;
  auto reg = Registry::start(false, 0, &err);
  if (!reg) GTEST_SKIP() << err;
  std::string hex = reg->push_blob("test/pin", t.file("layer.zfile"));
  ASSERT_EQ(hex.size(), 64u);
  const std::string spec = "oci://" + reg->authority() + "/test/pin@sha256:" + hex;
  const std::vector<std::pair<std::string, std::string>> tables = {
      {"z", "0 " + std::to_string(lsize / 512) + " zfile " + spec},
      {"v", "0 " + std::to_string(lsize / 512) + " linear z 0"},
      {"l", "0 " + std::to_string(raw.size() / 512) + " lsmt v"}};
  const std::vector<std::string> dargs = {"--cache-dir", cache.path(), "--cache-size", "1M"};
  auto source_of = [](TestDaemon& d, const std::string& name) {
    auto info = d.udm({"info", name, "--json"});
    EXPECT_TRUE(info.ok()) << info.describe();
    auto j = nlohmann::json::parse(info.out, nullptr, false);
    return j.contains("sources") && !j["sources"].empty() ? j["sources"][0] : nlohmann::json();
  };
  {
    std::unique_ptr<TestDaemon> d;
    try {
      d = TestDaemon::start(true, false, dargs);
    } catch (const std::exception& e) {
      GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
    }
    for (auto& [name, table] : tables) {
      auto c = d->udm({"create", name, "--readonly", "--table", table});
      ASSERT_TRUE(c.ok()) << c.describe();
    }
    ASSERT_TRUE(wait_for_file(d->fuse_path("l")));
    expect_same(read_file(d->fuse_path("l")), raw, "l read whole through FUSE");
    // All of the blob again, through z: far more than the cache holds.
    auto zall = read_file(d->fuse_path("z"));
    ASSERT_EQ(zall.size(), lsize);
    EXPECT_EQ(std::memcmp(zall.data() + lsize - tb.size(), tb.data(), tb.size()), 0);
    // And z's first half again (l's reads hit the ZFile's memory cache of
    // decoded blocks; z's large ones do not): the blob's end, unless pinned,
    // is now the least recently used part of the cache.
    {
      std::ifstream in(d->fuse_path("z"), std::ios::binary);
      std::vector<uint8_t> half(lsize / 2);
      ASSERT_TRUE(in.read(reinterpret_cast<char*>(half.data()), std::streamsize(half.size())));
      EXPECT_TRUE(std::equal(half.begin(), half.end(), zall.begin()));
    }
    auto s = source_of(*d, "z");
    ASSERT_TRUE(s.is_object()) << s.dump();
    EXPECT_EQ(s["url"], spec);
    EXPECT_EQ(s["bytes_pinned"].get<uint64_t>(), pinned_bytes) << s.dump();
    EXPECT_LE(s["bytes_cached"].get<uint64_t>(), 1u << 20) << s.dump();
    EXPECT_GT(s["bytes_fetched"].get<uint64_t>(), zsize) << "the blob was not evicted and fetched again: " << s.dump();
    for (const char* name : {"l", "v", "z"}) ASSERT_TRUE(d->udm({"remove", name}).ok()) << name;
    EXPECT_EQ(d->stop(), 0);
  }
  reg.reset();  // the registry is gone
  auto d = TestDaemon::start(true, false, dargs);
  for (auto& [name, table] : tables) {
    auto c = d->udm({"create", name, "--readonly", "--table", table});
    ASSERT_TRUE(c.ok()) << "with the registry gone: " << c.describe();
  }
  auto s = source_of(*d, "z");
  EXPECT_EQ(s["bytes_fetched"].get<uint64_t>(), 0u) << s.dump();
  EXPECT_EQ(s["requests"].get<uint64_t>(), 0u) << s.dump();
  for (const char* name : {"l", "v", "z"}) ASSERT_TRUE(d->udm({"remove", name}).ok()) << name;
  EXPECT_EQ(d->stop(), 0);
}

}  // namespace
}  // namespace udm::test
