#include <gtest/gtest.h>

#include <cstring>

#include "io/memory_device.h"
#include "update/codec.h"
#include "update_util.h"
#include "util/endian.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;

namespace {

struct Built {
  std::vector<uint8_t> old_img, new_img, diff;
  DiffStats stats;
};

Built build(uint64_t size, uint32_t bs, int changes, uint64_t seed, const std::string& algo,
            uint32_t chunk_blocks, bool tail = true) {
  TempDir t;
  Built b;
  std::tie(b.old_img, b.new_img) = make_pair_images(size, bs, changes, seed, tail);
  write_file(t.file("old"), b.old_img);
  write_file(t.file("new"), b.new_img);
  DiffOptions o;
  o.algorithm = algo;
  o.block_size = bs;
  o.chunk_blocks = chunk_blocks;
  o.progress = false;
  auto st = make_diff(t.file("old"), t.file("new"), t.file("diff"), o);
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  if (st.ok()) b.stats = *st;
  b.diff = read_file(t.file("diff"));
  return b;
}

// Serve `b` through the update target (no background copy) and read it all
// back in odd-sized pieces; also apply offline; both must equal new.
void check_round_trip(const Built& b, uint32_t bs) {
  MapResolver r;
  auto sys = std::make_shared<MemoryDevice>(b.old_img);
  r.devs["sys"] = sys;
  r.devs["diff"] = std::make_shared<MemoryDevice>(b.diff);
  auto t = make_update(r, b.old_img.size(), /*bg=*/false);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  (*t)->resume();
  std::vector<uint8_t> got(b.new_img.size());
  size_t step = bs * 3 + 512;  // crosses block and chunk boundaries
  for (size_t off = 0; off < got.size(); off += step) {
    size_t n = std::min(step, got.size() - off);
    ASSERT_TRUE((*t)->read(off, std::span<uint8_t>(got.data() + off, n)).ok());
  }
  ASSERT_EQ(got, b.new_img);
  EXPECT_EQ(sys->contents(), b.old_img) << "no_bg_update must not touch the system device";
  // Writes refused, clearly.
  std::vector<uint8_t> w(512);
  Status s = (*t)->write(0, w);
  EXPECT_EQ(s.code(), EROFS);
  EXPECT_NE(s.message().find("read-only"), std::string::npos);
}

}  // namespace

TEST(UpdateFormat, SuperblockEncodingIsTheSeedsLayout) {
  Superblock sb;
  sb.block_bits = 12;
  sb.chunk_blocks = 16;
  sb.compression = "zstd";
  sb.dir_offset = 0x1122334455;
  sb.dir_compressed_size = 77;
  sb.dir_n = 5;
  auto b = encode_superblock(sb);
  EXPECT_EQ(std::memcmp(b.data(), "update\0\0", 8), 0);
  EXPECT_EQ(b[8], 0);    // version
  EXPECT_EQ(b[9], 12);   // block_bits
  EXPECT_EQ(le32(&b[12]), 16u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(&b[16])), "zstd");
  EXPECT_EQ(le64(&b[32]), 0x1122334455u);
  EXPECT_EQ(le64(&b[40]), 77u);
  EXPECT_EQ(le64(&b[48]), 5u);
  uint8_t e[16];
  encode_entry(e, Entry{0x0000123456789abcull, 0x0000fedcba987654ull, 9});
  EXPECT_EQ(le32(e), 0x56789abcu);      // dest_lo
  EXPECT_EQ(le16(e + 4), 0x1234u);      // dest_hi
  EXPECT_EQ(le16(e + 6), 0xfedcu);      // src_hi
  EXPECT_EQ(le32(e + 8), 0xba987654u);  // src_lo
  EXPECT_EQ(le32(e + 12), 9u);
  auto back = decode_entry(e);
  EXPECT_EQ(back.dest, 0x0000123456789abcull);
  EXPECT_EQ(back.src, 0x0000fedcba987654ull);
}

TEST(UpdateCodec, KernelStreamFormats) {
  auto data = random_bytes(10000, 3);
  data.insert(data.end(), 20000, 0);
  for (const char* n : {"none", "zstd", "lz4", "deflate"}) {
    auto a = algo_from_name(n);
    ASSERT_TRUE(a.ok());
    auto c = compress(*a, data, 0);
    ASSERT_TRUE(c.ok()) << n;
    std::vector<uint8_t> out(data.size());
    auto d = decompress(*a, *c, out);
    ASSERT_TRUE(d.ok()) << n << ": " << d.status().to_string();
    EXPECT_EQ(*d, data.size());
    EXPECT_EQ(out, data);
  }
  // zstd frames start with the frame magic; raw deflate has no zlib header.
  auto z = compress(Algo::Zstd, data, 0).value();
  EXPECT_EQ(le32(z.data()), 0xFD2FB528u);
  auto df = compress(Algo::Deflate, data, 0).value();
  EXPECT_FALSE(df[0] == 0x78 && (df[0] * 256 + df[1]) % 31 == 0) << "looks like a zlib header";
  EXPECT_FALSE(algo_from_name("lzo").ok());
}

