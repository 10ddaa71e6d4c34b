// Format v1: generator + parser + target round trips (random pairs with
// planted moves, swaps, cycles and edits; the shared OTA pairs), refusal of
// corrupt files and of a wrong old image, v0 still served.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include <zlib.h>
#include <zstd.h>

#include "io/memory_device.h"
#include "update/apply_v1.h"
#include "update/format_io.h"
#include "update/format_v1_io.h"
#include "update_util.h"
#include "util/endian.h"
#include "v1_sweep.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;

namespace {

struct V1Built {
  std::vector<uint8_t> old_img, new_img, diff;
  DiffV1Stats stats;
};

V1Built build_v1(std::vector<uint8_t> old_img, std::vector<uint8_t> new_img, uint32_t bs, uint32_t chunk_blocks = 4,
                 int level = 3, bool delta = true, uint64_t verity_at = UINT64_MAX) {
  TempDir t;
  V1Built b;
  b.old_img = std::move(old_img);
  b.new_img = std::move(new_img);
  DiffV1Options o;
  o.block_size = bs;
  o.chunk_blocks = chunk_blocks;
  o.level = level;
  o.progress = false;
  o.delta = delta;
  o.verity_hash_offset = verity_at;
  auto st = make_v1_diff(t, b.old_img, b.new_img, o);
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  if (st.ok()) b.stats = *st;
  b.diff = read_file(t.file("diff"));
  return b;
}

// The system device: the old image, then (if the new image is larger, plus
// `extra` blocks) bytes no image has; the update must never show them.
std::vector<uint8_t> system_device(const V1Built& b, uint32_t bs, uint64_t extra = 0) {
  std::vector<uint8_t> sys = b.old_img;
  uint64_t len = std::max(b.old_img.size(), b.new_img.size()) + extra * bs;
  auto junk = random_bytes(len - sys.size(), 4242);
  sys.insert(sys.end(), junk.begin(), junk.end());
  return sys;
}

// Offline apply in process (what `udm update-apply` runs): on the system
// device, every block computed first, then written; the first new-image
// bytes must equal new, the rest is untouched.
void check_apply(const V1Built& b, uint32_t bs) {
  auto sys0 = system_device(b, bs, 2);
  MemoryDevice diff(b.diff, true), sys(sys0);
  auto idx = load_v1(diff);
  ASSERT_TRUE(idx.ok()) << idx.status().to_string();
  auto blocks = v1_compute_all(diff, sys, *idx);
  ASSERT_TRUE(blocks.ok()) << blocks.status().to_string();
  ASSERT_TRUE(sys.contents() == sys0) << "computing must not write";
  ASSERT_TRUE(v1_write_all(sys, *idx, *blocks).ok());
  auto got = sys.contents();
  ASSERT_TRUE(std::equal(b.new_img.begin(), b.new_img.end(), got.begin())) << "applied offline != new";
  ASSERT_TRUE(std::equal(sys0.begin() + static_cast<ptrdiff_t>(b.new_img.size()), sys0.end(),
                         got.begin() + static_cast<ptrdiff_t>(b.new_img.size())))
      << "offline apply wrote past the new image's end";
}

// Serve without copy (every changed block computed), then copy back in the
// background while reading; the partition must end equal to new. Images may
// differ in size: the device is the new image's size, the system device the
// larger of the two (plus junk past the old image).
void check_v1(const V1Built& b, uint32_t bs) {
  const auto sys0 = system_device(b, bs);
  const uint64_t len = b.new_img.size();
  {
    MapResolver r;
    auto sys = std::make_shared<MemoryDevice>(sys0);
    r.devs["sys"] = sys;
    r.devs["diff"] = std::make_shared<MemoryDevice>(b.diff);
    auto t = make_update(r, len, /*bg=*/false);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    ASSERT_EQ((*t)->size(), len);
    std::vector<uint8_t> got(b.new_img.size());
    size_t step = bs * 3 + 512;
    for (size_t off = 0; off < got.size(); off += step) {
      size_t n = std::min(step, got.size() - off);
      { auto st = (*t)->read(off, std::span<uint8_t>(got.data() + off, n)); ASSERT_TRUE(st.ok()) << st.to_string(); }
    }
    ASSERT_TRUE(got == b.new_img) << "computed view != new";
    // Every block alone too (no run of neighbours to hide behind).
    std::vector<uint8_t> blk(bs);
    for (uint64_t k = 0; k < len / bs; k++) {
      ASSERT_TRUE((*t)->read(k * bs, blk).ok());
      ASSERT_TRUE(std::equal(blk.begin(), blk.end(), b.new_img.begin() + static_cast<ptrdiff_t>(k * bs)))
          << "block " << k << " read alone != new";
    }
    EXPECT_TRUE(sys->contents() == sys0) << "no_bg_update must not write";
  }
  MapResolver r;
  auto sys = std::make_shared<MemoryDevice>(sys0);
  r.devs["sys"] = sys;
  r.devs["diff"] = std::make_shared<MemoryDevice>(b.diff);
  auto t = make_update(r, len);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  (*t)->resume();
  std::vector<uint8_t> got(b.new_img.size());
  for (int pass = 0; pass < 3; pass++) {  // reads race the copy-back
    ASSERT_TRUE((*t)->read(0, got).ok());
    ASSERT_TRUE(got == b.new_img) << "view != new during copy-back, pass " << pass;
  }
  // (A regenerated verity area counts one unit per block, after the operations.)
  std::string total = std::to_string(b.stats.ops + b.stats.verity_blocks);
  ASSERT_EQ(wait_copied(**t), total + " " + total);
  (*t)->presuspend();
  auto part = sys->contents();
  ASSERT_TRUE(std::equal(b.new_img.begin(), b.new_img.end(), part.begin())) << "partition != new after copy-back";
  ASSERT_TRUE(std::equal(sys0.begin() + static_cast<ptrdiff_t>(len), sys0.end(), part.begin() + static_cast<ptrdiff_t>(len)))
      << "the copy-back wrote past the new image's end";
  ASSERT_TRUE((*t)->read(0, got).ok());
  ASSERT_TRUE(got == b.new_img);
  check_apply(b, bs);
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

// The stash block ships only when an operation that reads its own block
// finds no scratch block (kV1SelfScratchScan); otherwise the copy-back parks
// such a block in a logged batch of one operation, and the diff is a block
// smaller.
TEST(UpdateV1, StashOnlyWhereNoScratchBlock) {
  auto [o, n] = make_v1_pair(400, 4096, 11);
  auto lean = build_v1(o, n, 4096);
  ASSERT_GT(lean.stats.stash_ops, 0u);
  EXPECT_EQ(lean.stats.stash_blocks, 0u);
  auto lh = decode_v1_header(lean.diff);
  ASSERT_TRUE(lh.ok());
  EXPECT_EQ(lh->stash_blocks, 0u);
  EXPECT_EQ(lh->meta_offset, kV1HeaderSize);
  check_v1(lean, 4096);  // the copy-back: each such operation in a batch of its own
  {
    TempDir t;
    V1Built full{lean.old_img, lean.new_img, {}, {}};
    DiffV1Options opt;
    opt.chunk_blocks = 4;
    opt.level = 3;
    opt.progress = false;
    opt.stash_always = true;
    auto st = make_v1_diff(t, full.old_img, full.new_img, opt);
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    full.stats = *st;
    full.diff = read_file(t.file("diff"));
    EXPECT_EQ(full.stats.stash_blocks, 1u);
    EXPECT_EQ(full.diff.size(), lean.diff.size() + 4096);
    check_v1(full, 4096);
  }
  // One in-place edit, in the last block, and nothing after it: no scratch
  // block, so the stash stays.
  auto img = random_bytes(64 * 4096, 77);
  auto edited = img;
  for (size_t k = 0; k < 40; k++) edited[63 * 4096 + 100 + 37 * k] ^= 0x5a;
  auto one = build_v1(img, edited, 4096);
  ASSERT_EQ(one.stats.ops, 1u);
  ASSERT_EQ(one.stats.stash_ops, 1u);
  EXPECT_EQ(one.stats.stash_blocks, 1u);
  check_v1(one, 4096);
  // The same diff with its stash cut out is refused, naming the rule.
  auto h = decode_v1_header(one.diff);
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(h->stash_blocks, 1u);
  V1Header cut = *h;
  cut.stash_blocks = 0;
  cut.meta_offset -= 4096;
  cut.data_offset -= 4096;
  auto e = encode_v1_header(cut);
  std::vector<uint8_t> d(one.diff.begin(), one.diff.begin() + kV1HeaderSize);
  std::memcpy(d.data(), e.data(), 256);
  d.insert(d.end(), one.diff.begin() + kV1HeaderSize + 4096, one.diff.end());
  auto r = load_v1_bytes(d);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("neither a stash nor a scratch block"), std::string::npos)
      << r.status().message();
}

// The loader's one-pass check (first_without_scratch) answers what asking
// scratch(i, i + 1, 1) per operation answers, for every operation and
// window, on diffs with cycles, parking and in-place edits.
TEST(UpdateV1, ScratchCheckInOnePassAgreesWithThePlanner) {
  size_t compared = 0, with = 0, without = 0;  // operations that find a scratch block / do not
  for (uint64_t seed : {11u, 21u, 5u}) {
    auto [o, n] = make_v1_pair(300, 4096, seed);
    auto b = build_v1(o, n, 4096);
    auto idx = load_v1_bytes(b.diff);
    ASSERT_TRUE(idx.ok()) << idx.status().to_string();
    const V1ScratchPlanner planner(*idx);
    std::vector<uint64_t> all(idx->ops.size());
    for (uint64_t i = 0; i < all.size(); i++) all[i] = i;
    for (uint64_t scan : {uint64_t{1}, uint64_t{3}, uint64_t{17}, uint64_t{64}, kV1SelfScratchScan}) {
      for (uint64_t from = 0; from < all.size(); from++) {
        // The first operation from `from` on without a scratch block, both ways.
        int64_t want = -1;
        for (uint64_t i = from; i < all.size() && want < 0; i++)
          if (planner.scratch(i, i + 1, 1, nullptr, scan).empty()) want = static_cast<int64_t>(i);
        const int64_t got = planner.first_without_scratch(std::span<const uint64_t>(all).subspan(from), scan);
        ASSERT_EQ(got, want) << "seed " << seed << " scan " << scan << " from " << from;
        compared++;
        (static_cast<uint64_t>(want) == from ? without : with)++;
      }
    }
  }
  EXPECT_EQ(with + without, compared);
  EXPECT_GT(with, 0u);
  EXPECT_GT(without, 0u);
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

// A diff whose copy-back finished on one device, used again over a device
// that holds the old image (another device, or the same one restored): it
// must start over and read as new, never serve the old image as done. And a
// finished checkpoint over a device that is neither image is refused.
TEST(UpdateV1, UsedDiffOverAFreshOldImage) {
  auto [o, n] = make_v1_pair(128, 4096, 5);
  auto b = build_v1(o, n, 4096);
  auto diff = std::make_shared<MemoryDevice>(b.diff);
  {
    MapResolver r;
    r.devs["sys"] = std::make_shared<MemoryDevice>(b.old_img);
    r.devs["diff"] = diff;
    auto t = make_update(r, b.new_img.size());
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    (*t)->resume();
    std::string total = std::to_string(b.stats.ops);
    ASSERT_EQ(wait_copied(**t), total + " " + total);
    (*t)->presuspend();
  }
  MapResolver r;
  auto fresh = std::make_shared<MemoryDevice>(b.old_img);
  r.devs["sys"] = fresh;
  r.devs["diff"] = diff;  // its checkpoint says done
  {
    auto t = make_update(r, b.new_img.size(), /*bg=*/false);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    (*t)->resume();
    std::vector<uint8_t> got(b.new_img.size());
    ASSERT_TRUE((*t)->read(0, got).ok());
    EXPECT_TRUE(got == b.new_img) << "a used diff over the old image served the old image";
  }
  auto t = make_update(r, b.new_img.size());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  (*t)->resume();
  std::string total = std::to_string(b.stats.ops);
  ASSERT_EQ(wait_copied(**t), total + " " + total);
  (*t)->presuspend();
  EXPECT_TRUE(fresh->contents() == b.new_img);
  // Done, but the device holds something else: refused, nothing written.
  auto other = b.new_img;
  other[777] ^= 1;
  auto odev = std::make_shared<MemoryDevice>(other);
  r.devs["sys"] = odev;
  auto bad = make_update(r, b.new_img.size());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("neither the old nor the new image"), std::string::npos)
      << bad.status().message();
  EXPECT_TRUE(odev->contents() == other);
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

// ---- Limits: one place, loader and generator agree ------------------------

TEST(UpdateV1, HeaderLimitsAreTheSharedOnes) {
  auto [o, n] = make_v1_pair(64, 4096, 2);
  auto b = build_v1(o, n, 4096);
  auto hdr = decode_v1_header(b.diff);
  ASSERT_TRUE(hdr.ok());
  ASSERT_TRUE(v1_validate_header(*hdr).ok());
  // op_count: up to one final operation and one SAVE per block.
  EXPECT_EQ(v1_max_ops(3508), 7016u);
  EXPECT_EQ(v1_max_ops(kV1MaxImageBlocks), kV1MaxOps);
  V1Header h = *hdr;
  h.op_count = v1_max_ops(h.image_blocks);
  h.meta_raw_size = 100;
  EXPECT_TRUE(v1_validate_header(h).ok()) << v1_validate_header(h).to_string();
  h.op_count = 3535;
  h.image_blocks = 3508;  // the pair of the report: more operations than blocks is legal
  EXPECT_TRUE(v1_validate_header(h).ok()) << v1_validate_header(h).to_string();
  h.op_count = v1_max_ops(h.image_blocks) + 1;
  auto s = v1_validate_header(h);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("op_count"), std::string::npos) << s.message();
  // meta_raw_size: bounded per operation, the bound derived from the limits.
  h = *hdr;
  h.meta_raw_size = v1_header_max_meta_raw(h);
  EXPECT_TRUE(v1_validate_header(h).ok());
  EXPECT_EQ(v1_header_max_meta_raw(h),
            v1_max_meta_raw(h.op_count, h.chunk_refs ? v1_max_chunk_refs(h.block_bits) : 0));
  h.meta_raw_size++;
  EXPECT_NE(v1_validate_header(h).message().find("meta_raw_size"), std::string::npos);
  // Chunk size and block size limits are the generator's option checks too.
  h = *hdr;
  h.chunk_blocks = static_cast<uint32_t>(kV1MaxChunkBytes >> h.block_bits);
  EXPECT_TRUE(v1_validate_header(h).ok());
  h.chunk_blocks++;
  EXPECT_FALSE(v1_validate_header(h).ok());
  TempDir t;
  write_file(t.file("o"), o);
  write_file(t.file("n"), n);
  DiffV1Options opt;
  opt.progress = false;
  opt.chunk_blocks = static_cast<uint32_t>(kV1MaxChunkBytes / 4096) + 1;
  auto st = make_diff_v1(t.file("o"), t.file("n"), t.file("d"), opt);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("--chunk-blocks"), std::string::npos);
  opt.chunk_blocks = 4;
  opt.block_size = 1u << (kV1MaxBlockBits + 1);
  EXPECT_FALSE(make_diff_v1(t.file("o"), t.file("n"), t.file("d"), opt).ok());
  EXPECT_EQ(v1_max_frame_bytes(4096), ZSTD_compressBound(4096));
  EXPECT_EQ(v1_max_frame_bytes(kV1MaxChunkBytes), ZSTD_compressBound(kV1MaxChunkBytes));
}

