// Real compressed read-only filesystem pairs (the kind of pair that once
// made update-diff write a v1 diff it could not read back: "v1 header
// op_count: 3535 for 3508 blocks"): erofs (mkfs.erofs, lz4) and squashfs
// (mksquashfs) images of two versions of a generated tree, where almost
// every block of the image differs — files added before the others shift
// everything, files are edited, renamed (new place in the layout), deleted
// and added. The images differ in size, as real builds do.
//
// For each pair: the diff (in process) loads, reads as NEW through the
// `update` target block by block, applies offline to exactly NEW, and
// survives the power-cut sweep of the copy-back (every stride-th write:
// the full sweep of ~2000 writes x 2 modes takes minutes); the same pair
// through the `udm` CLI: update-diff, update-info, update-apply --verify.
// Needs mkfs.erofs and mksquashfs (scripts/setup); label e2e.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <cstring>
#include <fstream>

#include "io/memory_device.h"
#include "update/apply_v1.h"
#include "update/format_v1_io.h"
#include "update_util.h"
#include "v1_sweep.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;
namespace fs = std::filesystem;

namespace {

void put(const fs::path& p, const std::vector<uint8_t>& data) {
  fs::create_directories(p.parent_path());
  write_file(p.string(), data);
}

std::vector<uint8_t> text_file(size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  churn_text(v.data(), static_cast<uint32_t>(n), rng);
  // Line numbers make lines unique (as in real sources), so edits are local.
  for (size_t i = 0, line = 0; i + 8 < n; i += 60 + rng() % 40, line++) {
    auto s = std::to_string(line);
    std::copy(s.begin(), s.end(), v.begin() + static_cast<ptrdiff_t>(i));
  }
  return v;
}

// Version 1 of the tree: ~6 MB in ~220 files (text and binaries) in 12 directories.
void make_tree_v1(const fs::path& root, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int f = 0; f < 220; f++) {
    fs::path p = root / ("dir" + std::to_string(f % 12)) / ("file" + std::to_string(f) + (f % 3 ? ".txt" : ".bin"));
    size_t n = 1000 + rng() % 50000;
    put(p, f % 3 ? text_file(n, rng) : random_bytes(n, rng()));
  }
}

// Version 2: a large file that sorts first (everything after it moves), a
// third of the files edited (bytes changed, lines inserted), a quarter
// renamed into other directories (another place in the layout), some
// deleted, some added.
void make_tree_v2(const fs::path& root, uint64_t seed) {
  std::mt19937_64 rng(seed * 7 + 1);
  put(root / "000-first.bin", random_bytes(150000, seed));
  std::vector<fs::path> files;
  for (auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file() && e.path().filename() != "000-first.bin") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (auto& p : files) {
    uint64_t what = rng() % 100;
    if (what < 33) {  // edit
      auto d = read_file(p.string());
      if (p.extension() == ".txt") {
        auto ins = text_file(20 + rng() % 300, rng);
        size_t at = rng() % d.size();
        d.insert(d.begin() + static_cast<ptrdiff_t>(at), ins.begin(), ins.end());
      }
      for (int k = 0; k < 10; k++) d[rng() % d.size()] ^= 0x20;
      write_file(p.string(), d);
    } else if (what < 58) {  // rename into another directory
      fs::path to = root / ("dir" + std::to_string(rng() % 12)) / ("moved-" + p.filename().string());
      fs::rename(p, to);
    } else if (what < 72) {
      fs::remove(p);
    }
  }
  for (int f = 0; f < 40; f++) {
    fs::path p = root / ("dir" + std::to_string(rng() % 12)) / ("new" + std::to_string(f) + ".txt");
    put(p, f % 2 ? text_file(2000 + rng() % 30000, rng) : random_bytes(2000 + rng() % 30000, rng()));
  }
}

struct FsPair {
  std::vector<uint8_t> old_img, new_img;
  std::string old_path, new_path;
};

