// The verity target in process over memory devices: reads at any
// granularity, writes refused, corruption of a data block / a hash block /
// the salt / the root fails exactly the affected blocks with EIO, status V/C,
// each option as documented (ignore_corruption, the restart/panic latch,
// check_at_most_once, ignore_zero_blocks, *_on_error), I/O errors never turn
// into wrong data, the hash-block cache, table-line errors, and the pure
// format functions (superblock, geometry).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>

#include <map>
#include <random>
#include <thread>

#include "common/sys_util.h"
#include "device/mapped_device.h"
#include "device/table.h"
#include "io/memory_device.h"
#include "verity/format.h"
#include "verity/hash_pool.h"
#include "verity/signature.h"
#include "verity/target.h"

using namespace udm;
using namespace udm::verity;

namespace {

class MapResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool) override {
    auto it = devs.find(spec);
    if (it == devs.end()) return Status::Error(ENXIO, "no device " + spec);
    return it->second;
  }
};

// Fails reads that touch [bad_lo, bad_hi) and counts reads.
class ProbeDevice : public BlockDevice {
 public:
  explicit ProbeDevice(DevicePtr d) : d_(std::move(d)) {}
  uint64_t size() const override { return d_->size(); }
  uint64_t bad_lo = 0, bad_hi = 0;
  std::atomic<int> reads{0};

 protected:
  Status do_read(uint64_t o, std::span<uint8_t> b) override {
    reads++;
    if (o < bad_hi && o + b.size() > bad_lo) return IoError("injected read error");
    return d_->read(o, b);
  }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool f) override { return d_->write(o, b, f); }
  Status do_flush() override { return Status::Ok(); }

 private:
  DevicePtr d_;
};

constexpr uint64_t kBlocks = 1024;  // 4 MiB of 4 KiB blocks: 8 leaf hash blocks + 1 top block
const std::string kSaltHex = "a5a5a5a5000102030405060708090a0b";

struct World {
  std::vector<uint8_t> data;
  Params p;
  Tree tree;
  std::shared_ptr<MemoryDevice> data_dev, hash_dev;
  std::shared_ptr<ProbeDevice> data_probe;
  MapResolver res;

  explicit World(bool zeros = false, uint64_t blocks = kBlocks) {
    data = udm::test::random_bytes(blocks * 4096, 42);
    if (zeros)
      for (uint64_t b = 0; b < blocks; b += 3) std::fill(data.begin() + b * 4096, data.begin() + (b + 1) * 4096, 0);
    p.data_blocks = blocks;
    p.salt = *from_hex(kSaltHex, "salt");
    p.hash_start = 0;
    tree = *build_tree_mem(p, data);
    data_dev = std::make_shared<MemoryDevice>(data);
    hash_dev = std::make_shared<MemoryDevice>(tree.blocks.empty() ? std::vector<uint8_t>(4096) : tree.blocks);
    data_probe = std::make_shared<ProbeDevice>(data_dev);
    res.devs["data"] = data_probe;
    res.devs["hash"] = hash_dev;
  }
  std::string args(const std::string& opts = "", const std::string& salt = kSaltHex, std::string root = "") const {
    if (root.empty()) root = to_hex(tree.root);
    return fmt::format("1 data hash 4096 4096 {} 0 sha256 {} {}{}", p.data_blocks, root, salt,
                       opts.empty() ? "" : " " + opts);
  }
  Result<std::shared_ptr<MappedDevice>> make(const std::string& opts = "", const std::string& salt = kSaltHex,
                                             const std::string& root = "", uint64_t sectors = 0) {
    if (!sectors) sectors = p.data_blocks * 8;
    UDM_ASSIGN_OR_RETURN(auto spec, parse_table(fmt::format("0 {} verity {}", sectors, args(opts, salt, root))));
    UDM_ASSIGN_OR_RETURN(auto t, Table::build(spec, res, TargetRegistry::builtin(), "v"));
    return std::make_shared<MappedDevice>("v", t);
  }
  void flip_data(uint64_t off) {
    std::vector<uint8_t> b(1);
    ASSERT_TRUE(data_dev->read(off, b).ok());
    b[0] ^= 1;
    ASSERT_TRUE(data_dev->write(off, b).ok());
  }
  void flip_hash(uint64_t off) {
    std::vector<uint8_t> b(1);
    ASSERT_TRUE(hash_dev->read(off, b).ok());
    b[0] ^= 0x80;
    ASSERT_TRUE(hash_dev->write(off, b).ok());
  }
};

