// Power-cut sweep on a real ext4 image with 1 KiB blocks under a bow target
// with 4 KiB blocks (the sub-page case that crashed the seed's prototype).
// The workload is the block-level difference between the image and a copy
// changed with debugfs (files deleted, rewritten and added: bitmaps, inode
// tables, directories, journal-less data), written in a shuffled order with
// flushes between. After a power cut after every write N, bow-restore gives
// back every block ext4 had in use at checkpoint time, e2fsck -fn finds the
// restored image clean, and every file reads as it was.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <regex>
#include <sstream>

#include "bow_test_util.h"
#include "common/sys_util.h"
#include "io/fault_device.h"

using namespace udm;
using namespace udm::bow;
using namespace udm::bow::test;
using udm::test::run;
using udm::test::sh;
using udm::test::TempDir;

namespace {

constexpr uint32_t kFsBlock = 1024, kBowBlock = 4096;
constexpr uint64_t kImage = 4u << 20;

// Free 1 KiB blocks as dumpe2fs reports them.
std::set<uint64_t> ext4_free_blocks(const std::string& img) {
  auto r = run({"dumpe2fs", img});
  EXPECT_TRUE(r.ok()) << r.describe();
  std::set<uint64_t> free;
  std::regex line(R"(^\s+Free blocks: (.*)$)");
  std::istringstream in(r.out);
  std::string l;
  while (std::getline(in, l)) {
    std::smatch m;
    if (!std::regex_match(l, m, line)) continue;
    std::istringstream ranges(m[1].str());
    std::string item;
    while (std::getline(ranges, item, ',')) {
      uint64_t a, b;
      if (sscanf(item.c_str(), " %lu-%lu", &a, &b) == 2) {
        for (uint64_t x = a; x <= b; x++) free.insert(x);
      } else if (sscanf(item.c_str(), " %lu", &a) == 1) {
        free.insert(a);
      }
    }
  }
  return free;
}

std::string file_sums(const std::string& img, const std::vector<std::string>& files) {
  std::string out;
  for (const auto& f : files) {
    auto r = sh(fmt::format("debugfs -R 'cat {}' {} 2>/dev/null | sha256sum", f, img));
    out += f + " " + r.out;
  }
  return out;
}

}  // namespace

class BowExt4Sweep : public ::testing::TestWithParam<bool> {};

