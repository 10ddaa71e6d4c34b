// Format v1: generator + parser + target round trips (random pairs with
// planted moves, swaps, cycles and edits; the shared OTA pairs), refusal of
// corrupt files and of a wrong old image, v0 still served.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "io/memory_device.h"
#include "update/format_v1.h"
#include "update_util.h"
#include "util/endian.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;

namespace {

struct V1Built {
  std::vector<uint8_t> old_img, new_img, diff;
  DiffV1Stats stats;
};

V1Built build_v1(std::vector<uint8_t> old_img, std::vector<uint8_t> new_img, uint32_t bs, uint32_t chunk_blocks = 4,
                 int level = 3, bool delta = true) {
  TempDir t;
  V1Built b;
  b.old_img = std::move(old_img);
  b.new_img = std::move(new_img);
  write_file(t.file("old"), b.old_img);
  write_file(t.file("new"), b.new_img);
  DiffV1Options o;
  o.block_size = bs;
  o.chunk_blocks = chunk_blocks;
  o.level = level;
  o.progress = false;
  o.delta = delta;
  auto st = make_diff_v1(t.file("old"), t.file("new"), t.file("diff"), o);
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  if (st.ok()) b.stats = *st;
  b.diff = read_file(t.file("diff"));
  return b;
}

// Serve without copy (every changed block computed), then copy back in the
// background while reading; the partition must end equal to new.
void check_v1(const V1Built& b, uint32_t bs) {
  {
    MapResolver r;
    auto sys = std::make_shared<MemoryDevice>(b.old_img);
    r.devs["sys"] = sys;
    r.devs["diff"] = std::make_shared<MemoryDevice>(b.diff);
    auto t = make_update(r, b.old_img.size(), /*bg=*/false);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    std::vector<uint8_t> got(b.new_img.size());
    size_t step = bs * 3 + 512;
    for (size_t off = 0; off < got.size(); off += step) {
      size_t n = std::min(step, got.size() - off);
      ASSERT_TRUE((*t)->read(off, std::span<uint8_t>(got.data() + off, n)).ok());
    }
    ASSERT_TRUE(got == b.new_img) << "computed view != new";
    EXPECT_TRUE(sys->contents() == b.old_img) << "no_bg_update must not write";
  }
  MapResolver r;
  auto sys = std::make_shared<MemoryDevice>(b.old_img);
  r.devs["sys"] = sys;
  r.devs["diff"] = std::make_shared<MemoryDevice>(b.diff);
  auto t = make_update(r, b.old_img.size());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  (*t)->resume();
  std::vector<uint8_t> got(b.new_img.size());
  for (int pass = 0; pass < 3; pass++) {  // reads race the copy-back
    ASSERT_TRUE((*t)->read(0, got).ok());
    ASSERT_TRUE(got == b.new_img) << "view != new during copy-back, pass " << pass;
  }
  std::string total = std::to_string(b.stats.ops);
  ASSERT_EQ(wait_copied(**t), total + " " + total);
  (*t)->presuspend();
  ASSERT_TRUE(sys->contents() == b.new_img) << "partition != new after copy-back";
  ASSERT_TRUE((*t)->read(0, got).ok());
  ASSERT_TRUE(got == b.new_img);
}

}  // namespace

TEST(UpdateV1, PlantedMovesSwapsCyclesEdits) {
  for (uint64_t seed = 1; seed <= 6; seed++) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto [o, n] = make_v1_pair(300, 4096, seed);
    auto b = build_v1(o, n, 4096);
    EXPECT_GT(b.stats.copy, 0u);
    EXPECT_GT(b.stats.zero, 0u);
    check_v1(b, 4096);
  }
}

TEST(UpdateV1, OpKindsAppear) {
  auto [o, n] = make_v1_pair(400, 4096, 11);
  auto b = build_v1(o, n, 4096);
  EXPECT_GT(b.stats.delta, 0u) << "in-place edits of random blocks should be DELTA";
  EXPECT_GT(b.stats.stash_ops, 0u) << "in-place edits read their own block";
  EXPECT_GT(b.stats.replace, 0u);
  EXPECT_GT(b.stats.copy, 0u);
  // Smaller than the changed blocks' raw size by far (random data: only COPY/DELTA make it small).
  EXPECT_LT(b.stats.diff_bytes, b.stats.changed_blocks * 4096 / 2);
  check_v1(b, 4096);
}

