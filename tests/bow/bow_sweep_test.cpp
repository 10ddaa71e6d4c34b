// Power-cut sweeps over trim -> checkpoint -> filesystem-like writes (and
// over the commit), cutting power after every write-type operation N of the
// lower device. After every cut:
//  * bow-restore gives back, byte for byte, every block in use at checkpoint
//    time (a cut during the checkpoint itself leaves no log and the in-use
//    blocks untouched);
//  * without restore, a bow target over the rebooted device reads every
//    sector as the model says: its value at the last completed flush, or a
//    value written after it (with all unflushed writes dropped, or a random
//    subset kept). Free space is part of that: a block trimmed or zeroed with
//    unmap reads as zeroes once that was flushed (the checkpoint flushes), so
//    saved copies, log blocks and the relocated block 0 never show; and
//    committing gives the same bytes;
//  * a cut during the commit leaves a device that reads the same (a new
//    target finishes a marked commit), restore refuses it once marked.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <iostream>
#include <map>
#include <optional>

#include "bow_test_util.h"
#include "common/sys_util.h"
#include "io/fault_device.h"

using namespace udm;
using namespace udm::bow;
using namespace udm::bow::test;

namespace {

constexpr uint64_t kSec = 512;

struct Op {
  enum Kind { kWrite, kZero, kZeroUnmap, kFlush, kTrim } kind;
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
  // state: the target's state when the op ran (trims: whole blocks in state
  // 0, nothing in state 1).
  void apply(const Op& op, int64_t idx, int state, uint32_t bs) {
    uint64_t a = op.off, e = op.off + op.len;
    if (op.kind == Op::kTrim) {
      if (state != 0) return;
      a = std::max<uint64_t>((op.off + bs - 1) / bs, 1) * bs;
      e = (op.off + op.len) / bs * bs;
    }
    for (uint64_t s = a / kSec; s < e / kSec; s++) {
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
  if (op.kind != Op::kWrite) return std::vector<uint8_t>(op.len, 0);
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
    switch (g() % 9) {
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
      case 8:  // zero-out that may unmap (fstrim through loop over the FUSE file)
        op.kind = Op::kZeroUnmap;
        op.off = (g() % (size / bs - 3)) * bs + (g() % 2) * 1024;
        op.len = 2 * bs;
        break;
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
  std::vector<Op> prep;     // state 0: the trims (and zero-outs) that free them
  std::vector<Op> ops;
};

Setup make_setup(uint32_t bs, uint64_t blocks, uint64_t seed) {
  Setup s{bs, blocks * bs, pattern(blocks * bs, seed), {}, {}, {}};
  // Free: the upper half, plus a few holes in the lower half; every third
  // one freed by a zero-out that may unmap (what fstrim over the FUSE export
  // sends), the others by trim.
  for (uint64_t b = blocks / 2; b < blocks; b++) s.free.insert(b);
  for (uint64_t b = 5; b < blocks / 2; b += 7) s.free.insert(b);
  for (uint64_t b : s.free)
    s.prep.push_back({b % 3 == 0 ? Op::kZeroUnmap : Op::kTrim, b * bs, bs, 0});
  s.ops = workload(s.size, bs, seed);
  return s;
}

Status run_op(BowTarget& bow, const Op& op) {
  switch (op.kind) {
    case Op::kFlush: return bow.flush();
    case Op::kTrim: return bow.trim(op.off, op.len);
    case Op::kZero: return bow.write_zeroes(op.off, op.len, false, false);
    case Op::kZeroUnmap: return bow.write_zeroes(op.off, op.len, false, true);
    case Op::kWrite: return bow.write(op.off, op_data(op));
  }
  return Status::Ok();
}

// Op indices in the model: prep ops are numbered after the workload's.
const Op& op_at(const Setup& s, int64_t idx) {
  return idx < static_cast<int64_t>(s.ops.size()) ? s.ops[idx] : s.prep[idx - s.ops.size()];
}

struct RunResult {
  bool checkpointed = false;
  std::vector<uint8_t> durable;
  uint64_t write_ops = 0;
  Model model;
  BowStats stats;
  uint64_t commit_ops = 0;
};

// Runs trim -> checkpoint -> workload on a fault device cut after `cut`
// write ops (UINT64_MAX: never); stops at the first failure. With `commit`,
// the cut is armed only for the commit that follows a complete workload.
RunResult run(const Setup& s, uint64_t cut, double survival, uint64_t seed, bool wb,
              bool commit = false) {
  auto disk = std::make_shared<FaultDevice>(s.image);
  if (survival > 0) disk->set_unflushed_survival(survival, seed);
  if (cut != UINT64_MAX && !commit) disk->cut_after_writes(cut);
  RunResult r{false, {}, 0, Model(s.image), {}};
  BowOptions o;
  o.block_size = s.bs;
  o.write_back = wb;
  auto t = BowTarget::create(disk, s.size, o);
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  auto bow = t.value();
  bool ok = true;
  for (size_t i = 0; i < s.prep.size() && ok; i++) {
    ok = run_op(*bow, s.prep[i]).ok();
    if (ok) r.model.apply(s.prep[i], static_cast<int64_t>(s.ops.size() + i), 0, s.bs);
  }
  if (ok && bow->set_state(1).ok()) {
    r.checkpointed = true;
    r.model.flushed();  // the checkpoint flushes before it writes the log
    for (size_t i = 0; i < s.ops.size(); i++) {
      const Op& op = s.ops[i];
      if (!run_op(*bow, op).ok()) break;
      if (op.kind == Op::kFlush) r.model.flushed();
      else r.model.apply(op, static_cast<int64_t>(i), 1, s.bs);
    }
  }
  r.stats = bow->stats();
  if (commit) {
    uint64_t before = disk->write_ops();
    if (cut != UINT64_MAX) disk->cut_after_writes(cut);
    if (bow->set_state(2).ok()) r.model.flushed();
    r.commit_ops = disk->write_ops() - before;
  }
  r.write_ops = disk->write_ops();
  r.durable = disk->durable_image();
  return r;
}

std::vector<uint8_t> checkpoint_image(const Setup& s) {
  return s.image;  // nothing writes in-use blocks before the checkpoint
}

// op_data, computed once per op (the checks look at every sector).
const std::vector<uint8_t>& op_bytes(const Op& op) {
  static std::map<std::pair<uint64_t, uint64_t>, std::vector<uint8_t>> cache;
  auto key = std::make_pair(op.seed, op.len);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, op_data(op)).first;
  return it->second;
}

// Every sector of `view` must be one of its model candidates (the value at
// the last flush or a later one); sectors nothing touched keep the image's.
::testing::AssertionResult reads_as_model(const Setup& s, const Model& m,
                                          const std::vector<uint8_t>& view) {
  for (uint64_t sec = 0; sec < s.size / kSec; sec++) {
    const auto& cands = m.sectors[sec];
    auto got = std::span(view).subspan(sec * kSec, kSec);
    bool match = false;
    if (cands.empty()) match = std::equal(got.begin(), got.end(), s.image.begin() + sec * kSec);
    for (int64_t c : cands) {
      if (c < 0) {
        match |= std::equal(got.begin(), got.end(), s.image.begin() + sec * kSec);
      } else {
        const Op& op = op_at(s, c);
        if (op.kind != Op::kWrite) {
          match |= std::all_of(got.begin(), got.end(), [](uint8_t x) { return x == 0; });
        } else {
          const auto& data = op_bytes(op);
          match |= std::equal(got.begin(), got.end(), data.begin() + (sec * kSec - op.off));
        }
      }
    }
    if (!match) {
      bool zero = std::all_of(got.begin(), got.end(), [](uint8_t x) { return x == 0; });
      return ::testing::AssertionFailure()
             << "sector " << sec << " (block " << sec * kSec / s.bs << (s.free.count(sec * kSec / s.bs) ? ", free at checkpoint" : "")
             << ") reads " << (zero ? "zeroes" : "non-zero bytes") << ", neither its flushed value nor a later one ("
             << cands.size() << " candidates:" << [&] {
                  std::string o;
                  for (int64_t c : cands) {
                    if (c < 0) { o += " image"; continue; }
                    const Op& op = op_at(s, c);
                    o += fmt::format(" op{}(kind {} off {} len {})", c, int(op.kind), op.off, op.len);
                  }
                  return o;
                }() << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// Blocks free at the checkpoint that hold exactly `block0` are counted and
// zeroed in `view` (see the callers for when that is allowed).
int forgive_block0_copies(const Setup& s, std::vector<uint8_t>& view,
                          std::span<const uint8_t> block0) {
  int n = 0;
  for (uint64_t b : s.free) {
    auto blk = std::span(view).subspan(b * s.bs, s.bs);
    if (std::equal(blk.begin(), blk.end(), block0.begin())) {
      std::fill(blk.begin(), blk.end(), 0);
      n++;
    }
  }
  return n;
}

// What a block that should be zero holds (for the failure message): a log
// or intent block, a copy of block 0 or of another in-use block as it was at
// the checkpoint, or the block's bytes in the durable image.
std::string what_is(const Setup& s, const RunResult& r, std::span<const uint8_t> blk) {
  uint32_t magic = static_cast<uint32_t>(blk[0]) | static_cast<uint32_t>(blk[1]) << 8 |
                   static_cast<uint32_t>(blk[2]) << 16 | static_cast<uint32_t>(blk[3]) << 24;
  if (magic == kLogMagic) return "a log block";
  if (magic == kIntentMagic) return "an intent block";
  const auto img = checkpoint_image(s);
  for (uint64_t b = 0; b < s.size / s.bs; b++)
    if (!s.free.count(b) && std::equal(blk.begin(), blk.end(), img.begin() + b * s.bs))
      return fmt::format("a copy of in-use block {} as it was at the checkpoint", b);
  std::string hex;
  for (size_t i = 0; i < 16; i++) hex += fmt::format("{:02x}", blk[i]);
  (void)r;
  return "unknown bytes " + hex + "...";
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
    auto img = d->contents();
    ASSERT_TRUE(in_use_blocks_equal(img, checkpoint_image(s), s.free, s.bs));
    // ... and free space as it was at the checkpoint (zeroes) wherever the
    // workload never wrote: nothing bow put there (copies, log blocks, the
    // intent, the live block 0) is left behind.
    if (chain.ok()) {
      std::set<uint64_t> touched;
      for (const Op& op : s.ops)
        if (op.kind != Op::kFlush)
          for (uint64_t b = op.off / s.bs; b < (op.off + op.len + s.bs - 1) / s.bs; b++) touched.insert(b);
      for (uint64_t b : s.free) {
        if (touched.count(b)) continue;
        auto blk = std::span(img).subspan(b * s.bs, s.bs);
        ASSERT_TRUE(std::all_of(blk.begin(), blk.end(), [](uint8_t x) { return x == 0; }))
            << "free block " << b << " holds data after the restore: " << what_is(s, r, blk);
      }
    }
  }
  // 2. Without restore: a target over the rebooted device (resuming the
  // checkpoint if there is one) reads as the model says, free space included.
  auto d = std::make_shared<MemoryDevice>(r.durable);
  BowOptions o;
  o.block_size = s.bs;
  auto t = BowTarget::create(d, s.size, o);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  auto bow = t.value();
  ASSERT_EQ(bow->stats().state, r.checkpointed ? 1 : 0);
  auto view = read_all(*bow);
  if (!r.checkpointed) {
    // A cut inside the checkpoint, after its copies of block 0 were flushed
    // and before the log was written, leaves them in the two free blocks it
    // took: nothing on the device names them (block 0 is still the
    // filesystem's). The only exception to "free reads zero".
    int copies = forgive_block0_copies(s, view, std::span(s.image).first(s.bs));
    ASSERT_LE(copies, 2);
  }
  ASSERT_TRUE(reads_as_model(s, r.model, view));
  // 3. Committing changes no read, and the device then holds exactly that.
  if (!r.checkpointed) return;
  ASSERT_TRUE(bow->set_state(2).ok());
  ASSERT_EQ(read_all(*bow), view);
  ASSERT_EQ(d->contents(), view);
}

// A cut during the commit (after a complete, flushed workload): the device
// reads the same after a restart whatever the cut hit; restore works until
// the commit marks the log and is refused (EBUSY) after; a new target over a
// marked log finishes the commit. Only the block that held the live block 0
// may, for a cut between block 0 going home and its old place being zeroed,
// hold a copy of block 0 (nothing on the device says where it was).
void check_commit_cut(const Setup& s, const RunResult& r, const std::string& what) {
  SCOPED_TRACE(what);
  std::optional<LogBlock> log;
  {
    auto d = std::make_shared<MemoryDevice>(r.durable);
    auto chain = read_chain(*d);
    if (chain.ok()) {
      ASSERT_TRUE(apply_chain(*d, chain.value()).ok());
      ASSERT_TRUE(in_use_blocks_equal(d->contents(), checkpoint_image(s), s.free, s.bs));
    } else {
      ASSERT_TRUE(chain.status().code() == EBUSY || chain.status().code() == ENOENT)
          << chain.status().to_string();
    }
  }
  auto d = std::make_shared<MemoryDevice>(r.durable);
  BowOptions o;
  o.block_size = s.bs;
  auto t = BowTarget::create(d, s.size, o);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  auto bow = t.value();
  auto view = read_all(*bow);
  auto res = reads_as_model(s, r.model, view);
  if (!res && bow->stats().state == 0) {
    // Block 0 is home and the log gone: allowed only for one block (the old
    // place of the live block 0) holding an exact copy of block 0.
    std::vector<uint8_t> b0(view.begin(), view.begin() + s.bs);
    ASSERT_EQ(forgive_block0_copies(s, view, b0), 1) << res.message();
    res = reads_as_model(s, r.model, view);
  }
  ASSERT_TRUE(res);
  if (bow->stats().state == 1) {
    ASSERT_TRUE(bow->set_state(2).ok());
    ASSERT_EQ(read_all(*bow), view);
  }
  ASSERT_NE(bow->stats().state, 1);  // 2: it finished a marked commit; 0: no log was left
  ASSERT_EQ(read_chain(*d).status().code(), ENOENT);
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
  // The commit, cut after each of its writes.
  RunResult c = run(s, UINT64_MAX, 0, 0, wb, true);
  ASSERT_GT(c.commit_ops, 3u);
  for (uint64_t n = 0; n <= c.commit_ops; n++) {
    RunResult r = run(s, n, survival, n, wb, true);
    check_commit_cut(s, r, fmt::format("commit cut after {} of {} writes", n, c.commit_ops));
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