TEST(UpdateRoundTrip, AlgorithmsBlockSizesChunkSizes) {
  for (const char* algo : {"none", "zstd", "lz4", "deflate"})
    for (uint32_t bs : {512u, 1024u, 4096u})
      for (uint32_t cb : {1u, 3u, 16u}) {
        SCOPED_TRACE(std::string(algo) + " bs=" + std::to_string(bs) + " chunk=" + std::to_string(cb));
        auto b = build(bs * 200, bs, 40, bs + cb, algo, cb);
        auto idx = load_diff_bytes(b.diff);
        ASSERT_TRUE(idx.ok()) << idx.status().to_string();
        EXPECT_EQ(idx->entries.size(), b.stats.changed_blocks);
        EXPECT_EQ(idx->entries.back().dest, 199u) << "the tail block changed";
        check_round_trip(b, bs);
      }
}

TEST(UpdateRoundTrip, EmptyDiffAndAllBlocksChanged) {
  {
    TempDir t;
    auto img = random_bytes(64 << 10, 1);
    write_file(t.file("a"), img);
    DiffOptions o;
    o.progress = false;
    ASSERT_TRUE(make_diff(t.file("a"), t.file("a"), t.file("d"), o).ok());
    auto idx = load_diff_bytes(read_file(t.file("d")));
    ASSERT_TRUE(idx.ok()) << idx.status().to_string();
    EXPECT_EQ(idx->sb.dir_n, 1u);
    EXPECT_TRUE(idx->entries.empty());
    Built b{img, img, read_file(t.file("d")), {}};
    check_round_trip(b, 4096);
  }
  {
    Built b;
    TempDir t;
    b.old_img = random_bytes(128 << 10, 2);
    b.new_img = random_bytes(128 << 10, 3);
    write_file(t.file("o"), b.old_img);
    write_file(t.file("n"), b.new_img);
    DiffOptions o;
    o.progress = false;
    o.chunk_blocks = 5;  // 32 blocks: last chunk is short
    auto st = make_diff(t.file("o"), t.file("n"), t.file("d"), o);
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st->changed_blocks, 32u);
    EXPECT_EQ(st->chunks, 7u);
    b.diff = read_file(t.file("d"));
    check_round_trip(b, 4096);
  }
}

TEST(UpdateRoundTrip, PropertyRandomImages) {
  for (uint64_t seed = 10; seed < 22; seed++) {
    std::mt19937_64 rng(seed);
    uint32_t bs = 512u << (rng() % 4);
    uint64_t size = bs * (1 + rng() % 300);
    int changes = static_cast<int>(rng() % 120);
    uint32_t cb = 1 + static_cast<uint32_t>(rng() % 20);
    const char* algos[] = {"none", "zstd", "lz4", "deflate"};
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto b = build(size, bs, changes, seed, algos[rng() % 4], cb, rng() % 2);
    check_round_trip(b, bs);
  }
}

TEST(UpdateGenerator, RefusesMismatchedImages) {
  TempDir t;
  write_file(t.file("a"), random_bytes(8192, 1));
  write_file(t.file("b"), random_bytes(12288, 1));
  write_file(t.file("c"), random_bytes(8192 + 512, 1));
  DiffOptions o;
  o.progress = false;
  auto r = make_diff(t.file("a"), t.file("b"), t.file("d"), o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("images differ in size"), std::string::npos);
  r = make_diff(t.file("c"), t.file("c"), t.file("d"), o);
  EXPECT_NE(r.status().message().find("not a multiple of the block size"), std::string::npos);
  o.block_size = 3000;
  r = make_diff(t.file("a"), t.file("a"), t.file("d"), o);
  EXPECT_NE(r.status().message().find("power of two"), std::string::npos);
  o.block_size = 4096;
  o.algorithm = "lzma";
  r = make_diff(t.file("a"), t.file("a"), t.file("d"), o);
  EXPECT_NE(r.status().message().find("unsupported compression"), std::string::npos);
}