std::string status_of(MappedDevice& d) { return d.active_table()->segments()[0].target->status(); }

// Which blocks read with an error (reading each 4 KiB block on its own).
std::vector<uint64_t> failing_blocks(MappedDevice& d, const std::vector<uint8_t>& expect) {
  std::vector<uint64_t> bad;
  std::vector<uint8_t> b(4096);
  for (uint64_t i = 0; i < d.size() / 4096; i++) {
    Status st = d.read(i * 4096, b);
    if (!st.ok()) {
      EXPECT_EQ(st.code(), EIO) << st.message();
      bad.push_back(i);
    } else {
      EXPECT_TRUE(std::equal(b.begin(), b.end(), expect.begin() + i * 4096)) << "wrong data in block " << i;
    }
  }
  return bad;
}

std::vector<uint64_t> range(uint64_t a, uint64_t b) {
  std::vector<uint64_t> v;
  for (uint64_t i = a; i < b; i++) v.push_back(i);
  return v;
}

TEST(VerityTarget, ReadsAtAnyGranularityAndRefusesWrites) {
  World w;
  auto d = w.make();
  ASSERT_TRUE(d.ok()) << d.status().message();
  auto& dev = **d;
  EXPECT_TRUE(dev.caps().read_only);
  std::vector<uint8_t> all(dev.size());
  ASSERT_TRUE(dev.read(0, all).ok());
  EXPECT_EQ(all, w.data);
  std::mt19937_64 rng(1);
  for (int i = 0; i < 300; i++) {  // 512-byte requests, odd byte ranges
    uint64_t len = i % 2 ? 512 : 1 + rng() % 20000;
    uint64_t off = i % 2 ? (rng() % (dev.size() / 512)) * 512 : rng() % (dev.size() - len);
    std::vector<uint8_t> b(len);
    ASSERT_TRUE(dev.read(off, b).ok());
    ASSERT_TRUE(std::equal(b.begin(), b.end(), w.data.begin() + off)) << off << "+" << len;
  }
  std::vector<uint8_t> z(4096);
  EXPECT_EQ(dev.write(0, z).code(), EROFS);
  EXPECT_EQ(dev.write_zeroes(0, 4096).code(), EROFS);
  EXPECT_EQ(dev.trim(0, 4096).code(), EROFS);
  EXPECT_EQ(status_of(dev).substr(0, 4), "V - ");
  EXPECT_NE(status_of(dev).find("sig=none"), std::string::npos);
}

// Reads of 256 KiB and more hash their blocks on the pool: the result and the
// accounting must be those of a block-by-block pass.
TEST(VerityTarget, LargeReadsCheckEveryBlockInOrder) {
  const std::vector<uint64_t> flipped = {3, 300, 301, 1000};
  {
    World w;
    for (uint64_t b : flipped) w.flip_data(b * 4096 + 9);
    auto d = w.make("1 ignore_corruption");
    ASSERT_TRUE(d.ok());
    std::vector<uint8_t> all((*d)->size());
    ASSERT_TRUE((*d)->read(0, all).ok());
    std::vector<uint8_t> expect = w.data;
    for (uint64_t b : flipped) expect[b * 4096 + 9] ^= 1;
    EXPECT_EQ(all, expect);
    EXPECT_NE(status_of(**d).find("verified=1020 corrupt=4 "), std::string::npos) << status_of(**d);
  }
  {
    World w;
    for (uint64_t b : flipped) w.flip_data(b * 4096 + 9);
    auto d = w.make();
    ASSERT_TRUE(d.ok());
    std::vector<uint8_t> all((*d)->size());
    Status st = (*d)->read(0, all);
    EXPECT_EQ(st.code(), EIO);
    EXPECT_NE(st.message().find("data block 3 "), std::string::npos) << st.message();
    std::vector<uint8_t> mib(1 << 20);
    EXPECT_EQ((*d)->read(1 << 20, mib).code(), EIO) << "blocks 256..511 hold 300 and 301";
    EXPECT_TRUE((*d)->read(2 << 20, mib).ok()) << "blocks 512..767 are intact";
  }
}