void build_images(const TempDir& t, const std::string& kind, FsPair& p) {
  fs::path tree = t.file("tree");
  make_tree_v1(tree, 11);
  auto mk = [&](const std::string& out) -> CmdResult {
    if (kind == "erofs")
      return run({"mkfs.erofs", "-zlz4", "-T0", "-U", "11111111-2222-4333-8444-555555555555", "--all-root", "--quiet",
                  out, tree.string()});
    return run({"mksquashfs", tree.string(), out, "-noappend", "-no-progress", "-quiet", "-all-root", "-mkfs-time",
                "0", "-all-time", "0", "-comp", "lz4"});
  };
  p.old_path = t.file("old.img");
  p.new_path = t.file("new.img");
  auto r = mk(p.old_path);
  ASSERT_TRUE(r.ok()) << r.describe();
  make_tree_v2(tree, 11);
  r = mk(p.new_path);
  ASSERT_TRUE(r.ok()) << r.describe();
  p.old_img = read_file(p.old_path);
  p.new_img = read_file(p.new_path);
  ASSERT_EQ(p.old_img.size() % 4096, 0u);
  ASSERT_EQ(p.new_img.size() % 4096, 0u);
}

void run_pair(const std::string& kind) {
  const std::string tool = kind == "erofs" ? "mkfs.erofs" : "mksquashfs";
  if (!have_tool(tool)) GTEST_SKIP() << tool << " missing (scripts/setup installs it)";
  TempDir t;
  FsPair p;
  build_images(t, kind, p);
  if (::testing::Test::HasFatalFailure()) return;
  const uint32_t bs = 4096;
  const uint64_t nb = p.new_img.size() / bs, ob = p.old_img.size() / bs;
  uint64_t changed = 0;
  for (uint64_t b = 0; b < nb; b++)
    changed += b >= ob || std::memcmp(p.new_img.data() + b * bs, p.old_img.data() + b * bs, bs) != 0;

  DiffV1Options o;
  o.progress = false;
  o.level = 3;
  auto st = make_diff_v1(p.old_path, p.new_path, t.file("diff"), o);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  std::cerr << kind << ": old " << ob << " blocks, new " << nb << " blocks, " << changed << " changed ("
            << 100 * changed / nb << "%); ops " << st->ops << " (COPY " << st->copy << " SAVE " << st->save_ops
            << " XOR " << st->xor_ops << " DELTA " << st->delta << " REPLACE " << st->replace << " ZERO " << st->zero
            << "), cycles: " << st->saves << " broken by SAVE (" << st->zero_parks << " in free zero blocks), " << st->converted
            << " by REPLACE, " << st->trimmed << " by trimming a DELTA; diff " << st->diff_bytes << " bytes\n";
  EXPECT_GE(changed * 10, nb * 9) << "the pair should change almost every block";
  if (kind == "erofs") {
    // Block-aligned files: moves in cycles, broken by SAVE — the shape of the
    // report (more operations than blocks). Guards the coverage, not the code:
    // if a new mkfs.erofs lays files out otherwise, make_tree_v2 needs a change.
    EXPECT_GT(st->save_ops, 0u) << "the erofs pair no longer breaks a cycle with SAVE";
  }
  auto diff = read_file(t.file("diff"));
  auto idx = load_v1_bytes(diff);
  ASSERT_TRUE(idx.ok()) << idx.status().to_string();
  EXPECT_EQ(idx->h.image_blocks, nb);
  EXPECT_EQ(idx->old_blocks(), ob);

  // Through the target without copy-back: every block alone.
  {
    auto sys0 = p.old_img;
    sys0.resize(std::max(p.old_img.size(), p.new_img.size()), 0x6b);
    MapResolver r;
    r.devs["sys"] = std::make_shared<MemoryDevice>(sys0);
    r.devs["diff"] = std::make_shared<MemoryDevice>(diff);
    auto tg = make_update(r, p.new_img.size(), false);
    ASSERT_TRUE(tg.ok()) << tg.status().to_string();
    LeakCheck leak(p.old_img, p.new_img, sys0, diff, bs);
    ASSERT_TRUE(leak.check(**tg, kind + " target, no copy-back", true));
  }
  // Offline apply in process.
  {
    MemoryDevice d(diff, true), sys(p.old_img);
    auto blocks = v1_compute_all(d, sys, *idx);
    ASSERT_TRUE(blocks.ok()) << blocks.status().to_string();
    MemoryDevice out(std::max(p.old_img.size(), p.new_img.size()));
    auto cur = sys.contents();
    ASSERT_TRUE(out.write(0, cur).ok());
    ASSERT_TRUE(v1_write_all(out, *idx, *blocks).ok());
    auto got = out.contents();
    ASSERT_TRUE(std::equal(p.new_img.begin(), p.new_img.end(), got.begin())) << "offline apply != new";
  }
  // The power-cut sweep of the copy-back, every stride-th write.
  SweepOpts so;
  so.stride = std::max<uint64_t>(1, st->ops / 40);
  so.sys_extra_blocks = 4;
  so.racing_reads = false;  // the live target is read block by block at every point instead
  SweepResult res;
  v1_sweep(p.old_img, p.new_img, t.file("diff"), st->ops, bs, so, &res);
  if (::testing::Test::HasFatalFailure()) return;
  std::cerr << kind << " sweep: " << res.points << " cut points (every " << so.stride << "th of " << res.full_writes
            << " writes, 2 modes), " << res.resumed_from_record << " resumed from a record\n";

  // The CLI on the same pair (default level and chunk size).
  auto r = run({udm_bin(), "update-diff", p.old_path, p.new_path, "-o", t.file("cli.diff")});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = run({udm_bin(), "update-info", t.file("cli.diff")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("new image:         " + std::to_string(nb) + " blocks"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("old image:         " + std::to_string(ob) + " blocks"), std::string::npos) << r.out;
  ASSERT_TRUE(run({"cp", p.old_path, t.file("apply.img")}).ok());
  r = run({udm_bin(), "update-apply", t.file("apply.img"), t.file("cli.diff"), "--verify", p.new_path});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(sha256_file(t.file("apply.img")), sha256_file(p.new_path));

  // The pair padded to one size (the shape of the original report): more
  // operations than blocks is fine.
  auto po = p.old_img, pn = p.new_img;
  const size_t m = std::max(po.size(), pn.size());
  po.resize(m, 0);
  pn.resize(m, 0);
  write_file(t.file("po.img"), po);
  write_file(t.file("pn.img"), pn);
  r = run({udm_bin(), "update-diff", t.file("po.img"), t.file("pn.img"), "-o", t.file("p.diff")});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = run({udm_bin(), "update-info", t.file("p.diff")});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = run({udm_bin(), "update-apply", t.file("po.img"), t.file("p.diff"), "--verify", t.file("pn.img")});
  ASSERT_TRUE(r.ok()) << r.describe();
}

}  // namespace

TEST(UpdateFs, ErofsLz4PairAlmostEveryBlockChanges) { run_pair("erofs"); }
TEST(UpdateFs, SquashfsPairAlmostEveryBlockChanges) { run_pair("squashfs"); }

// update-info says where the bytes go, per operation kind and per kind of
// reference, and its numbers add up to the file.
TEST(UpdateFs, V1InfoShowsWhereTheBytesGo) {
  TempDir t;
  auto [o, n] = make_v1_ref_pair(300, 4096, 2);
  write_file(t.file("o"), o);
  write_file(t.file("n"), n);
  DiffV1Options opt;
  opt.chunk_blocks = 8;
  opt.level = 3;
  opt.progress = false;
  ASSERT_TRUE(make_diff_v1(t.file("o"), t.file("n"), t.file("d"), opt).ok());
  struct {
    std::vector<uint8_t> diff;
  } b{read_file(t.file("d"))};
  auto r = run({udm_bin(), "update-info", t.file("d")});
  ASSERT_TRUE(r.ok()) << r.describe();
  auto idx = load_v1_bytes(b.diff);
  ASSERT_TRUE(idx.ok());
  uint64_t with = 0, alone = 0, xb = 0, fb = 0;
  for (const auto& c : idx->chunks) (c.refs.empty() ? alone : with) += c.length;
  for (const auto& c : idx->xchunks) xb += c.length;
  for (const auto& f : idx->frames) fb += f.length;
  ASSERT_GT(with, 0u);
  auto field = [&](const std::string& row) -> uint64_t {
    auto at = r.out.find("  " + row + " ");
    if (at == std::string::npos) return UINT64_MAX;
    return std::stoull(r.out.substr(at + 2 + row.size()));
  };
  EXPECT_EQ(field("REPLACE, old refs"), with) << r.out;
  EXPECT_EQ(field("REPLACE, alone"), alone) << r.out;
  EXPECT_EQ(field("XOR"), xb) << r.out;
  EXPECT_EQ(field("DELTA"), fb) << r.out;
  EXPECT_EQ(field("metadata (all ops)"), idx->h.meta_size) << r.out;
  EXPECT_EQ(kV1HeaderSize + (idx->h.stash_blocks ? 4096u : 0u) + idx->h.meta_size + with + alone + xb + fb, b.diff.size());
  EXPECT_NE(r.out.find("REPLACE chunk refs"), std::string::npos) << r.out;
  EXPECT_EQ(field("REPLACE chunk refs"), 0u) << "a chunk's references are never its own blocks: " << r.out;
}
