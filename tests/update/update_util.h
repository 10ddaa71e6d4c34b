#pragma once

#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "common/sys_util.h"
#include "device/target.h"
#include "update/differ.h"
#include "update/format_v0_io.h"
#include "update/target.h"
#include "verity/format.h"

namespace udm::test {

// OLD and NEW written to t's files "old" and "new" and diffed (format v1)
// into t's "diff".
inline Result<update::DiffV1Stats> make_v1_diff(TempDir& t, const std::vector<uint8_t>& old_img,
                                                const std::vector<uint8_t>& new_img, const update::DiffV1Options& o) {
  write_file(t.file("old"), old_img);
  write_file(t.file("new"), new_img);
  return update::make_diff_v1(t.file("old"), t.file("new"), t.file("diff"), o);
}

// Old/new image pair with `changes` random blocks changed (random data,
// zeroes, or a copy of another block), plus optionally the last block.
inline std::pair<std::vector<uint8_t>, std::vector<uint8_t>> make_pair_images(uint64_t size, uint32_t bs,
                                                                               int changes, uint64_t seed,
                                                                               bool touch_tail = true) {
  auto old_img = random_bytes(size, seed);
  auto new_img = old_img;
  std::mt19937_64 rng(seed * 31 + 7);
  uint64_t blocks = size / bs;
  for (int i = 0; i < changes; i++) {
    uint64_t b = rng() % blocks;
    switch (i % 3) {
      case 0: {
        auto r = random_bytes(bs, rng());
        std::copy(r.begin(), r.end(), new_img.begin() + b * bs);
        break;
      }
      case 1:
        std::fill(new_img.begin() + b * bs, new_img.begin() + (b + 1) * bs, 0);
        break;
      default: {
        uint64_t from = rng() % blocks;
        std::copy(old_img.begin() + from * bs, old_img.begin() + (from + 1) * bs, new_img.begin() + b * bs);
        new_img[b * bs] ^= 0x5a;
      }
    }
  }
  if (touch_tail && blocks) new_img[size - 1] ^= 0xff;
  return {old_img, new_img};
}

// Resolver over named in-memory devices.
class MapResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool) override {
    auto it = devs.find(spec);
    if (it == devs.end()) return Status::Error(ENXIO, "no device " + spec);
    return it->second;
  }
};

inline Result<TargetPtr> make_update(MapResolver& r, uint64_t length, bool bg = true,
                                     const std::vector<std::string>& opts = {}) {
  TargetParams p;
  p.type = "update";
  p.length = length;
  p.args = {"sys", "diff"};
  std::vector<std::string> o = opts;
  if (!bg) o.insert(o.begin(), "no_bg_update");
  p.args.push_back(std::to_string(o.size()));
  p.args.insert(p.args.end(), o.begin(), o.end());
  p.resolver = &r;
  return make_update_target(p);
}

// Waits until status says "<n> <n>" (or the timeout); returns the last status.
inline std::string wait_copied(Target& t, int seconds = 60) {
  std::string s;
  for (int i = 0; i < seconds * 100; i++) {
    s = t.status();
    auto sp = s.find(' ');
    if (sp != std::string::npos && s.substr(0, sp) == s.substr(sp + 1)) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return s;
}

}  // namespace udm::test