// The root cause of "v1 header op_count: 3535 for 3508 blocks": SAVE
// operations come on top of one operation per changed block, so a diff
// where (nearly) every block changes and cycles are broken by SAVE has more
// operations than the image has blocks. The loader required op_count <=
// image_blocks; it must accept what the generator writes.
TEST(UpdateV1, MoreOperationsThanBlocksLoad) {
  for (uint64_t blocks : {64u, 256u}) {
    SCOPED_TRACE(blocks);
    auto [o, n] = make_save_heavy_pair(blocks, 4096, blocks);
    auto b = build_v1(o, n, 4096);
    EXPECT_EQ(b.stats.changed_blocks, blocks);
    EXPECT_GT(b.stats.save_ops, 0u);
    ASSERT_GT(b.stats.ops, b.stats.blocks) << "the pair should need more operations than blocks";
    auto idx = load_v1_bytes(b.diff);
    ASSERT_TRUE(idx.ok()) << idx.status().to_string();
    EXPECT_EQ(idx->ops.size(), b.stats.ops);
    EXPECT_EQ(idx->saves.size(), b.stats.save_ops);
    check_v1(b, 4096);
  }
}

// Property: pairs where 90-100 % of the blocks change (shuffled runs, long
// rotation cycles, swaps, edits, shifts, repeated content), of equal and of
// different sizes, several block and chunk sizes. Every diff loads, reads as
// new through the target (every block, no copy), copies back in the
// background while read, and applies offline to exactly new.
TEST(UpdateV1, ChurnPairsProperty) {
  int cases = 0, saves = 0, more_ops_than_blocks = 0;
  for (uint64_t seed = 1; seed <= 18; seed++) {
    const uint32_t bs = seed % 4 == 0 ? 512 : 4096;
    const uint64_t old_blocks = 48 + (seed * 37) % 200;
    const uint64_t new_blocks = seed % 3 == 1 ? old_blocks : seed % 3 == 2 ? old_blocks + 1 + seed * 3 : old_blocks - 1 - seed;
    SCOPED_TRACE(fmt::format("seed {} bs {} old {} new {} blocks", seed, bs, old_blocks, new_blocks));
    auto p = make_churn_pair(old_blocks, new_blocks, bs, seed);
    ASSERT_GE(p.changed * 10, new_blocks * 9) << "fewer than 90% of the blocks change";
    auto b = build_v1(p.old_img, p.new_img, bs, seed % 2 ? 4 : 256);
    ASSERT_EQ(b.stats.blocks, new_blocks);
    ASSERT_EQ(b.stats.old_blocks, old_blocks);
    auto idx = load_v1_bytes(b.diff);
    ASSERT_TRUE(idx.ok()) << idx.status().to_string();
    ASSERT_LE(idx->ops.size(), v1_max_ops(new_blocks));
    EXPECT_EQ(idx->old_blocks(), old_blocks);
    // No source past the old image's end.
    for (const auto& op : idx->ops) {
      if (op.type == OpType::Save) {
        ASSERT_LT(op.src, old_blocks);
      } else if (op.type == OpType::Xor) {
        ASSERT_LE(op.src + bs, old_blocks * bs);
      } else if (op.type == OpType::Copy && idx->save_of(op.src) < 0) {
        ASSERT_LT(op.src, old_blocks);
      }
    }
    for (const auto& f : idx->frames)
      for (uint64_t r : f.refs) ASSERT_LT(r, old_blocks);
    check_v1(b, bs);
    if (HasFatalFailure()) return;
    cases++;
    saves += b.stats.save_ops > 0;
    more_ops_than_blocks += b.stats.ops > b.stats.blocks;
  }
  EXPECT_EQ(cases, 18);
  EXPECT_GT(saves, 3) << "too few pairs exercised SAVE";
  std::cerr << cases << " churn pairs; " << saves << " with SAVE, " << more_ops_than_blocks
            << " with more operations than blocks\n";
}