TEST(UpdateCorrupt, EveryHeaderFieldTruncationAndBadData) {
  auto b = build(4096 * 100, 4096, 30, 5, "zstd", 4);
  ASSERT_TRUE(load_diff_bytes(b.diff).ok());
  auto expect_error = [&](std::vector<uint8_t> d, const std::string& want) {
    auto r = load_diff_bytes(d);
    ASSERT_FALSE(r.ok()) << "accepted a diff with " << want;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
  };
  auto mut = [&](auto f) {
    auto d = b.diff;
    f(d);
    return d;
  };
  expect_error(mut([](auto& d) { d[0] = 'X'; }), "magic");
  expect_error(mut([](auto& d) { d[8] = 7; }), "version");
  expect_error(mut([](auto& d) { d[9] = 8; }), "block_bits");
  expect_error(mut([](auto& d) { d[9] = 32; }), "block_bits");
  expect_error(mut([](auto& d) { put_le32(&d[12], 0); }), "chunk_blocks");
  expect_error(mut([](auto& d) { put_le32(&d[12], 1u << 30); }), "chunk_blocks");
  expect_error(mut([](auto& d) { std::memset(&d[16], 'z', 16); }), "compression");
  expect_error(mut([](auto& d) { std::memcpy(&d[16], "lzma\0", 5); }), "compression");
  expect_error(mut([](auto& d) { std::memcpy(&d[16], "lz4\0", 4); }), "directory");  // wrong algorithm
  expect_error(mut([](auto& d) { put_le64(&d[32], d.size()); }), "dir_offset");
  expect_error(mut([](auto& d) { put_le64(&d[32], 8); }), "dir_offset");
  expect_error(mut([](auto& d) { put_le64(&d[40], le64(&d[40]) + 4096); }), "dir_compressed_size");
  expect_error(mut([](auto& d) { put_le64(&d[48], 0); }), "dir_n");
  expect_error(mut([](auto& d) { put_le64(&d[48], le64(&d[48]) + 1); }), "directory");
  expect_error(mut([](auto& d) { put_le64(&d[48], 1ull << 40); }), "dir_n");
  expect_error(std::vector<uint8_t>(b.diff.begin(), b.diff.begin() + 40), "shorter than the 64-byte superblock");
  expect_error(std::vector<uint8_t>(b.diff.begin(), b.diff.end() - 10), "outside");
  expect_error(std::vector<uint8_t>(), "shorter");
  // Hand-built directories: non-monotonic destinations, offsets too high,
  // sources going backwards or outside the file, chunks over the directory.
  auto with_dir = [&](std::vector<Entry> es) {
    auto idx = load_diff_bytes(b.diff).value();
    std::vector<uint8_t> d(b.diff.begin(), b.diff.begin() + static_cast<ptrdiff_t>(idx.sb.dir_offset));
    std::vector<uint8_t> dir(es.size() * 16);
    for (size_t i = 0; i < es.size(); i++) encode_entry(&dir[i * 16], es[i]);
    auto c = compress(Algo::Zstd, dir, 0).value();
    put_le64(&d[40], c.size());
    put_le64(&d[48], es.size());
    d.insert(d.end(), c.begin(), c.end());
    return d;
  };
  uint64_t s0 = 4096;
  expect_error(with_dir({{5, s0, 0}, {5, s0, 1}, {9, s0 + 100, 0}}), "destination");
  expect_error(with_dir({{5, s0, 4}, {9, s0 + 100, 0}}), "offset 4 is not below chunk_blocks");
  expect_error(with_dir({{5, s0 + 100, 0}, {6, s0, 0}, {9, s0 + 200, 0}}), "goes backwards");
  expect_error(with_dir({{5, s0, 0}, {9, 1ull << 40, 0}}), "outside");
  expect_error(with_dir({{5, 10, 0}, {9, s0, 0}}), "outside");
  auto idx = load_diff_bytes(b.diff).value();
  expect_error(with_dir({{5, s0, 0}, {9, idx.sb.dir_offset + 5, 0}}), "overlaps the directory");
  // Bad compressed chunk data: the index loads, the chunk read fails clearly,
  // and the target returns EUCLEAN/EIO for that block instead of garbage.
  auto bad = b.diff;
  for (uint64_t i = idx.chunks[0].src + 4; i < idx.chunks[0].src + 40; i++) bad[i] ^= 0xa5;
  auto bidx = load_diff_bytes(bad);
  ASSERT_TRUE(bidx.ok());
  MemoryDevice bd(bad);
  std::vector<uint8_t> scratch, out(bidx->chunk_bytes());
  Status s = read_chunk(bd, *bidx, 0, scratch, out);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("chunk at"), std::string::npos) << s.message();
  MapResolver r;
  r.devs["sys"] = std::make_shared<MemoryDevice>(b.old_img);
  r.devs["diff"] = std::make_shared<MemoryDevice>(bad);
  auto t = make_update(r, b.old_img.size(), false);
  ASSERT_TRUE(t.ok());
  std::vector<uint8_t> blk(4096);
  EXPECT_FALSE((*t)->read(bidx->entries[0].dest * 4096, blk).ok());
}