// Parameter: write-back on (the default) or off.
TEST_P(BowExt4Sweep, PowerCutAfterEveryWriteThenRestoreAndFsck) {
  const bool write_back = GetParam();
  for (const char* tool : {"mkfs.ext4", "debugfs", "e2fsck", "dumpe2fs"})
    if (!udm::test::have_tool(tool)) GTEST_SKIP() << "needs " << tool;
  TempDir tmp;
  // A small filesystem with files.
  ASSERT_TRUE(sh(fmt::format("mkdir -p {0}/src/dir && cd {0}/src && "
                             "head -c 300000 /dev/urandom > a && head -c 70000 /dev/urandom > b && "
                             "head -c 5000 /dev/urandom > dir/c && head -c 120000 /dev/urandom > d",
                             tmp.path()))
                  .ok());
  std::string a = tmp.file("a.img"), b = tmp.file("b.img");
  udm::test::make_sparse_file(a, kImage);
  auto r = run({"mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^has_journal", "-d",
                tmp.file("src"), a});
  ASSERT_TRUE(r.ok()) << r.describe();
  const std::vector<std::string> files = {"/a", "/b", "/dir/c", "/d"};
  std::string sums_before = file_sums(a, files);
  ASSERT_TRUE(sh(fmt::format("cp {} {}", a, b)).ok());
  // Change it: delete, rewrite, add.
  ASSERT_TRUE(sh(fmt::format("head -c 200000 /dev/urandom > {0}/new && head -c 3000 /dev/urandom "
                             "> {0}/small",
                             tmp.path()))
                  .ok());
  r = run({"debugfs", "-w", "-R", "rm /a", b});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = sh(fmt::format("printf 'rm /b\\nwrite {0}/new /b\\nwrite {0}/small /dir/e\\nmkdir /x\\n"
                     "write {0}/new /x/y\\n' | debugfs -w -f - {1}",
                     tmp.path(), b));
  ASSERT_TRUE(r.ok()) << r.describe();
  r = run({"e2fsck", "-fn", b});
  ASSERT_TRUE(r.ok()) << "debugfs left the changed image unclean: " << r.describe();

  auto img_a = udm::test::read_file(a), img_b = udm::test::read_file(b);
  std::set<uint64_t> fs_free = ext4_free_blocks(a), fs_free_b = ext4_free_blocks(b);
  ASSERT_GT(fs_free.size(), 1000u);
  // Bow blocks wholly free in ext4's view are trimmed (what FITRIM would send).
  std::set<uint64_t> bow_free;
  for (uint64_t bb = 1; bb < kImage / kBowBlock; bb++) {
    bool all = true;
    for (uint64_t k = 0; k < kBowBlock / kFsBlock; k++) all &= fs_free.count(bb * 4 + k) > 0;
    if (all) bow_free.insert(bb);
  }
  // The workload: runs of changed 1 KiB blocks, shuffled, flush every 4.
  struct W {
    uint64_t off, len;
  };
  std::vector<W> writes;
  for (uint64_t blk = 0; blk < kImage / kFsBlock;) {
    auto same = [&](uint64_t x) {
      return std::equal(img_a.begin() + x * kFsBlock, img_a.begin() + (x + 1) * kFsBlock,
                        img_b.begin() + x * kFsBlock);
    };
    if (same(blk)) {
      blk++;
      continue;
    }
    uint64_t end = blk + 1;
    while (end < kImage / kFsBlock && !same(end) && end - blk < 8) end++;
    writes.push_back({blk * kFsBlock, (end - blk) * kFsBlock});
    blk = end;
  }
  ASSERT_GT(writes.size(), 10u);
  std::set<uint64_t> written_blocks;  // 1 KiB blocks the workload writes
  for (const W& w : writes)
    for (uint64_t x = w.off / kFsBlock; x < (w.off + w.len) / kFsBlock; x++) written_blocks.insert(x);
  std::shuffle(writes.begin(), writes.end(), std::mt19937_64(7));

  auto run_once = [&](uint64_t cut, uint64_t* ops_out) {
    auto disk = std::make_shared<FaultDevice>(img_a);
    if (cut != UINT64_MAX) disk->cut_after_writes(cut);
    BowOptions o;
    o.block_size = kBowBlock;
    o.write_back = write_back;
    auto bow = BowTarget::create(disk, kImage, o).value();
    // Trims (one per free extent, as FITRIM sends them) zero the blocks on
    // the device: they are cut like any write.
    bool trimmed = true;
    for (auto it = bow_free.begin(); it != bow_free.end() && trimmed;) {
      uint64_t a = *it, e = a + 1;
      while (++it != bow_free.end() && *it == e) e++;
      trimmed = bow->trim(a * kBowBlock, (e - a) * kBowBlock).ok();
    }
    bool cp = trimmed && bow->set_state(1).ok();
    if (cp) {
      for (size_t i = 0; i < writes.size(); i++) {
        const W& w = writes[i];
        if (!bow->write(w.off, std::span(img_b).subspan(w.off, w.len)).ok()) break;
        if (i % 4 == 3 && !bow->flush().ok()) break;
      }
      (void)bow->flush();
    }
    if (ops_out) *ops_out = disk->write_ops();
    if (cut == UINT64_MAX) {
      // No cut: the view is the changed filesystem (every block it uses;
      // its free blocks may hold backups); commit makes it real.
      auto view = read_all(*bow);
      for (uint64_t blk = 0; blk < kImage / kFsBlock; blk++) {
        if (fs_free_b.count(blk)) continue;
        EXPECT_TRUE(std::equal(view.begin() + blk * kFsBlock, view.begin() + (blk + 1) * kFsBlock,
                               img_b.begin() + blk * kFsBlock))
            << "block " << blk;
      }
      EXPECT_TRUE(bow->set_state(2).ok());
      EXPECT_EQ(disk->current_image(), view);
      udm::test::write_file(tmp.file("committed.img"), view);
      auto f = run({"e2fsck", "-fn", tmp.file("committed.img")});
      EXPECT_TRUE(f.ok()) << f.describe();
    }
    return std::make_pair(cp, disk->durable_image());
  };
  uint64_t total = 0;
  run_once(UINT64_MAX, &total);
  ASSERT_GT(total, 20u);
  std::cout << fmt::format("{} changed runs, {} lower write ops swept\n", writes.size(), total);
  std::string restored = tmp.file("restored.img");
  for (uint64_t n = 0; n <= total; n++) {
    SCOPED_TRACE(fmt::format("cut after {} of {} writes", n, total));
    auto [cp, durable] = run_once(n, nullptr);
    auto d = std::make_shared<MemoryDevice>(durable);
    auto chain = read_chain(*d);
    if (cp) {
      ASSERT_TRUE(chain.ok()) << chain.status().to_string();
    }
    if (chain.ok()) {
      ASSERT_TRUE(apply_chain(*d, chain.value()).ok());
    }
    auto img = d->contents();
    // Every block ext4 had in use is back, byte for byte.
    for (uint64_t blk = 0; blk < kImage / kFsBlock; blk++) {
      if (fs_free.count(blk)) continue;
      ASSERT_TRUE(std::equal(img.begin() + blk * kFsBlock, img.begin() + (blk + 1) * kFsBlock,
                             img_a.begin() + blk * kFsBlock))
          << "in-use block " << blk;
    }
    // Without restore: a target over the rebooted device reads every
    // trimmed block as zeroes (1 KiB pieces the workload wrote: zeroes or
    // the new bytes); the copies, log and live block 0 bow put there never show.
    if (cp) {
      auto raw = std::make_shared<MemoryDevice>(durable);
      BowOptions o;
      o.block_size = kBowBlock;
      auto t = BowTarget::create(raw, kImage, o);
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      auto view = read_all(*t.value());
      for (uint64_t bb : bow_free)
        for (uint64_t k = 0; k < kBowBlock / kFsBlock; k++) {
          uint64_t blk = bb * (kBowBlock / kFsBlock) + k;
          auto got = std::span(view).subspan(blk * kFsBlock, kFsBlock);
          bool zero = std::all_of(got.begin(), got.end(), [](uint8_t x) { return x == 0; });
          bool written = written_blocks.count(blk) > 0;
          bool now = written && std::equal(got.begin(), got.end(), img_b.begin() + blk * kFsBlock);
          ASSERT_TRUE(zero || now) << "trimmed 1 KiB block " << blk << " reads neither zeroes nor its new bytes";
        }
    }
    udm::test::write_file(restored, img);
    r = run({"e2fsck", "-fn", restored});
    ASSERT_TRUE(r.ok()) << r.describe();
    if (n % 8 == 0) {
      ASSERT_EQ(file_sums(restored, files), sums_before);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WriteBack, BowExt4Sweep, ::testing::Bool());