TEST(VerityTarget, ConcurrentLargeReads) {
  World w;
  auto d = w.make();
  ASSERT_TRUE(d.ok());
  std::vector<std::thread> ts;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 6; t++)
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < 20; i++) {
        uint64_t len = (1 + rng() % 512) * 4096, off = (rng() % (kBlocks * 4096 - len + 1)) & ~uint64_t{511};
        std::vector<uint8_t> b(len);
        if (!(*d)->read(off, b).ok() || !std::equal(b.begin(), b.end(), w.data.begin() + off)) wrong++;
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(status_of(**d)[0], 'V');
}

TEST(VerityHashPool, EveryTaskOnceEvenWithMoreCallersThanWorkers) {
  HashPool pool(1);
  std::vector<std::thread> ts;
  std::atomic<int> errors{0};
  for (int t = 0; t < 8; t++)
    ts.emplace_back([&] {
      for (int r = 0; r < 200; r++) {
        unsigned n = 1 + r % 37;
        std::vector<std::atomic<int>> hits(n);
        pool.run(n, [&](unsigned i) { hits[i]++; });
        for (auto& h : hits)
          if (h != 1) errors++;
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors, 0);
  EXPECT_GE(HashPool::get().workers(), 1u);
}

TEST(VerityTarget, ShorterSegmentAndHashCache) {
  World w;
  auto d = w.make("", kSaltHex, "", 100 * 8);  // segment covers 100 of the 1024 blocks
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ((*d)->size(), 100u * 4096);
  std::vector<uint8_t> all((*d)->size());
  ASSERT_TRUE((*d)->read(0, all).ok());
  EXPECT_TRUE(std::equal(all.begin(), all.end(), w.data.begin()));
  // Leaf block 0 and the top block were loaded once each; reading again loads nothing.
  std::string s1 = status_of(**d);
  EXPECT_NE(s1.find("/2 "), std::string::npos) << s1;
  ASSERT_TRUE((*d)->read(0, all).ok());
  std::string s2 = status_of(**d);
  EXPECT_NE(s2.find("/2 "), std::string::npos) << s2;
  ASSERT_TRUE((*d)->active_table()->segments()[0].target->message({"drop-cache"}).ok());
  ASSERT_TRUE((*d)->read(0, all).ok());
  EXPECT_NE(status_of(**d).find("/4 "), std::string::npos) << status_of(**d);
  EXPECT_FALSE(w.make("", kSaltHex, "", 1025 * 8).ok()) << "segment longer than the covered data";
}

TEST(VerityTarget, CorruptDataBlockFailsOnlyThatBlock) {
  World w;
  w.flip_data(500 * 4096 + 77);
  auto d = w.make();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(failing_blocks(**d, w.data), std::vector<uint64_t>{500});
  std::vector<uint8_t> b(512);
  Status st = (*d)->read(500 * 4096 + 1024, b);  // a 512-byte request inside the bad block
  EXPECT_EQ(st.code(), EIO);
  EXPECT_NE(st.message().find("data block 500"), std::string::npos) << st.message();
  EXPECT_EQ(status_of(**d)[0], 'C');
}

TEST(VerityTarget, CorruptLeafHashBlockFailsItsBlocks) {
  World w;
  // Level 0 starts after the one top block; its block 3 covers data blocks 384..511.
  w.flip_hash(4096 * (1 + 3) + 40);
  auto d = w.make();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(failing_blocks(**d, w.data), range(384, 512));
  std::vector<uint8_t> b(4096);
  Status st = (*d)->read(400 * 4096, b);
  EXPECT_NE(st.message().find("metadata block 4"), std::string::npos) << st.message();
  EXPECT_EQ(status_of(**d)[0], 'C');
}

TEST(VerityTarget, CorruptTopBlockPaddingFailsEverything) {
  World w;
  w.flip_hash(4000);  // zero tail of the top block: covered by the root
  auto d = w.make();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(failing_blocks(**d, w.data), range(0, kBlocks));
}

TEST(VerityTarget, WrongSaltOrRootFailsEverything) {
  World w;
  auto d1 = w.make("", "a5a5a5a5000102030405060708090a0c");
  ASSERT_TRUE(d1.ok());
  EXPECT_EQ(failing_blocks(**d1, w.data), range(0, kBlocks));
  std::string root = to_hex(w.tree.root);
  root[63] = root[63] == '0' ? '1' : '0';
  auto d2 = w.make("", kSaltHex, root);
  ASSERT_TRUE(d2.ok());
  EXPECT_EQ(failing_blocks(**d2, w.data), range(0, kBlocks));
  EXPECT_EQ(status_of(**d2)[0], 'C');
}

TEST(VerityTarget, IgnoreCorruptionReturnsTheData) {
  World w;
  w.flip_data(10 * 4096);
  auto d = w.make("1 ignore_corruption");
  ASSERT_TRUE(d.ok());
  std::vector<uint8_t> b(4096);
  ASSERT_TRUE((*d)->read(10 * 4096, b).ok());
  EXPECT_EQ(b[0], static_cast<uint8_t>(w.data[10 * 4096] ^ 1)) << "the corrupted bytes are returned";
  EXPECT_EQ(status_of(**d)[0], 'C');
  EXPECT_NE(status_of(**d).find("corrupt=1"), std::string::npos);
}

TEST(VerityTarget, RestartAndPanicLatch) {
  for (const char* opt : {"1 restart_on_corruption", "1 panic_on_corruption"}) {
    World w;
    w.flip_data(10 * 4096);
    auto d = w.make(opt);
    ASSERT_TRUE(d.ok());
    std::vector<uint8_t> b(4096);
    ASSERT_TRUE((*d)->read(0, b).ok()) << "good reads work before the corruption";
    EXPECT_EQ((*d)->read(10 * 4096, b).code(), EIO);
    EXPECT_EQ((*d)->read(0, b).code(), EIO) << "after the latch every read fails";
    EXPECT_NE(status_of(**d).find("latched"), std::string::npos);
  }
}

TEST(VerityTarget, CheckAtMostOnceMissesLaterTampering) {
  for (bool once : {true, false}) {
    World w;
    auto d = w.make(once ? "1 check_at_most_once" : "");
    ASSERT_TRUE(d.ok());
    std::vector<uint8_t> b(4096);
    ASSERT_TRUE((*d)->read(7 * 4096, b).ok());
    w.flip_data(7 * 4096 + 5);  // tampered after the first (verified) read
    Status st = (*d)->read(7 * 4096, b);
    if (once) {
      EXPECT_TRUE(st.ok()) << "check_at_most_once does not re-verify (the documented trade-off)";
      EXPECT_NE(b[5], w.data[7 * 4096 + 5]);
    } else {
      EXPECT_EQ(st.code(), EIO);
    }
  }
}

TEST(VerityTarget, IgnoreZeroBlocksDoesNotReadThem) {
  World w(/*zeros=*/true);
  w.data_probe->bad_lo = 3 * 4096;  // block 3 is a zero block: reading it would fail
  w.data_probe->bad_hi = 4 * 4096;
  auto d = w.make("1 ignore_zero_blocks");
  ASSERT_TRUE(d.ok());
  std::vector<uint8_t> b(4096, 0xff);
  ASSERT_TRUE((*d)->read(3 * 4096, b).ok());
  EXPECT_TRUE(std::all_of(b.begin(), b.end(), [](uint8_t c) { return c == 0; }));
  ASSERT_TRUE((*d)->read(4 * 4096, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), w.data.begin() + 4 * 4096));
  auto plain = w.make();
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->read(3 * 4096, b).code(), EIO) << "without the option the block is read";
}