// ---- Images of different sizes ---------------------------------------------

TEST(UpdateV1, DifferentSizesHeaderAndRefusals) {
  auto grow = make_churn_pair(60, 80, 4096, 2);
  auto b = build_v1(grow.old_img, grow.new_img, 4096);
  auto hdr = decode_v1_header(b.diff);
  ASSERT_TRUE(hdr.ok());
  EXPECT_EQ(hdr->image_blocks, 80u);
  EXPECT_EQ(hdr->old_blocks, 60u);
  EXPECT_EQ(le16(&b.diff[10]) & ~(kV1FlagChunkRefs | kV1FlagChunkNewRefs), kV1FlagOldBlocks);
  EXPECT_EQ(le64(&b.diff[kV1OldBlocksOffset]), 60u);
  // old_blocks is covered by the header CRC.
  for (size_t i = kV1OldBlocksOffset; i < kV1OldBlocksOffset + 8; i++) {
    auto d = b.diff;
    d[i] ^= 1;
    auto r = load_v1_bytes(d);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("checksum"), std::string::npos) << r.status().message();
  }
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
  with([](V1Header& h) { h.old_blocks = kV1MaxImageBlocks + 1; }, "old_blocks");
  with([](V1Header& h) { h.old_blocks = 30; }, "");  // sources or the old hash no longer fit
  {
    // A flag with equal sizes is refused (one encoding per header), so is an unknown flag.
    auto d = b.diff;
    put_le64(&d[kV1OldBlocksOffset], hdr->image_blocks);
    uLong c = crc32(crc32(0, d.data(), 156), d.data() + kV1OldBlocksOffset, 8);
    put_le32(&d[156], static_cast<uint32_t>(c));
    auto r = load_v1_bytes(d);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("old_blocks"), std::string::npos) << r.status().message();
    d = b.diff;
    put_le16(&d[10], static_cast<uint16_t>(le16(&d[10]) | 16));  // bit 4: not defined
    c = crc32(crc32(0, d.data(), 156), d.data() + kV1OldBlocksOffset, 8);
    put_le32(&d[156], static_cast<uint32_t>(c));
    r = load_v1_bytes(d);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("flags"), std::string::npos) << r.status().message();
  }
  // The target: the segment is the new image; the system device must hold
  // the larger of the two images, and the error names both sizes.
  MapResolver r;
  r.devs["diff"] = std::make_shared<MemoryDevice>(b.diff);
  r.devs["sys"] = std::make_shared<MemoryDevice>(grow.old_img);  // only the old image: too small for the new
  auto t = make_update(r, grow.new_img.size(), false);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(std::to_string(grow.old_img.size())), std::string::npos) << t.status().message();
  EXPECT_NE(t.status().message().find(std::to_string(grow.new_img.size())), std::string::npos) << t.status().message();
  r.devs["sys"] = std::make_shared<MemoryDevice>(system_device(b, 4096));
  t = make_update(r, grow.old_img.size(), false);
  ASSERT_FALSE(t.ok()) << "a segment of the old image's size";
  EXPECT_NE(t.status().message().find("new image"), std::string::npos) << t.status().message();
  t = make_update(r, grow.new_img.size(), false);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ((*t)->size(), grow.new_img.size());
  // Offline: a device smaller than the new image is refused before any write.
  MemoryDevice diff(b.diff, true), small(grow.old_img);
  auto idx = load_v1(diff);
  ASSERT_TRUE(idx.ok());
  auto blocks = v1_compute_all(diff, small, *idx);
  ASSERT_TRUE(blocks.ok());
  auto w = v1_write_all(small, *idx, *blocks);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.message().find(std::to_string(grow.new_img.size())), std::string::npos) << w.message();
  EXPECT_TRUE(small.contents() == grow.old_img);
  // Format v0 keeps refusing different sizes, saying why.
  TempDir tmp;
  write_file(tmp.file("o"), grow.old_img);
  write_file(tmp.file("n"), grow.new_img);
  DiffOptions o0;
  o0.progress = false;
  auto st0 = make_diff(tmp.file("o"), tmp.file("n"), tmp.file("d0"), o0);
  ASSERT_FALSE(st0.ok());
  EXPECT_NE(st0.status().message().find("format v0 cannot carry"), std::string::npos) << st0.status().message();
}