TEST(UpdateV1, BlockSizesChunkSizesNoDelta) {
  for (uint32_t bs : {512u, 1024u, 4096u}) {
    for (uint32_t cb : {1u, 3u, 16u}) {
      SCOPED_TRACE(fmt::format("bs {} chunk {}", bs, cb));
      auto [o, n] = make_v1_pair(200, bs, bs + cb);
      check_v1(build_v1(o, n, bs, cb), bs);
      check_v1(build_v1(o, n, bs, cb, 3, /*delta=*/false), bs);
    }
  }
}

TEST(UpdateV1, EmptyAndAllChanged) {
  auto img = random_bytes(64 * 4096, 5);
  auto b = build_v1(img, img, 4096);
  EXPECT_EQ(b.stats.changed_blocks, 0u);
  check_v1(b, 4096);
  auto other = random_bytes(64 * 4096, 6);
  auto c = build_v1(img, other, 4096);
  EXPECT_EQ(c.stats.changed_blocks, 64u);
  check_v1(c, 4096);
  // A full rotation by one block: one long cycle of COPYs.
  std::vector<uint8_t> rot(img.begin() + 4096, img.end());
  rot.insert(rot.end(), img.begin(), img.begin() + 4096);
  auto d = build_v1(img, rot, 4096);
  EXPECT_EQ(d.stats.copy + d.stats.replace, 64u);
  EXPECT_GE(d.stats.converted, 1u);
  EXPECT_LE(d.stats.converted, 2u);
  check_v1(d, 4096);
}

TEST(UpdateV1, WrongOldImageRefusedBeforeAnyWrite) {
  auto [o, n] = make_v1_pair(128, 4096, 3);
  auto b = build_v1(o, n, 4096);
  auto wrong = b.old_img;
  wrong[12345] ^= 1;
  MapResolver r;
  auto sys = std::make_shared<MemoryDevice>(wrong);
  r.devs["sys"] = sys;
  r.devs["diff"] = std::make_shared<MemoryDevice>(b.diff);
  auto t = make_update(r, wrong.size());
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("not the diff's old image"), std::string::npos) << t.status().message();
  EXPECT_TRUE(sys->contents() == wrong);
}