TEST(VerityTarget, IoErrorsAreEioNeverWrongData) {
  World w;
  w.data_probe->bad_lo = 20 * 4096 + 100;
  w.data_probe->bad_hi = 20 * 4096 + 101;
  auto d = w.make();
  ASSERT_TRUE(d.ok());
  std::vector<uint8_t> b(3 * 4096);
  EXPECT_EQ((*d)->read(19 * 4096, b).code(), EIO);
  EXPECT_EQ(status_of(**d)[0], 'V') << "an I/O error is not a corruption";
  auto latch = w.make("1 restart_on_error");
  ASSERT_TRUE(latch.ok());
  EXPECT_EQ((*latch)->read(19 * 4096, b).code(), EIO);
  EXPECT_EQ((*latch)->read(0, b).code(), EIO) << "restart_on_error latches";
  // Errors from the hash device too.
  World w2;
  auto hp = std::make_shared<ProbeDevice>(w2.hash_dev);
  hp->bad_lo = 4096 * 2;
  hp->bad_hi = 4096 * 2 + 1;
  w2.res.devs["hash"] = hp;
  auto d2 = w2.make();
  ASSERT_TRUE(d2.ok());
  auto bad = failing_blocks(**d2, w2.data);
  EXPECT_EQ(bad, range(128, 256));
}