namespace udm::test {

// An old/new pair for format v1: moved runs, swapped runs, 3-cycles of runs,
// blocks edited in place (a few bytes), moved-and-edited blocks, zeroed and
// novel blocks. `blocks` must be >= 64.
// Random blocks whose runs are swapped and rotated (COPY cycles only, no
// REPLACE), the last quarter of the image zero in both images (free space).
inline std::pair<std::vector<uint8_t>, std::vector<uint8_t>> make_v1_cycle_pair(uint64_t blocks, uint32_t bs,
                                                                             uint64_t seed) {
  const uint64_t used = blocks * 3 / 4;
  auto old_img = random_bytes(blocks * bs, seed);
  std::fill(old_img.begin() + static_cast<ptrdiff_t>(used * bs), old_img.end(), 0);
  auto new_img = old_img;
  auto copy_run = [&](uint64_t from, uint64_t to, uint64_t len) {
    std::copy(old_img.begin() + static_cast<ptrdiff_t>(from * bs), old_img.begin() + static_cast<ptrdiff_t>((from + len) * bs),
              new_img.begin() + static_cast<ptrdiff_t>(to * bs));
  };
  // Disjoint groups of 6 blocks: a swap of two 2-block runs, then a
  // rotation of three single blocks.
  for (uint64_t g = 0; g + 6 <= used; g += 12) {
    copy_run(g, g + 2, 2);
    copy_run(g + 2, g, 2);
    copy_run(g + 4, g + 5, 1);
    copy_run(g + 5, g + 6, 1);
    copy_run(g + 6, g + 4, 1);
  }
  return {std::move(old_img), std::move(new_img)};
}

inline std::pair<std::vector<uint8_t>, std::vector<uint8_t>> make_v1_pair(uint64_t blocks, uint32_t bs, uint64_t seed) {
  auto old_img = random_bytes(blocks * bs, seed);
  // Some compressible blocks too (text-like), so REPLACE chunks compress.
  std::mt19937_64 rng(seed * 97 + 3);
  for (uint64_t b = 0; b < blocks; b += 3)
    for (uint32_t i = 0; i < bs; i++) old_img[b * bs + i] = static_cast<uint8_t>('a' + (i * 7 + b) % 23);
  auto new_img = old_img;
  auto blk = [&](std::vector<uint8_t>& v, uint64_t b) { return v.begin() + static_cast<ptrdiff_t>(b * bs); };
  auto copy_run = [&](uint64_t from, uint64_t to, uint64_t len) {
    std::copy(blk(old_img, from), blk(old_img, from + len), blk(new_img, to));
  };
  auto r = [&](uint64_t n) { return rng() % n; };
  for (int i = 0; i < 4; i++) copy_run(r(blocks - 8), r(blocks - 8), 1 + r(8));  // moves
  for (int i = 0; i < 2; i++) {                                                    // swaps
    uint64_t a = r(blocks - 8), b = r(blocks - 8), len = 1 + r(8);
    copy_run(a, b, len);
    copy_run(b, a, len);
  }
  for (int i = 0; i < 2; i++) {  // 3-cycles of runs
    uint64_t a = r(blocks / 3 - 4), b = blocks / 3 + r(blocks / 3 - 4), c = 2 * blocks / 3 + r(blocks / 3 - 4);
    copy_run(a, b, 3);
    copy_run(b, c, 3);
    copy_run(c, a, 3);
  }
  for (int i = 0; i < 10; i++) {  // in-place edits
    uint64_t b = r(blocks);
    for (int k = 0; k < 20; k++) new_img[b * bs + r(bs)] ^= static_cast<uint8_t>(1 + r(255));
  }
  for (int i = 0; i < 3; i++) {  // a moved file whose middle block was edited
    uint64_t from = r(blocks - 8), to = r(blocks - 8);
    copy_run(from, to, 5);
    for (int k = 0; k < 30; k++) new_img[(to + 2) * bs + r(bs)] ^= 0x41;
  }
  for (int i = 0; i < 2; i++) {  // a moved file with bytes inserted inside several blocks in a row: no single
    uint64_t from = r(blocks - 10), to = r(blocks - 10);  // offset fits them (not XOR), DELTA frames of many blocks
    copy_run(from, to, 8);
    for (uint64_t b = to + 1; b < to + 7; b++) {
      auto at = blk(new_img, b) + static_cast<ptrdiff_t>(bs / 2);
      std::copy_backward(at, blk(new_img, b + 1) - 9, blk(new_img, b + 1));
      for (int k = 0; k < 9; k++) at[k] = static_cast<uint8_t>(r(256));
    }
  }
  for (int i = 0; i < 4; i++) {
    uint64_t b = r(blocks);
    std::fill(blk(new_img, b), blk(new_img, b + 1), 0);
  }
  for (int i = 0; i < 6; i++) {  // novel
    auto x = random_bytes(bs, rng());
    std::copy(x.begin(), x.end(), blk(new_img, r(blocks)));
  }
  return {old_img, new_img};
}

}  // namespace udm::test