// Different sizes both ways, several seeds: through the target (no copy,
// then background copy-back) and offline apply; same-size diffs are
// unchanged (no flag, bytes 160.. zero).
TEST(UpdateV1, DifferentSizesRoundTrip) {
  for (auto [ob, nb] : {std::pair<uint64_t, uint64_t>{64, 100}, {100, 64}, {64, 65}, {65, 64}, {80, 80}}) {
    for (uint64_t seed : {1u, 3u}) {
      SCOPED_TRACE(fmt::format("old {} new {} seed {}", ob, nb, seed));
      auto p = make_churn_pair(ob, nb, 4096, seed + ob);
      auto b = build_v1(p.old_img, p.new_img, 4096);
      EXPECT_EQ(le16(&b.diff[10]) & kV1FlagOldBlocks, ob == nb ? 0 : kV1FlagOldBlocks);
      EXPECT_EQ(le16(&b.diff[10]) & ~kV1KnownFlags, 0);
      if (ob == nb) {
        for (size_t i = 160; i < 256; i++) ASSERT_EQ(b.diff[i], 0) << i;
      }
      check_v1(b, 4096);
      if (HasFatalFailure()) return;
    }
  }
}

// Crafted metadata the generator never writes: the loader refuses old
// content read past the old image's end and a new block past it without an
// operation (it would show the system device's bytes).
TEST(UpdateV1, LoaderChecksOldImageBounds) {
  auto craft = [](uint64_t old_blocks, uint64_t image_blocks, std::vector<V1Op> ops) {
    auto meta = encode_v1_meta(ops, {}, {}, {}, 12);
    std::vector<uint8_t> cmeta(ZSTD_compressBound(meta.size()));
    cmeta.resize(ZSTD_compress(cmeta.data(), cmeta.size(), meta.data(), meta.size(), 3));
    V1Header h;
    h.block_bits = 12;
    h.chunk_blocks = 1;
    h.image_blocks = image_blocks;
    h.old_blocks = old_blocks;
    h.op_count = ops.size();
    h.meta_offset = kV1HeaderSize;
    h.meta_size = cmeta.size();
    h.meta_raw_size = meta.size();
    h.data_offset = h.meta_offset + h.meta_size;
    auto e = encode_v1_header(h);
    std::vector<uint8_t> f(e.begin(), e.end());
    f.insert(f.end(), cmeta.begin(), cmeta.end());
    return f;
  };
  auto op = [](uint64_t dest, OpType t, uint64_t src = 0) {
    V1Op o;
    o.dest = dest;
    o.type = t;
    o.src = src;
    return o;
  };
  auto ok = load_v1_bytes(craft(4, 6, {op(4, OpType::Zero), op(5, OpType::Copy, 1)}));
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->old_blocks(), 4u);
  auto r = load_v1_bytes(craft(4, 6, {op(4, OpType::Zero), op(5, OpType::Copy, 4)}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("past the old image's end"), std::string::npos) << r.status().message();
  r = load_v1_bytes(craft(4, 6, {op(4, OpType::Zero)}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("block 5 lies past the old image's end"), std::string::npos) << r.status().message();
  r = load_v1_bytes(craft(6, 4, {op(1, OpType::Copy, 5), op(2, OpType::Copy, 6)}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("source 6"), std::string::npos) << r.status().message();
  // New smaller: the old tail is a fine source (never overwritten).
  ok = load_v1_bytes(craft(6, 4, {op(1, OpType::Copy, 5), op(2, OpType::Save, 4), op(3, OpType::Copy, 2), op(2, OpType::Zero)}));
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  // A SAVE parks only old content.
  r = load_v1_bytes(craft(4, 6, {op(4, OpType::Save, 5), op(5, OpType::Copy, 4), op(4, OpType::Zero)}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("SAVE source"), std::string::npos) << r.status().message();
}

// ---- REPLACE chunks with old references (flag CHUNK_REFS, issue 18) -------

namespace {
// The diff again with the metadata re-encoded from idx and `refs` as the
// REPLACE chunks' reference lists (the payload unchanged; header fields that
// depend on the metadata's size fixed, the CRC recomputed).
std::vector<uint8_t> with_chunk_refs(const std::vector<uint8_t>& diff, const V1Index& idx,
                                     const std::vector<std::vector<uint64_t>>& refs, int new_refs = -1) {
  std::vector<uint64_t> cl, xl;
  for (const auto& c : idx.chunks) cl.push_back(c.length);
  for (const auto& c : idx.xchunks) xl.push_back(c.length);
  auto meta = encode_v1_meta(idx.ops, cl, idx.frames, xl, idx.h.block_bits, &refs);
  std::vector<uint8_t> cm(ZSTD_compressBound(meta.size()));
  cm.resize(ZSTD_compress(cm.data(), cm.size(), meta.data(), meta.size(), 3));
  V1Header h = idx.h;
  h.chunk_refs = true;
  if (new_refs >= 0) h.chunk_new_refs = new_refs != 0;
  h.meta_size = cm.size();
  h.meta_raw_size = meta.size();
  h.data_offset = h.meta_offset + h.meta_size;
  auto hb = encode_v1_header(h);
  std::vector<uint8_t> out(hb.begin(), hb.end());
  out.insert(out.end(), diff.begin() + kV1HeaderSize, diff.begin() + static_cast<ptrdiff_t>(idx.h.meta_offset));
  out.insert(out.end(), cm.begin(), cm.end());
  out.insert(out.end(), diff.begin() + static_cast<ptrdiff_t>(idx.h.data_offset), diff.end());
  return out;
}

V1Built build_ref(uint64_t seed, bool chunk_refs, uint32_t chunk_blocks = 8, bool new_refs = true) {
  auto [o, n] = make_v1_ref_pair(300, 4096, seed);
  TempDir t;
  V1Built b;
  b.old_img = o;
  b.new_img = n;
  DiffV1Options opt;
  opt.chunk_blocks = chunk_blocks;
  opt.level = 3;
  opt.progress = false;
  opt.chunk_refs = chunk_refs;
  opt.chunk_new_refs = new_refs;
  auto st = make_v1_diff(t, o, n, opt);
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  if (st.ok()) b.stats = *st;
  b.diff = read_file(t.file("diff"));
  return b;
}
}  // namespace

// Round trips through the target (served, copied back while read, offline
// apply) with chunk references, on several random pairs; the same pairs
// without them give the old layout (flag clear) and a larger diff.
TEST(UpdateV1, ChunkRefsRoundTripsProperty) {
  uint64_t with_total = 0, without_total = 0, old_only_total = 0, new_ref_blocks = 0;
  for (uint64_t seed = 1; seed <= 5; seed++) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto b = build_ref(seed, true);
    auto idx = load_v1_bytes(b.diff);
    ASSERT_TRUE(idx.ok()) << idx.status().to_string();
    ASSERT_TRUE(idx->h.chunk_refs);
    EXPECT_GT(b.stats.chunk_ref_blocks, 0u);
    uint64_t listed = 0;
    for (const auto& c : idx->chunks) listed += c.refs.size();
    EXPECT_EQ(listed, b.stats.chunk_ref_blocks);
    EXPECT_GT(b.stats.copy, 0u);
    EXPECT_GT(b.stats.xor_ops + b.stats.delta, 0u);
    check_v1(b, 4096);
    // References to moved blocks at their new places (flag CHUNK_NEW_REFS).
    uint64_t moved = 0;
    for (const auto& c : idx->chunks)
      for (uint64_t r : c.refs) moved += idx->new_ref(r);
    EXPECT_EQ(moved, b.stats.chunk_new_ref_blocks);
    EXPECT_EQ(idx->h.chunk_new_refs, moved > 0);
    new_ref_blocks += moved;
    // Without them: old references only, the flag clear.
    auto m = build_ref(seed, true, 8, false);
    auto mi = load_v1_bytes(m.diff);
    ASSERT_TRUE(mi.ok()) << mi.status().to_string();
    EXPECT_FALSE(mi->h.chunk_new_refs);
    EXPECT_EQ(m.stats.chunk_new_ref_blocks, 0u);
    check_v1(m, 4096);
    old_only_total += m.diff.size();
    auto a = build_ref(seed, false);
    auto ai = load_v1_bytes(a.diff);
    ASSERT_TRUE(ai.ok()) << ai.status().to_string();
    EXPECT_FALSE(ai->h.chunk_refs);
    EXPECT_EQ(le16(a.diff.data() + 10) & kV1FlagChunkRefs, 0);
    for (const auto& c : ai->chunks) EXPECT_TRUE(c.refs.empty());
    check_v1(a, 4096);
    with_total += b.diff.size();
    without_total += a.diff.size();
  }
  std::cerr << "chunk refs: " << with_total << " bytes with (" << new_ref_blocks << " references to moved blocks), "
            << old_only_total << " with old references only, " << without_total << " without\n";
  EXPECT_LT(with_total, without_total);
  EXPECT_LE(with_total, old_only_total);
  EXPECT_GT(new_ref_blocks, 0u) << "the pairs must exercise references to the new image";
}

// The loader's checks of chunk reference lists: range, order, and that they
// stay intact until the chunk's last block is applied; a flag without lists
// and lists without the flag are refused too.
TEST(UpdateV1, ChunkRefsCorruptRefused) {
  auto b = build_ref(3, true);
  auto idx = load_v1_bytes(b.diff);
  ASSERT_TRUE(idx.ok()) << idx.status().to_string();
  ASSERT_TRUE(idx->h.chunk_refs);
  std::vector<std::vector<uint64_t>> refs;
  for (const auto& c : idx->chunks) refs.push_back(c.refs);
  // Re-encoding what it has loads, and computes the same blocks.
  {
    auto d = with_chunk_refs(b.diff, *idx, refs);
    auto again = load_v1_bytes(d);
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    EXPECT_EQ(again->last_reader, idx->last_reader);
  }
  auto refused = [&](std::vector<std::vector<uint64_t>> r, const char* want) {
    auto d = with_chunk_refs(b.diff, *idx, r);
    auto l = load_v1_bytes(d);
    ASSERT_FALSE(l.ok()) << want;
    EXPECT_NE(l.status().message().find(want), std::string::npos) << l.status().message();
  };
  const uint64_t old_blocks = idx->old_blocks();
  {
    // Without flag CHUNK_NEW_REFS a reference past the old image is refused ...
    auto r = refs;
    r[0] = {old_blocks};
    auto d = with_chunk_refs(b.diff, *idx, r, 0);
    auto l = load_v1_bytes(d);
    ASSERT_FALSE(l.ok());
    EXPECT_NE(l.status().message().find("outside the old image"), std::string::npos) << l.status().message();
  }
  {
    // ... with it, one past both images, one to a block no operation
    // writes, and one to a block whose operation is not a COPY.
    ASSERT_TRUE(idx->h.chunk_new_refs) << "seed 3 must give references to moved blocks";
    auto d = with_chunk_refs(b.diff, *idx, refs, 1);
    ASSERT_TRUE(load_v1_bytes(d).ok());
    auto r = refs;
    r[0] = {old_blocks + idx->h.image_blocks};
    refused(r, "outside the old and new images");
    uint64_t untouched = UINT64_MAX, not_copy = UINT64_MAX;
    for (uint64_t k = 0; k < idx->h.image_blocks; k++) {
      const int64_t e = idx->find(k);
      if (e < 0 && untouched == UINT64_MAX) untouched = k;
      if (e >= 0 && idx->ops[static_cast<size_t>(e)].type != OpType::Copy && not_copy == UINT64_MAX) not_copy = k;
    }
    ASSERT_NE(not_copy, UINT64_MAX);
    r[0] = {old_blocks + not_copy};
    refused(r, "not a COPY");
    if (untouched != UINT64_MAX) {
      r[0] = {old_blocks + untouched};
      refused(r, "which no operation writes");
    }
    // The flag without CHUNK_REFS.
    V1Header h = idx->h;
    h.chunk_refs = false;
    h.chunk_new_refs = true;
    auto d2 = b.diff;
    auto e = encode_v1_header(h);
    std::memcpy(d2.data(), e.data(), 256);
    auto l = load_v1_bytes(d2);
    ASSERT_FALSE(l.ok());
    EXPECT_NE(l.status().message().find("needs bit 1"), std::string::npos) << l.status().message();
  }
  {
    auto r = refs;
    r[0] = {5, 5};
    refused(r, "reference 1");
  }
  {
    auto r = refs;
    r[0] = {9, 4};
    refused(r, "reference 1");
  }
  {
    auto r = refs;
    r[0].assign(v1_max_chunk_refs(idx->h.block_bits) + 1, 0);
    for (size_t k = 0; k < r[0].size(); k++) r[0][k] = k;
    refused(r, "reference blocks");
  }
  {
    // A block the copy-back overwrites before the chunk's last block: the
    // block written by the first operation in the apply order that is not a
    // SAVE (if it is read by that chunk's last member, it must come later).
    std::vector<int64_t> last(idx->chunks.size(), -1);
    for (size_t i = 0; i < idx->ops.size(); i++)
      if (idx->ops[i].type == OpType::Replace) {
        auto& l = last[idx->ops[i].index / idx->h.chunk_blocks];
        l = std::max<int64_t>(l, static_cast<int64_t>(i));
      }
    size_t c = 0;
    for (size_t k = 1; k < last.size(); k++)
      if (last[k] > last[c]) c = k;
    uint64_t victim = UINT64_MAX;
    for (int64_t i = 0; i < last[c]; i++)
      if (idx->ops[static_cast<size_t>(i)].type != OpType::Save && idx->ops[static_cast<size_t>(i)].dest < old_blocks) {
        victim = idx->ops[static_cast<size_t>(i)].dest;
        break;
      }
    ASSERT_NE(victim, UINT64_MAX);
    auto r = refs;
    r[c] = {victim};
    refused(r, "after operation");
  }
  // The flag cleared over metadata that has the lists: refused.
  {
    V1Header h = idx->h;
    h.chunk_refs = false;
    auto d = b.diff;
    auto e = encode_v1_header(h);
    std::memcpy(d.data(), e.data(), 256);
    EXPECT_FALSE(load_v1_bytes(d).ok());
  }
  // A wrong reference that passes the order checks: decoding fails or
  // yields other bytes; never a crash, and every error is reported.
  {
    auto r = refs;
    for (auto& v : r)
      if (!v.empty()) v.erase(v.begin());
    auto d = with_chunk_refs(b.diff, *idx, r);
    auto l = load_v1_bytes(d);
    ASSERT_TRUE(l.ok()) << l.status().to_string();
    MemoryDevice dd(d, true), od(b.old_img, true);
    std::vector<uint8_t> blk(4096);
    bool differs = false;
    for (size_t i = 0; i < l->ops.size(); i++) {
      if (l->ops[i].type != OpType::Replace) continue;
      Status s = v1_compute(dd, od, *l, i, blk);
      if (!s.ok() || !std::equal(blk.begin(), blk.end(), b.new_img.begin() + static_cast<ptrdiff_t>(l->ops[i].dest * 4096)))
        differs = true;
    }
    EXPECT_TRUE(differs);
  }
}


// Checkpoint state 2 (a logged copy-back batch): the loader takes its bounds
// and CRC, and refuses bounds that are empty, backwards or past op_count,
// naming the batch (the kV1MaxBatchOps limit needs a larger diff than this).
TEST(UpdateV1, LoggedBatchRecordBoundsChecked) {
  TempDir tmp;
  auto [old_img, new_img] = make_v1_pair(96, 4096, 5);
  write_file(tmp.file("o"), old_img);
  write_file(tmp.file("n"), new_img);
  DiffV1Options o;
  o.progress = false;
  auto st = make_diff_v1(tmp.file("o"), tmp.file("n"), tmp.file("d"), o);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  const auto diff = read_file(tmp.file("d"));
  auto idx = load_v1_bytes(diff);
  ASSERT_TRUE(idx.ok()) << idx.status().to_string();
  const uint64_t n = idx->ops.size();
  ASSERT_GE(n, 4u);
  auto with = [&](uint64_t done, uint64_t end) {
    std::vector<uint8_t> d = diff;
    put_v1_batch_checkpoint(std::span<uint8_t>(d).first(512), done, end, 0x1234abcd);
    return decode_v1_header(std::span<const uint8_t>(d).first(kV1HeaderSize));
  };
  auto good = with(1, 3);
  ASSERT_TRUE(good.ok()) << good.status().to_string();
  EXPECT_EQ(good->ckpt_state, 2u);
  EXPECT_EQ(good->ckpt_done, 1u);
  EXPECT_EQ(good->ckpt_batch_end, 3u);
  EXPECT_EQ(good->ckpt_batch_crc, 0x1234abcdu);
  EXPECT_EQ(good->ckpt_stash_op, 0u);
  for (auto [d, e] : {std::pair<uint64_t, uint64_t>{2, 2}, {3, 1}, {0, n + 1}}) {
    auto bad = with(d, e);
    ASSERT_FALSE(bad.ok()) << d << ".." << e;
    EXPECT_NE(bad.status().message().find("logged batch"), std::string::npos) << bad.status().to_string();
  }
}

// ---- Flag VERITY_TREE: a verity hash area regenerated on the device ----

namespace {

std::vector<uint8_t> salt_of(uint64_t seed, size_t n = 32) { return random_bytes(n, seed); }

// A 64-block pair, each image with its tree (salts seed and seed + 1), and
// the diff that leaves the new tree to the device.
struct VerityCase {
  VerityImage vo, vn;
  V1Built b;
};
VerityCase verity_case(uint64_t seed) {
  auto [o, n] = make_v1_pair(64, 4096, seed);
  VerityCase c{with_verity(o, salt_of(seed)), with_verity(n, salt_of(seed + 1)), {}};
  c.b = build_v1(c.vo.img, c.vn.img, 4096, 4, 3, true, c.vn.hash_offset);
  return c;
}

// The diff with `v` encoded as its verity record (a valid CRC).
std::vector<uint8_t> with_record(std::vector<uint8_t> diff, uint64_t at, const V1Verity& v) {
  auto rec = encode_v1_verity(v);
  std::copy(rec.begin(), rec.end(), diff.begin() + static_cast<ptrdiff_t>(at));
  return diff;
}

}  // namespace

// An update whose images carry their trees, each with its own random salt
// (veritysetup's default, so every hash block differs): the diff leaves the
// area out (no operation writes it; it is far smaller than carrying it),
// the device regenerates it, serves the new image byte for byte before and
// during the copy-back, writes the area last, and the offline apply does too.
// Geometries: sha256 4096/4096 format 1; sha1 1024/512 format 0 (the tree
// ends inside a diff block: zero tail); sha512 4096/4096 on 512-byte diff
// blocks.
TEST(UpdateV1Verity, RegeneratedTreeRoundTrips) {
  struct Case {
    uint32_t hash_type;
    const char* alg;
    uint32_t dbs, hbs, bs;
  };
  for (const Case& c : {Case{1, "sha256", 4096, 4096, 4096}, Case{0, "sha1", 1024, 512, 4096},
                        Case{1, "sha512", 4096, 4096, 512}}) {
    SCOPED_TRACE(fmt::format("{} format {} data {} hash {} diff blocks {}", c.alg, c.hash_type, c.dbs, c.hbs, c.bs));
    auto [o, n] = make_v1_pair(300, c.bs, 31);
    auto vo = with_verity(o, salt_of(1), c.hash_type, c.alg, c.dbs, c.hbs, c.bs);
    auto vn = with_verity(n, salt_of(2), c.hash_type, c.alg, c.dbs, c.hbs, c.bs);
    ASSERT_EQ(vo.img.size(), vn.img.size());
    auto carried = build_v1(vo.img, vn.img, c.bs);
    auto b = build_v1(vo.img, vn.img, c.bs, 4, 3, true, vn.hash_offset);
    ASSERT_GT(b.stats.verity_blocks, 0u);
    auto idx = load_v1_bytes(b.diff);
    ASSERT_TRUE(idx.ok()) << idx.status().to_string();
    ASSERT_TRUE(idx->verity.has_value());
    EXPECT_EQ(idx->verity->root, vn.root);
    EXPECT_EQ(idx->region_first, vn.hash_offset / c.bs);
    EXPECT_EQ(idx->region_end, vn.img.size() / c.bs);
    for (const auto& op : idx->ops) ASSERT_FALSE(idx->generated(op.dest)) << "operation writes block " << op.dest;
    EXPECT_LT(b.diff.size(), carried.diff.size()) << "the tree carried costs more than the 1 KiB record";
    check_v1(b, c.bs);
    if (HasFatalFailure()) return;
  }
}

// The new image gains a tree the old one had not: the area lies past the old
// image's end (where the system device holds other bytes) and still needs
// no operation.
TEST(UpdateV1Verity, AreaPastTheOldImageEnd) {
  auto [o, n] = make_v1_pair(200, 4096, 32);
  auto vn = with_verity(n, salt_of(3));
  ASSERT_GT(vn.img.size(), o.size());
  auto b = build_v1(o, vn.img, 4096, 4, 3, true, vn.hash_offset);
  auto idx = load_v1_bytes(b.diff);
  ASSERT_TRUE(idx.ok()) << idx.status().to_string();
  EXPECT_EQ(idx->old_blocks(), 200u);
  EXPECT_EQ(idx->region_first, 200u);
  check_v1(b, 4096);
}

// update-diff refuses what it cannot regenerate exactly, naming the cause,
// and writes nothing.
TEST(UpdateV1Verity, GeneratorRefusals) {
  auto [o, n] = make_v1_pair(64, 4096, 33);
  auto vo = with_verity(o, salt_of(4));
  auto vn = with_verity(n, salt_of(5));
  TempDir t;
  write_file(t.file("old"), vo.img);
  auto attempt = [&](const std::vector<uint8_t>& nimg, uint64_t at, std::vector<uint8_t> root = {}) {
    write_file(t.file("new"), nimg);
    DiffV1Options opt;
    opt.progress = false;
    opt.level = 3;
    opt.verity_hash_offset = at;
    opt.verity_root = std::move(root);
    return make_diff_v1(t.file("old"), t.file("new"), t.file("diff"), opt);
  };
  auto expect_refused = [&](const Result<DiffV1Stats>& r, const std::string& want) {
    ASSERT_FALSE(r.ok()) << want;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
    EXPECT_FALSE(std::filesystem::exists(t.file("diff"))) << "nothing written";
  };
  ASSERT_TRUE(attempt(vn.img, vn.hash_offset, vn.root).ok());
  std::filesystem::remove(t.file("diff"));
  expect_refused(attempt(vn.img, vn.hash_offset, vo.root), "not the expected");
  expect_refused(attempt(vn.img, vn.hash_offset - 4096), "no usable verity superblock");
  expect_refused(attempt(vn.img, vn.hash_offset + 1), "multiple of the block size");
  expect_refused(attempt(vn.img, vn.img.size()), "inside the image");
  auto bad = vn.img;
  bad[vn.hash_offset + 4096 + 100] ^= 1;  // one tree byte
  expect_refused(attempt(bad, vn.hash_offset), "differs at byte");
  bad = vn.img;
  bad.back() ^= 1;  // after the tree, in the area's last diff block: must be zero
  expect_refused(attempt(bad, vn.hash_offset), "differs at byte");
  bad = vn.img;
  bad[100] ^= 1;  // data no longer matches the tree
  expect_refused(attempt(bad, vn.hash_offset), "differs at byte");
}

// The record's fields: each bad value is refused by the loader, naming it;
// the header's verity fields too.
TEST(UpdateV1Verity, CorruptRecordRefused) {
  const auto b = verity_case(34).b;
  auto idx = load_v1_bytes(b.diff);
  ASSERT_TRUE(idx.ok()) << idx.status().to_string();
  const uint64_t at = idx->h.verity_offset;
  ASSERT_EQ(at + kV1VerityRecordSize, b.diff.size());
  // Any flipped byte of the record: refused (CRC).
  for (size_t i = 0; i < kV1VerityRecordSize; i += 7) {
    auto d = b.diff;
    d[at + i] ^= 0x20;
    EXPECT_FALSE(load_v1_bytes(d).ok()) << "flip at record byte " << i;
  }
  // Fields re-encoded with a valid CRC.
  auto with = [&](auto mutate, const char* want) {
    V1Verity v = *idx->verity;
    mutate(v);
    auto r = load_v1_bytes(with_record(b.diff, at, v));
    ASSERT_FALSE(r.ok()) << want;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
  };
  with([](V1Verity& v) { v.hash_offset += 512; }, "hash_offset");
  with([](V1Verity& v) { v.region_blocks += 1; }, "region_blocks");
  with([](V1Verity& v) { v.root.pop_back(); }, "root_size");
  with([](V1Verity& v) { v.sb.data_blocks += 64; }, "overlap");  // more data than lies before the area
  with([](V1Verity& v) { v.hash_offset -= 8192; }, "overlap");
  with([](V1Verity& v) { v.sb.algorithm = "nosuchhash"; }, "superblock");
  with([](V1Verity& v) { v.sb.hash_block_size = 3000; }, "superblock");
  with([](V1Verity& v) { v.hash_offset = 4096 * 1000; }, "past the new image");
  // The header's fields (re-encoded with a valid CRC).
  auto hwith = [&](auto mutate, const char* want) {
    V1Header h = idx->h;
    mutate(h);
    auto e = encode_v1_header(h);
    auto d = b.diff;
    std::memcpy(d.data(), e.data(), 256);
    auto r = load_v1_bytes(d);
    ASSERT_FALSE(r.ok()) << want;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
  };
  hwith([](V1Header& h) { h.verity_size = 512; }, "verity_size");
  hwith([](V1Header& h) { h.verity_offset -= 1; }, "verity_offset");
  // Without the record, the area's blocks past the old image would have no operation.
  {
    auto d = b.diff;
    d.resize(d.size() - 1);
    auto r = load_v1_bytes(d);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("outside"), std::string::npos) << r.status().message();
  }
}

// A record whose root does not match what the data gives (a diff made
// wrong): the target refuses to load, naming both roots, and writes nothing.
TEST(UpdateV1Verity, TargetRefusesARootTheDataDoesNotGive) {
  const auto c = verity_case(35);
  const auto& [vn, b] = std::tie(c.vn, c.b);
  auto idx = load_v1_bytes(b.diff);
  ASSERT_TRUE(idx.ok());
  V1Verity v = *idx->verity;
  v.root[0] ^= 1;
  auto d = with_record(b.diff, idx->h.verity_offset, v);
  ASSERT_TRUE(load_v1_bytes(d).ok()) << "a well-formed record";
  const auto sys0 = system_device(b, 4096);
  MapResolver r;
  auto sys = std::make_shared<MemoryDevice>(sys0);
  r.devs["sys"] = sys;
  r.devs["diff"] = std::make_shared<MemoryDevice>(d);
  auto t = make_update(r, vn.img.size());
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("the diff's record says " + hex(v.root)), std::string::npos)
      << t.status().message();
  EXPECT_NE(t.status().message().find(hex(vn.root)), std::string::npos) << t.status().message();
  EXPECT_TRUE(sys->contents() == sys0) << "nothing written";
}