TEST(UpdateTarget, TableArgumentsAreChecked) {
  auto b = build(4096 * 50, 4096, 10, 9, "lz4", 4);
  MapResolver r;
  r.devs["sys"] = std::make_shared<MemoryDevice>(b.old_img);
  r.devs["diff"] = std::make_shared<MemoryDevice>(b.diff);
  r.devs["small"] = std::make_shared<MemoryDevice>(std::vector<uint8_t>(4096 * 10));
  TargetParams p;
  p.type = "update";
  p.length = b.old_img.size();
  p.resolver = &r;
  // The table syntax is `update <system_dev> <diff_dev> <#opt_args> [no_bg_update]`
  // (device/target_args.h reads it; every error names the argument).
  auto msg = [&](std::vector<std::string> args) {
    p.args = std::move(args);
    auto t = make_update_target(p);
    EXPECT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), EINVAL);
    return t.status().message();
  };
  EXPECT_EQ(msg({"sys"}), "update: missing <diff_dev>");
  EXPECT_NE(msg({"sys", "diff"}).find("update: <#opt_args>: missing"), std::string::npos);
  EXPECT_NE(msg({"sys", "diff", "1"}).find("update: <#opt_args>: says 1 but 0 optional arguments follow"),
            std::string::npos);
  EXPECT_NE(msg({"sys", "diff", "x"}).find("<#opt_args>: 'x' is not a decimal number"), std::string::npos);
  EXPECT_NE(msg({"sys", "diff", "1", "fast"}).find("unknown optional argument 'fast' (known: no_bg_update, paused, throttle=<value>)"),
            std::string::npos);
  EXPECT_NE(msg({"sys", "diff", "2", "no_bg_update", "no_bg_update"}).find("no_bg_update: given twice"),
            std::string::npos);
  p.args = {"small", "diff", "0"};
  EXPECT_NE(make_update_target(p).status().message().find("larger than the system device"), std::string::npos);
  p.args = {"sys", "sys", "0"};
  EXPECT_NE(make_update_target(p).status().message().find("magic"), std::string::npos);
  p.length = 4096 * 5;
  p.args = {"sys", "diff", "0"};
  EXPECT_NE(make_update_target(p).status().message().find("has only 5 blocks"), std::string::npos);
}

TEST(UpdateTarget, BackgroundCopyConcurrentReadersSuspendResume) {
  auto b = build(4096 * 2000, 4096, 900, 11, "zstd", 8);
  MapResolver r;
  auto sys = std::make_shared<MemoryDevice>(b.old_img);
  auto diff = std::make_shared<MemoryDevice>(b.diff);
  r.devs["sys"] = sys;
  r.devs["diff"] = diff;
  auto t = make_update(r, b.old_img.size());
  ASSERT_TRUE(t.ok());
  (*t)->resume();
  // Readers race the copy: every read is the new image.
  std::vector<std::thread> readers;
  std::atomic<int> bad{0};
  for (int k = 0; k < 4; k++)
    readers.emplace_back([&, k] {
      std::mt19937_64 rng(k);
      std::vector<uint8_t> buf(16384);
      for (int i = 0; i < 400; i++) {
        uint64_t off = (rng() % (b.new_img.size() / 512 - 32)) * 512;
        if (!(*t)->read(off, buf).ok() || std::memcmp(buf.data(), b.new_img.data() + off, buf.size())) bad++;
      }
    });
  (*t)->presuspend();  // stops the copy mid-way (or after it finished)
  std::string mid = (*t)->status();
  (*t)->resume();
  for (auto& th : readers) th.join();
  EXPECT_EQ(bad.load(), 0);
  std::string fin = wait_copied(**t);
  EXPECT_EQ(fin, std::to_string(b.stats.changed_blocks) + " " + std::to_string(b.stats.changed_blocks)) << "mid " << mid;
  EXPECT_EQ(sys->contents(), b.new_img);
  // Progress was recorded in the diff: a new target starts done.
  auto idx = load_diff(*diff);
  ASSERT_TRUE(idx.ok());
  EXPECT_EQ(idx->recorded_progress(), b.stats.changed_blocks);
  auto t2 = make_update(r, b.old_img.size());
  ASSERT_TRUE(t2.ok());
  EXPECT_EQ((*t2)->status(), fin);
}