namespace udm::test {

// A pair where 90-100 % of the blocks change: the old image's blocks
// (random, text-like, a few repeated contents, zeroes) cut into runs of 1..16
// blocks that are shuffled (cycles of every length) or, for some seeds, the
// whole image rotated (one or a few long cycles), then pairs of runs swapped;
// on top, blocks edited in place (a few bytes), shifted by inserted bytes,
// replaced by novel, repeated or zero content. NEW may be larger (tail of
// copies and novel blocks) or smaller (truncated) than OLD.
// make_v1_pair plus blocks no single old place explains: "collages" of
// 96-byte pieces taken from many random old blocks (anchors rarely vote
// twice for one block, so they stay REPLACE and only their chunk's old
// references make them small), some of them over blocks that others copy
// or read; a shifted run; and compressed content (zstd frames of old text
// with a few edits), so REPLACE chunks with old references appear next to
// every other operation.
inline std::pair<std::vector<uint8_t>, std::vector<uint8_t>> make_v1_ref_pair(uint64_t blocks, uint32_t bs,
                                                                               uint64_t seed) {
  auto [old_img, new_img] = make_v1_pair(blocks, bs, seed);
  std::mt19937_64 rng(seed * 131 + 7);
  auto r = [&](uint64_t n) { return rng() % n; };
  for (int i = 0; i < 12; i++) {
    uint64_t d = r(blocks);
    for (uint32_t at = 0; at + 96 <= bs; at += 96) {
      uint64_t from = r(blocks) * bs + r(bs - 96);
      std::copy(old_img.begin() + static_cast<ptrdiff_t>(from), old_img.begin() + static_cast<ptrdiff_t>(from + 96),
                new_img.begin() + static_cast<ptrdiff_t>(d * bs + at));
    }
  }
  {  // a run shifted by 100 bytes
    uint64_t from = r(blocks - 8), to = r(blocks - 8);
    std::copy(old_img.begin() + static_cast<ptrdiff_t>(from * bs + 100),
              old_img.begin() + static_cast<ptrdiff_t>((from + 6) * bs + 100),
              new_img.begin() + static_cast<ptrdiff_t>(to * bs));
  }
  for (int i = 0; i < 3; i++) {  // compressed content
    std::vector<uint8_t> text(6 * bs);
    uint64_t from = r(blocks - 8);
    std::copy(old_img.begin() + static_cast<ptrdiff_t>(from * bs),
              old_img.begin() + static_cast<ptrdiff_t>((from + 6) * bs), text.begin());
    for (int k = 0; k < 5; k++) text[r(text.size())] ^= 0x20;
    std::vector<uint8_t> z(ZSTD_compressBound(text.size()));
    z.resize(ZSTD_compress(z.data(), z.size(), text.data(), text.size(), 1));
    uint64_t to = r(blocks - 8);
    std::copy(z.begin(), z.begin() + static_cast<ptrdiff_t>(std::min<size_t>(z.size(), 6 * bs)),
              new_img.begin() + static_cast<ptrdiff_t>(to * bs));
  }
  return {old_img, new_img};
}

struct ChurnPair {
  std::vector<uint8_t> old_img, new_img;
  uint64_t changed = 0;  // new blocks whose content differs from old's at the same place (or past old's end)
};

inline void churn_text(uint8_t* out, uint32_t n, std::mt19937_64& rng) {
  static const char* kWords[] = {"the ",  "block ", "device ", "update ", "mapper ", "kernel ", "read ",
                                 "write ", "flush ", "cycle ", "copy ",  "save ",   "stash ",  "\n",
                                 "0x1f, ", "int ",  "return ", "{ ",   "} ",    "struct "};
  uint32_t i = 0;
  while (i < n) {
    const char* w = kWords[rng() % (sizeof(kWords) / sizeof(kWords[0]))];
    for (; *w && i < n; w++) out[i++] = static_cast<uint8_t>(*w);
  }
}

inline ChurnPair make_churn_pair(uint64_t old_blocks, uint64_t new_blocks, uint32_t bs, uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + 1);
  auto r = [&](uint64_t n) { return n ? rng() % n : 0; };
  ChurnPair p;
  p.old_img.assign(old_blocks * bs, 0);
  std::vector<std::vector<uint8_t>> rep;
  for (int k = 0; k < 3; k++) rep.push_back(random_bytes(bs, seed * 7 + static_cast<uint64_t>(k)));
  auto ob = [&](uint64_t b) { return p.old_img.data() + b * bs; };
  for (uint64_t b = 0; b < old_blocks; b++) {
    uint64_t kind = r(10);
    if (kind < 5) {
      auto x = random_bytes(bs, rng());
      std::memcpy(ob(b), x.data(), bs);
    } else if (kind < 8) {
      churn_text(ob(b), bs, rng);
    } else if (kind == 8) {
      std::memcpy(ob(b), rep[r(3)].data(), bs);
    }  // else zero
  }
  // The arrangement: shuffled runs, or a rotation of the whole image.
  std::vector<uint64_t> seq;  // old block for each new position
  if (seed % 3 == 0) {
    uint64_t k = 1 + r(std::max<uint64_t>(1, old_blocks / 4));
    for (uint64_t d = 0; d < old_blocks; d++) seq.push_back((d + k) % old_blocks);
  } else {
    std::vector<std::pair<uint64_t, uint64_t>> runs;
    for (uint64_t b = 0; b < old_blocks;) {
      uint64_t len = std::min<uint64_t>(1 + r(16), old_blocks - b);
      runs.push_back({b, len});
      b += len;
    }
    std::shuffle(runs.begin(), runs.end(), rng);
    for (auto [b, len] : runs)
      for (uint64_t i = 0; i < len; i++) seq.push_back(b + i);
  }
  // Swaps of equal-length runs.
  for (int i = 0; i < 4 && old_blocks >= 16; i++) {
    uint64_t len = 1 + r(4), a = r(old_blocks - len), b = r(old_blocks - len);
    if (a + len <= b || b + len <= a) std::swap_ranges(seq.begin() + static_cast<ptrdiff_t>(a), seq.begin() + static_cast<ptrdiff_t>(a + len), seq.begin() + static_cast<ptrdiff_t>(b));
  }
  constexpr uint64_t kNovel = UINT64_MAX;
  seq.resize(new_blocks, kNovel);
  for (uint64_t d = old_blocks; d < new_blocks; d++)
    if (r(2)) seq[d] = r(old_blocks);  // a copy of some old block
  p.new_img.assign(new_blocks * bs, 0);
  for (uint64_t d = 0; d < new_blocks; d++) {
    uint8_t* nb = p.new_img.data() + d * bs;
    if (seq[d] == kNovel) {
      auto x = random_bytes(bs, rng());
      std::memcpy(nb, x.data(), bs);
    } else {
      std::memcpy(nb, ob(seq[d]), bs);
    }
    uint64_t e = r(100);
    if (e < 8) {  // a few bytes edited
      for (int k = 0; k < 12; k++) nb[r(bs)] ^= static_cast<uint8_t>(1 + r(255));
    } else if (e < 13) {  // bytes inserted: the rest of the block shifts
      uint32_t at = static_cast<uint32_t>(r(bs / 2)), n = static_cast<uint32_t>(1 + r(20));
      std::memmove(nb + at + n, nb + at, bs - at - n);
      for (uint32_t k = 0; k < n; k++) nb[at + k] = static_cast<uint8_t>(r(256));
    } else if (e < 18) {
      auto x = random_bytes(bs, rng());
      std::memcpy(nb, x.data(), bs);
    } else if (e < 21) {
      std::memset(nb, 0, bs);
    } else if (e < 24) {
      std::memcpy(nb, rep[r(3)].data(), bs);
    } else if (e < 27) {
      churn_text(nb, bs, rng);
    }
  }
  for (uint64_t d = 0; d < new_blocks; d++)
    p.changed += d >= old_blocks || std::memcmp(p.new_img.data() + d * bs, ob(d), bs) != 0;
  return p;
}

}  // namespace udm::test