TEST(VerityTarget, SingleBlockTreeUsesTheRoot) {
  World w(false, 1);
  auto d = w.make();
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::vector<uint8_t> b(4096);
  ASSERT_TRUE((*d)->read(0, b).ok());
  EXPECT_EQ(b, w.data);
  w.flip_data(9);
  EXPECT_EQ((*d)->read(0, b).code(), EIO);
}

TEST(VerityTable, ErrorsAreClear) {
  World w;
  struct Bad {
    std::string args, want;
  } bad[] = {
      {"2 data hash 4096 4096 1024 0 sha256 " + to_hex(w.tree.root) + " -", "<version>"},
      {"1 data hash 8192 4096 1024 0 sha256 " + to_hex(w.tree.root) + " -", "page"},
      {"1 data hash 4096 3000 1024 0 sha256 " + to_hex(w.tree.root) + " -", "power of two"},
      {"1 data hash 4096 4096 1024 0 nosuch " + to_hex(w.tree.root) + " -", "OpenSSL"},
      {"1 data hash 4096 4096 1024 0 sha256 abcd -", "hex digits"},
      {"1 data hash 4096 4096 1024 0 sha256 " + to_hex(w.tree.root) + " xyzw", "not hex"},
      {w.args("2 ignore_corruption"), "announced"},
      {w.args("1 frobnicate"), "unknown option"},
      {w.args("2 ignore_corruption restart_on_corruption"), "conflicting"},
      {w.args("8 use_fec_from_device /dev/x fec_roots 2 fec_blocks 10 fec_start 10"), "not supported"},
      {w.args("1 root_hash_sig_key_desc"), "needs a value"},
      {w.args("1 ignore_corruption extra"), "extra"},
      {"1 data hash 4096 4096 0 0 sha256 " + to_hex(w.tree.root) + " -", "num_data_blocks"},
      {"1 data hash 4096 4096 1024", "missing"},
  };
  for (auto& b : bad) {
    auto spec = parse_table("0 8 verity " + b.args);
    ASSERT_TRUE(spec.ok());
    auto t = Table::build(*spec, w.res, TargetRegistry::builtin(), "v");
    ASSERT_FALSE(t.ok()) << b.args;
    EXPECT_NE(t.status().message().find(b.want), std::string::npos) << b.args << " -> " << t.status().message();
  }
  // Hash device too short for the tree.
  w.res.devs["hash"] = std::make_shared<MemoryDevice>(std::vector<uint8_t>(4096 * 8));
  auto short_hash = w.make();
  ASSERT_FALSE(short_hash.ok());
  EXPECT_NE(short_hash.status().message().find("hash device too small"), std::string::npos);
}