TEST(UpdateV1, CorruptFilesRefused) {
  auto [o, n] = make_v1_pair(200, 4096, 4);
  auto b = build_v1(o, n, 4096);
  ASSERT_TRUE(load_v1_bytes(b.diff).ok());
  auto hdr = decode_v1_header(b.diff);
  ASSERT_TRUE(hdr.ok());
  // Every byte of the CRC-covered header: a flip is refused.
  for (size_t i = 0; i < 160; i++) {
    auto d = b.diff;
    d[i] ^= 0x10;
    auto r = load_v1_bytes(d);
    ASSERT_FALSE(r.ok()) << "flip at " << i;
    EXPECT_FALSE(r.status().message().empty());
  }
  // Fields re-encoded with a valid CRC: each check names its field.
  auto with = [&](auto mutate, const char* want) {
    V1Header h = *hdr;
    mutate(h);
    auto d = b.diff;
    auto e = encode_v1_header(h);
    std::memcpy(d.data(), e.data(), 256);
    auto r = load_v1_bytes(d);
    ASSERT_FALSE(r.ok()) << want;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
  };
  with([](V1Header& h) { h.block_bits = 8; }, "block_bits");
  with([](V1Header& h) { h.chunk_blocks = 0; }, "chunk_blocks");
  with([](V1Header& h) { h.compression = "lz4"; }, "compression");
  with([](V1Header& h) { h.image_blocks = 0; }, "image_blocks");
  // One final operation per block plus at most one SAVE per block.
  with([](V1Header& h) { h.op_count = v1_max_ops(h.image_blocks) + 1; }, "op_count");
  with([](V1Header& h) { h.op_count = h.image_blocks + 1; }, "");  // allowed by the header, refused by the metadata
  with([](V1Header& h) { h.meta_offset += 1; }, "meta_offset");
  with([](V1Header& h) { h.data_offset += 1; }, "data_offset");
  with([](V1Header& h) { h.data_size += 1; }, "data");
  with([](V1Header& h) { h.meta_raw_size += 1; }, "meta");
  with([](V1Header& h) { h.op_count -= 1; }, "");
  with([](V1Header& h) { h.image_blocks = 10; }, "");
  // Truncations.
  for (size_t len : {size_t{0}, size_t{100}, size_t{511}, size_t{600}, b.diff.size() - 1}) {
    std::vector<uint8_t> d(b.diff.begin(), b.diff.begin() + static_cast<ptrdiff_t>(len));
    EXPECT_FALSE(load_v1_bytes(d).ok()) << "truncated to " << len;
  }
  // Bad checkpoint.
  {
    auto d = b.diff;
    d[kV1CkptOffset] = 0x55;
    EXPECT_FALSE(load_v1_bytes(d).ok());
  }
  // Flips in metadata and payload: refused on load or on decode, never a crash;
  // whatever the target serves then is computed without faults.
  std::mt19937_64 rng(9);
  int refused = 0;
  for (int i = 0; i < 300; i++) {
    auto d = b.diff;
    size_t at = kV1HeaderSize + rng() % (d.size() - kV1HeaderSize);
    d[at] ^= static_cast<uint8_t>(1 + rng() % 255);
    auto idx = load_v1_bytes(d);
    if (!idx.ok()) {
      refused++;
      continue;
    }
    MemoryDevice diffdev(d, true), olddev(b.old_img, true);
    std::vector<uint8_t> blk(4096);
    for (size_t k = 0; k < idx->ops.size(); k++)
      if (!v1_compute(diffdev, olddev, *idx, k, blk).ok()) {
        refused++;
        break;
      }
  }
  EXPECT_GT(refused, 0);
}

TEST(UpdateV1, V0StillServedAndDispatch) {
  auto [o, n] = make_pair_images(4096 * 100, 4096, 40, 8);
  TempDir t;
  write_file(t.file("old"), o);
  write_file(t.file("new"), n);
  DiffOptions opt;
  opt.progress = false;
  ASSERT_TRUE(make_diff(t.file("old"), t.file("new"), t.file("d0"), opt).ok());
  auto d0 = read_file(t.file("d0"));
  MemoryDevice m0(d0, true);
  auto v = diff_version(m0);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 0);
  MapResolver r;
  r.devs["sys"] = std::make_shared<MemoryDevice>(o);
  r.devs["diff"] = std::make_shared<MemoryDevice>(d0);
  auto tg = make_update(r, o.size(), false);
  ASSERT_TRUE(tg.ok());
  std::vector<uint8_t> got(n.size());
  ASSERT_TRUE((*tg)->read(0, got).ok());
  EXPECT_TRUE(got == n);
  auto d1 = d0;
  d1[8] = 7;
  MemoryDevice m1(d1, true);
  EXPECT_FALSE(diff_version(m1).ok());
}

TEST(UpdateV1, SharedOtaPairs) {
  const std::string dir = "/work/shared/data/ota-small";
  if (!std::filesystem::exists(dir + "/old.img.zst") || !have_tool("zstd")) GTEST_SKIP() << "no " << dir;
  TempDir t;
  for (const char* f : {"old", "new-rebuilt", "new-inplace"}) {
    auto r = run({"zstd", "-qd", dir + "/" + f + ".img.zst", "-o", t.file(std::string(f) + ".img")});
    ASSERT_TRUE(r.ok()) << r.describe();
  }
  auto old_img = read_file(t.file("old.img"));
  for (const char* f : {"new-rebuilt", "new-inplace"}) {
    SCOPED_TRACE(f);
    auto b = build_v1(old_img, read_file(t.file(std::string(f) + ".img")), 4096, 16, 3);
    EXPECT_GT(b.stats.copy, 1000u);
    check_v1(b, 4096);
  }
}