namespace udm::test {

// Every block changes and most COPY cycles are broken by SAVE: the first
// three quarters of the blocks swap in pairs (2-cycles), the last quarter
// is novel, so its old blocks are read by nobody and host the parked
// blocks. The diff has more operations than the image has blocks (the case
// the loader once refused: "v1 header op_count: 3535 for 3508 blocks").
inline std::pair<std::vector<uint8_t>, std::vector<uint8_t>> make_save_heavy_pair(uint64_t blocks, uint32_t bs,
                                                                                 uint64_t seed) {
  auto old_img = random_bytes(blocks * bs, seed);
  auto new_img = old_img;
  const uint64_t swapped = (blocks * 3 / 4) & ~uint64_t{1};
  for (uint64_t b = 0; b < swapped; b += 2) {
    std::copy_n(old_img.begin() + static_cast<ptrdiff_t>(b * bs), bs, new_img.begin() + static_cast<ptrdiff_t>((b + 1) * bs));
    std::copy_n(old_img.begin() + static_cast<ptrdiff_t>((b + 1) * bs), bs, new_img.begin() + static_cast<ptrdiff_t>(b * bs));
  }
  auto novel = random_bytes((blocks - swapped) * bs, seed + 1000);
  std::copy(novel.begin(), novel.end(), new_img.begin() + static_cast<ptrdiff_t>(swapped * bs));
  return {std::move(old_img), std::move(new_img)};
}

// veritysetup's same-device layout appended to `img` (whose size is a
// multiple of dbs): the superblock at hash offset img.size() (rounded up to
// `bs`), the tree from the next hash block, zeroes to a multiple of bs.
// Built with udm's verity code, which verity_compat_test checks byte for
// byte against veritysetup.
struct VerityImage {
  std::vector<uint8_t> img;
  std::vector<uint8_t> root;
  uint64_t hash_offset = 0;
};
inline VerityImage with_verity(std::vector<uint8_t> img, const std::vector<uint8_t>& salt, uint32_t hash_type = 1,
                        const std::string& alg = "sha256", uint32_t dbs = 4096, uint32_t hbs = 4096, uint32_t bs = 4096) {
  VerityImage v;
  verity::Params p;
  p.hash_type = hash_type;
  p.algorithm = alg;
  p.data_block_size = dbs;
  p.hash_block_size = hbs;
  p.data_blocks = img.size() / dbs;
  p.salt = salt;
  v.hash_offset = (img.size() + bs - 1) / bs * bs;
  p.hash_start = *verity::hash_start_for_offset(v.hash_offset, hbs, true);
  auto tree = verity::build_tree_mem(p, img);
  EXPECT_TRUE(tree.ok()) << tree.status().to_string();
  verity::Superblock sb;
  sb.hash_type = hash_type;
  sb.uuid = verity::random_uuid();
  sb.algorithm = alg;
  sb.data_block_size = dbs;
  sb.hash_block_size = hbs;
  sb.data_blocks = p.data_blocks;
  sb.salt = salt;
  img.resize(p.hash_start * hbs + tree->blocks.size(), 0);
  auto e = verity::encode_superblock(sb);
  std::copy(e.begin(), e.end(), img.begin() + static_cast<ptrdiff_t>(v.hash_offset));
  std::copy(tree->blocks.begin(), tree->blocks.end(), img.begin() + static_cast<ptrdiff_t>(p.hash_start * hbs));
  img.resize((img.size() + bs - 1) / bs * bs, 0);
  v.img = std::move(img);
  v.root = tree->root;
  return v;
}

}  // namespace udm::test