TEST(VerityTable, RoundTripsInCryptsetupOrder) {
  World w;
  auto t = parse_table_args(udm::test::sh("true").ok()
                                ? std::vector<std::string>{"1", "d", "h", "4096", "4096", "1024", "1", "sha256",
                                                           to_hex(w.tree.root), "-", "5", "check_at_most_once",
                                                           "ignore_zero_blocks", "panic_on_corruption",
                                                           "root_hash_sig_key_desc", "k1"}
                                : std::vector<std::string>{});
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(format_table_args(*t), "1 d h 4096 4096 1024 1 sha256 " + to_hex(w.tree.root) +
                                       " - 5 panic_on_corruption ignore_zero_blocks check_at_most_once "
                                       "root_hash_sig_key_desc k1");
}

TEST(VerityFormat, SuperblockRoundTripAndRefusals) {
  Superblock sb;
  sb.uuid = *parse_uuid("12345678-1234-1234-1234-123456789abc");
  sb.algorithm = "sha256";
  sb.data_block_size = 4096;
  sb.hash_block_size = 4096;
  sb.data_blocks = 2048;
  sb.salt = *from_hex(kSaltHex, "s");
  auto b = encode_superblock(sb);
  EXPECT_EQ(memcmp(b.data(), "verity\0\0\1\0\0\0\1\0\0\0\x12\x34\x56\x78", 20), 0);
  EXPECT_EQ(b[72], 0x00);
  EXPECT_EQ(b[73], 0x08);  // 2048 little-endian
  EXPECT_EQ(b[80], 16);
  auto back = decode_superblock(b);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, sb);
  struct Mut {
    size_t off;
    uint8_t v;
    const char* want;
  } muts[] = {{0, 'x', "signature"},     {8, 2, "version"},          {12, 2, "hash type"},
              {32, 'x', "not supported"}, {33, 'H', "lowercase"}, {63, 'a', "not terminated"}, {65, 0x11, "block sizes"},
              {72, 0, "zero data"},       {81, 2, "salt size"},       {84, 1, "padding"},
              {200, 1, "after the salt"}, {400, 1, "padding at 344"}};
  for (auto& m : muts) {
    auto c = b;
    if (m.off == 72) memset(c.data() + 72, 0, 8);
    else c[m.off] = m.v;
    if (m.off == 63) memset(c.data() + 32, 'a', 32);
    auto r = decode_superblock(c);
    ASSERT_FALSE(r.ok()) << m.off;
    SCOPED_TRACE(m.off);
    EXPECT_NE(r.status().message().find(m.want), std::string::npos) << r.status().message();
  }
  EXPECT_FALSE(decode_superblock(std::span(b.data(), 100)).ok());
}

TEST(VerityFormat, GeometryAndHashStart) {
  Params p;
  p.data_blocks = 2048;
  auto g = compute_geometry(p);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->levels, 2);
  EXPECT_EQ(g->tree_blocks, 17u);
  EXPECT_EQ(g->level_start[1], 0u);
  EXPECT_EQ(g->level_start[0], 1u);
  p.data_blocks = 1;
  EXPECT_EQ(compute_geometry(p)->levels, 0);
  p.data_blocks = 129;
  EXPECT_EQ(compute_geometry(p)->tree_blocks, 3u);
  p.algorithm = "sha1";
  p.data_blocks = 5000;
  p.hash_block_size = 512;  // 16 sha1 digests (32-byte entries) per block
  g = compute_geometry(p);
  EXPECT_EQ(g->entry_size, 32u);
  EXPECT_EQ(g->levels, 4);
  p.hash_type = 0;
  EXPECT_EQ(compute_geometry(p)->entry_size, 20u);
  p.algorithm = "sha512";
  p.hash_block_size = 64;
  EXPECT_FALSE(compute_geometry(p).ok());
  EXPECT_EQ(*hash_start_for_offset(0, 4096, true), 1u);
  EXPECT_EQ(*hash_start_for_offset(8388608 + 512, 4096, true), 2049u);
  EXPECT_EQ(*hash_start_for_offset(8192, 4096, false), 2u);
  EXPECT_FALSE(hash_start_for_offset(1536, 4096, false).ok()) << "veritysetup truncates; udm refuses";
  EXPECT_FALSE(hash_start_for_offset(100, 4096, true).ok());
}

}  // namespace
