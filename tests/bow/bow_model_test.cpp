// What a bow device reads, against a byte-exact model, in every state:
//  * random operations (writes of any 512-byte alignment, write_zeroes with
//    and without unmap, trims, flushes, FUA, state changes 0 -> 1 -> 2) with
//    a full read compared to the model after every step;
//  * a block that is free (trimmed or zeroed with unmap in state 0, or
//    zeroed in any state, not written since) reads as zeroes in states 0, 1
//    and 2, after a restart (resume) and after the commit, on the device too;
//  * state changes (0 -> 1, 1 -> 2, drop on full, restart) change no read;
//  * restore still gives back every block in use at the checkpoint.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <atomic>
#include <thread>

#include "bow_test_util.h"

using namespace udm;
using namespace udm::bow;
using namespace udm::bow::test;

namespace {

bool all_zero(std::span<const uint8_t> v) {
  return std::all_of(v.begin(), v.end(), [](uint8_t x) { return x == 0; });
}

// The model: what every byte reads, and which blocks are free (bow's sense:
// trimmed or zeroed with unmap in state 0 and not written since), which is
// what the checkpoint may use and what restore does not bring back.
struct Model {
  uint32_t bs;
  std::vector<uint8_t> view;
  std::vector<bool> free;
  int state = 0;
  Model(std::vector<uint8_t> img, uint32_t bs_)
      : bs(bs_), view(std::move(img)), free(view.size() / bs_, false) {}
  void write(uint64_t off, std::span<const uint8_t> d) {
    std::copy(d.begin(), d.end(), view.begin() + off);
    if (state == 0)
      for (uint64_t b = off / bs; b < (off + d.size() + bs - 1) / bs; b++) free[b] = false;
  }
  void zero(uint64_t off, uint64_t len, bool unmap) {
    std::fill(view.begin() + off, view.begin() + off + len, 0);
    if (state != 0) return;
    for (uint64_t b = off / bs; b < (off + len + bs - 1) / bs; b++) free[b] = false;
    if (unmap) free_whole(off, len);
  }
  void trim(uint64_t off, uint64_t len) {
    if (state != 0) return;  // state 1 drops trims; state 2: not used here
    free_whole(off, len);
    for (uint64_t b = std::max<uint64_t>((off + bs - 1) / bs, 1); b < (off + len) / bs; b++)
      std::fill(view.begin() + b * bs, view.begin() + (b + 1) * bs, 0);
  }
  void free_whole(uint64_t off, uint64_t len) {
    for (uint64_t b = std::max<uint64_t>((off + bs - 1) / bs, 1); b < (off + len) / bs; b++)
      free[b] = true;
  }
  std::set<uint64_t> free_set() const {
    std::set<uint64_t> s;
    for (uint64_t b = 0; b < free.size(); b++)
      if (free[b]) s.insert(b);
    return s;
  }
};

::testing::AssertionResult same(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want,
                                uint32_t bs) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size differs";
  for (uint64_t b = 0; b < got.size() / bs; b++)
    if (!std::equal(got.begin() + b * bs, got.begin() + (b + 1) * bs, want.begin() + b * bs)) {
      auto blk = std::span(got).subspan(b * bs, bs);
      return ::testing::AssertionFailure()
             << "block " << b << " reads " << (all_zero(blk) ? "zeroes" : "other bytes")
             << " where the model says " << (all_zero(std::span(want).subspan(b * bs, bs)) ? "zeroes" : "data");
    }
  return ::testing::AssertionSuccess();
}

struct RandomRun {
  uint32_t bs;
  uint64_t blocks;
  bool write_back;
  bool drop;
  uint64_t seed;
};

void random_ops(const RandomRun& p) {
  SCOPED_TRACE(fmt::format("bs {} write-back {} drop {} seed {}", p.bs, p.write_back, p.drop, p.seed));
  const uint64_t size = p.blocks * p.bs;
  auto disk = std::make_shared<MemoryDevice>(pattern(size, p.seed));
  BowOptions o;
  o.block_size = p.bs;
  o.write_back = p.write_back;
  o.drop_on_full = p.drop;
  auto bow = BowTarget::create(disk, size, o).value();
  Model m(disk->contents(), p.bs);
  std::mt19937_64 g(p.seed);
  std::vector<uint8_t> checkpoint_view;
  std::set<uint64_t> checkpoint_free;
  int restarts = 0, state_changes = 0, enospc = 0;
  uint64_t entries = 0;
  // "fstrim": free most of the upper half, by trims and by punches.
  auto fstrim = [&] {
    for (uint64_t b = p.blocks / 2; b < p.blocks; b += 4) {
      uint64_t n = std::min<uint64_t>(3, p.blocks - b);
      if (b % 8 == 0) {
        ASSERT_TRUE(bow->trim(b * p.bs, n * p.bs).ok());
        m.trim(b * p.bs, n * p.bs);
      } else {
        ASSERT_TRUE(bow->write_zeroes(b * p.bs, n * p.bs, false, true).ok());
        m.zero(b * p.bs, n * p.bs, true);
      }
    }
  };
  fstrim();
  auto span_op = [&](uint64_t max_blocks) {
    // Any 512-byte aligned range, often block-aligned, sometimes crossing many blocks.
    uint64_t sectors = size / 512, bsec = p.bs / 512;
    uint64_t off, len;
    if (g() % 2) {
      uint64_t b = g() % p.blocks, n = 1 + g() % max_blocks;
      off = b * bsec;
      len = n * bsec;
    } else {
      off = g() % sectors;
      len = 1 + g() % (max_blocks * bsec);
    }
    if (off + len > sectors) len = sectors - off;
    return std::make_pair(off * 512, len * 512);
  };
  for (int step = 0; step < 400; step++) {
    SCOPED_TRACE(fmt::format("step {} state {}", step, m.state));
    uint64_t r = g() % 100;
    Status s;
    if (r < 40) {
      auto [off, len] = span_op(4);
      auto d = pattern(len, p.seed * 100000 + step);
      s = bow->write(off, d, /*fua=*/g() % 8 == 0);
      if (s.ok()) m.write(off, d);
    } else if (r < 55) {
      auto [off, len] = span_op(6);
      s = bow->write_zeroes(off, len, g() % 8 == 0, /*may_unmap=*/true);
      if (s.ok()) m.zero(off, len, true);
    } else if (r < 65) {
      auto [off, len] = span_op(6);
      s = bow->write_zeroes(off, len, false, /*may_unmap=*/false);
      if (s.ok()) m.zero(off, len, false);
    } else if (r < 78) {
      if (m.state == 2) continue;  // passes the advisory trim down: contents unspecified
      auto [off, len] = span_op(8);
      s = bow->trim(off, len);
      if (s.ok()) m.trim(off, len);
    } else if (r < 91) {
      s = bow->flush();
    } else if (r < 93) {
      // Restart: a new target over the device, after a flush (what is
      // acknowledged but not flushed may be lost by a real restart).
      ASSERT_TRUE(bow->flush().ok());
      entries += bow->stats().entries;
      bow.reset();
      auto t = BowTarget::create(disk, size, o);
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      bow = t.value();
      int st = bow->stats().state;
      // Without a log on the device a restart is state 0 again (nothing
      // in-memory survives: the earlier free space must be learnt again).
      if (m.state != 1) {
        ASSERT_EQ(st, 0);
        m.state = 0;
        std::fill(m.free.begin(), m.free.end(), false);
        fstrim();
      } else {
        ASSERT_EQ(st, 1);
      }
      restarts++;
    } else if (r < 96) {
      if (m.state == 2) continue;
      auto before = read_all(*bow);
      int next = m.state + 1;
      auto snapshot_free = m.free_set();
      s = bow->set_state(next);
      if (s.ok()) {
        if (next == 1) {
          checkpoint_view = before;
          checkpoint_free = snapshot_free;
        }
        m.state = next;
        state_changes++;
        ASSERT_TRUE(same(read_all(*bow), before, p.bs)) << "set_state(" << next << ") changed a read";
      } else {
        ASSERT_EQ(s.code(), ENOSPC) << s.to_string();  // not enough free space for state 1
        continue;
      }
    } else {
      // Reads of any range, compared to the model (the full read below
      // covers the whole device; this one covers unaligned edges).
      auto [off, len] = span_op(5);
      std::vector<uint8_t> v(len);
      ASSERT_TRUE(bow->read(off, v).ok());
      ASSERT_TRUE(std::equal(v.begin(), v.end(), m.view.begin() + off));
    }
    if (!s.ok()) {
      ASSERT_EQ(s.code(), ENOSPC) << s.to_string();
      enospc++;
    }
    // A write may have dropped the checkpoint (on_full=drop): pass-through now.
    if (bow->stats().state == 2 && m.state == 1) {
      ASSERT_TRUE(p.drop);
      m.state = 2;
    }
    ASSERT_TRUE(same(read_all(*bow), m.view, p.bs));
    ASSERT_TRUE(bow->map_consistent());
    // In state 1, restore (on a copy, after a flush) gives the checkpoint back.
    if (m.state == 1 && step % 50 == 49) {
      ASSERT_TRUE(bow->flush().ok());
      auto copy = std::make_shared<MemoryDevice>(disk->contents());
      auto chain = read_chain(*copy);
      ASSERT_TRUE(chain.ok()) << chain.status().to_string();
      ASSERT_TRUE(apply_chain(*copy, chain.value()).ok());
      ASSERT_TRUE(in_use_blocks_equal(copy->contents(), checkpoint_view, checkpoint_free, p.bs));
    }
  }
  ASSERT_TRUE(bow->flush().ok());
  if (m.state == 1) {
    ASSERT_TRUE(bow->set_state(2).ok());
    ASSERT_TRUE(same(read_all(*bow), m.view, p.bs));
    m.state = 2;
  }
  // After the commit (or in states 0 and 2) the device itself holds the view:
  // no copy, log block, intent or relocated block 0 is left anywhere.
  ASSERT_TRUE(same(disk->contents(), m.view, p.bs));
  std::cout << fmt::format("  bs {} wb {} drop {} seed {}: {} state changes, {} restarts, {} ENOSPC, "
                           "{} entries\n",
                           p.bs, p.write_back, p.drop, p.seed, state_changes, restarts, enospc,
                           entries + bow->stats().entries);
}

}  // namespace

TEST(BowModel, RandomOperationsReadAsTheModelInEveryState) {
  for (uint64_t seed = 1; seed <= 6; seed++)
    for (uint32_t bs : {4096u, 1024u, 512u}) {
      random_ops({bs, 96, seed % 2 == 0, false, seed});
      if (::testing::Test::HasFatalFailure()) return;
    }
}

TEST(BowModel, RandomOperationsWithDropOnFull) {
  for (uint64_t seed = 11; seed <= 14; seed++) {
    random_ops({4096, 48, seed % 2 == 0, true, seed});
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The user's report, step by step: punched (zeroed with unmap) ranges read
// as zeroes, and the blocks bow fills in state 1 never show, in any state.
TEST(BowModel, FreeBlocksReadZeroInEveryState) {
  constexpr uint32_t bs = 4096;
  constexpr uint64_t blocks = 64, size = blocks * bs;
  auto disk = std::make_shared<MemoryDevice>(pattern(size, 7));
  auto bow = BowTarget::create(disk, size, {}).value();
  auto zero_block = [&](BlockDevice& d, uint64_t b) {
    std::vector<uint8_t> v(bs);
    EXPECT_TRUE(d.read(b * bs, v).ok());
    return all_zero(v);
  };
  // State 0: punch [20, 40) (the FUSE export's PUNCH_HOLE), trim [40, 48),
  // and punch a range with partial edge blocks.
  ASSERT_TRUE(bow->write_zeroes(20 * bs, 20 * bs, false, true).ok());
  ASSERT_TRUE(bow->trim(40 * bs, 8 * bs).ok());
  ASSERT_TRUE(bow->write_zeroes(50 * bs + 512, 3 * bs, false, true).ok());
  for (uint64_t b = 20; b < 48; b++) {
    ASSERT_TRUE(zero_block(*bow, b)) << b;
    ASSERT_TRUE(zero_block(*disk, b)) << b;  // zeroed on the device: a restart keeps it
    ASSERT_EQ(bow->block_type(b), BlockType::kFree);
  }
  EXPECT_EQ(bow->block_type(50), BlockType::kUnchanged);  // partial: zeroed, still in use
  EXPECT_EQ(bow->block_type(51), BlockType::kFree);
  std::vector<uint8_t> edge(bs);
  ASSERT_TRUE(bow->read(50 * bs, edge).ok());
  EXPECT_FALSE(all_zero(std::span(edge).first(512)));
  EXPECT_TRUE(all_zero(std::span(edge).subspan(512)));
  auto view0 = read_all(*bow);
  // State 1: the live block 0, its saved original and the intent go into
  // free blocks; backups of overwritten blocks too. None of them shows.
  ASSERT_TRUE(bow->set_state(1).ok());
  EXPECT_EQ(read_all(*bow), view0);
  for (uint64_t b = 1; b < 20; b++) ASSERT_TRUE(bow->write(b * bs, pattern(bs, 100 + b)).ok());
  ASSERT_TRUE(bow->write(1024, pattern(1024, 99)).ok());  // ext4's superblock, in block 0
  ASSERT_TRUE(bow->flush().ok());
  std::vector<uint64_t> owned;  // free blocks holding bow's data on the device
  for (uint64_t b = 20; b < 48; b++) {
    BlockType t = bow->block_type(b);
    if (t == BlockType::kBackup || t == BlockType::kSector0 || t == BlockType::kIntent) {
      owned.push_back(b);
      ASSERT_TRUE(zero_block(*bow, b)) << b << " (" << type_name(t) << ") shows through";
    }
  }
  ASSERT_GE(owned.size(), 20u);
  size_t nonzero_below = 0;
  for (uint64_t b : owned) nonzero_below += !zero_block(*disk, b);
  EXPECT_GE(nonzero_below, 19u);  // they do hold data down there
  // A punch in state 1 over in-use blocks: saved first (rollback), then zero.
  uint64_t entries = bow->stats().entries;
  ASSERT_TRUE(bow->write_zeroes(2 * bs, 2 * bs, false, true).ok());  // CHANGED already: no backup
  ASSERT_TRUE(bow->write_zeroes(55 * bs, 2 * bs, false, true).ok());  // UNCHANGED: saved first
  ASSERT_TRUE(bow->flush().ok());
  EXPECT_EQ(bow->stats().entries, entries + 1);
  ASSERT_TRUE(zero_block(*bow, 55) && zero_block(*bow, 56) && zero_block(*bow, 2));
  // A partial write into a block holding a copy: the rest of it reads zero.
  uint64_t b = owned.back();
  ASSERT_EQ(bow->block_type(b), BlockType::kBackup);
  ASSERT_TRUE(bow->write(b * bs + 1024, pattern(512, 5)).ok());
  std::vector<uint8_t> got(bs), want(bs, 0);
  auto p5 = pattern(512, 5);
  std::copy(p5.begin(), p5.end(), want.begin() + 1024);
  ASSERT_TRUE(bow->read(b * bs, got).ok());
  EXPECT_EQ(got, want);
  ASSERT_TRUE(bow->flush().ok());
  auto view1 = read_all(*bow);
  // Restart in state 1: the log names every copy, the live block 0 and the
  // intent; they still read as zeroes.
  bow.reset();
  bow = BowTarget::create(disk, size, {}).value();
  ASSERT_EQ(bow->stats().state, 1);
  EXPECT_EQ(read_all(*bow), view1);
  // The original block 0 is still restorable from here.
  {
    auto copy = std::make_shared<MemoryDevice>(disk->contents());
    auto chain = read_chain(*copy);
    ASSERT_TRUE(chain.ok());
    ASSERT_TRUE(apply_chain(*copy, chain.value()).ok());
    std::set<uint64_t> freed;
    for (uint64_t x = 20; x < 48; x++) freed.insert(x);
    for (uint64_t x = 51; x < 53; x++) freed.insert(x);
    EXPECT_TRUE(in_use_blocks_equal(copy->contents(), view0, freed, bs));
  }
  // Commit: the copies are zeroed below, block 0 goes home, nothing changes.
  ASSERT_TRUE(bow->set_state(2).ok());
  EXPECT_EQ(read_all(*bow), view1);
  EXPECT_EQ(disk->contents(), view1);
  EXPECT_GT(bow->stats().zeroed_bytes, 0u);
  for (uint64_t x : owned)
    if (x != b) {
      EXPECT_TRUE(zero_block(*disk, x)) << x;
    }
}

TEST(BowModel, DropOnFullChangesNoRead) {
  BowOptions o;
  o.drop_on_full = true;
  constexpr uint32_t bs = 4096;
  constexpr uint64_t size = 64 * bs;
  auto disk = std::make_shared<MemoryDevice>(pattern(size, 3));
  auto bow = BowTarget::create(disk, size, o).value();
  ASSERT_TRUE(bow->write_zeroes(56 * bs, 8 * bs, false, true).ok());  // 8 free blocks
  ASSERT_TRUE(bow->set_state(1).ok());
  ASSERT_TRUE(bow->write(1 * bs, pattern(5 * bs, 1)).ok());  // uses the last 5
  ASSERT_TRUE(bow->flush().ok());
  auto before = read_all(*bow);
  ASSERT_TRUE(bow->write(30 * bs, pattern(bs, 2)).ok());  // needs a backup: drops
  auto p2 = pattern(bs, 2);
  std::copy(p2.begin(), p2.end(), before.begin() + 30 * bs);
  ASSERT_TRUE(bow->stats().dropped);
  EXPECT_EQ(read_all(*bow), before);
  EXPECT_EQ(disk->contents(), before);  // copies, intent and the live block 0 zeroed below
}

TEST(BowModel, ACommitMarkedOnTheDeviceIsFinishedByTheNextTarget) {
  constexpr uint32_t bs = 1024;
  constexpr uint64_t size = 256 * bs;
  auto disk = std::make_shared<MemoryDevice>(pattern(size, 4));
  BowOptions o;
  o.block_size = bs;
  auto bow = BowTarget::create(disk, size, o).value();
  ASSERT_TRUE(bow->trim(128 * bs, 128 * bs).ok());
  ASSERT_TRUE(bow->set_state(1).ok());
  for (int i = 1; i < 100; i++) ASSERT_TRUE(bow->write(i * bs, pattern(512, i)).ok());
  ASSERT_TRUE(bow->flush().ok());
  ASSERT_GT(bow->stats().sequence, 0u);  // several log blocks
  auto view = read_all(*bow);
  bow.reset();
  // Mark the log the way the commit's first step does.
  std::vector<uint8_t> b0(bs);
  ASSERT_TRUE(disk->read(0, b0).ok());
  auto log = decode_log(b0, size).value();
  EXPECT_NE(log.intent, 0u);
  log.committing = true;
  ASSERT_TRUE(disk->write(0, encode_log(log)).ok());
  // Restore refuses it, clearly, writing nothing.
  auto before = disk->contents();
  auto chain = read_chain(*disk);
  ASSERT_EQ(chain.status().code(), EBUSY);
  EXPECT_NE(chain.status().message().find("commit"), std::string::npos);
  EXPECT_EQ(disk->contents(), before);
  // A target created over it finishes the commit: pass-through, same reads,
  // nothing of bow's left on the device.
  auto t = BowTarget::create(disk, size, o);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t.value()->stats().state, 2);
  EXPECT_TRUE(t.value()->stats().commit_finished);
  EXPECT_EQ(read_all(*t.value()), view);
  EXPECT_EQ(disk->contents(), view);
}

TEST(BowModel, CapsAreHonest) {
  auto disk = std::make_shared<MemoryDevice>(64 * 4096);
  auto bow = BowTarget::create(disk, 64 * 4096, {}).value();
  DeviceCaps c = bow->caps();
  EXPECT_TRUE(c.can_trim);
  EXPECT_TRUE(c.can_write_zeroes);
  // A trim leaves partial blocks (and, in state 1, everything) as they are.
  EXPECT_FALSE(c.trim_zeroes);
  ASSERT_TRUE(bow->write(0, pattern(64 * 4096, 1)).ok());
  ASSERT_TRUE(bow->trim(4096 + 512, 2 * 4096).ok());
  std::vector<uint8_t> v(512);
  ASSERT_TRUE(bow->read(4096 + 512, v).ok());
  EXPECT_FALSE(all_zero(v));
  // Zeroing in-use blocks in state 1 copies them first: not a fast zero.
  EXPECT_FALSE(c.fast_zero);
}

// Threads own disjoint blocks (b % 6 == t) and write, zero (with and without
// unmap), read back and flush concurrently in state 1, with write-back: each
// read sees the thread's own model; the commit then leaves exactly the model
// on the device.
TEST(BowModel, ConcurrentWritesZeroesAndReadsKeepEachOwnersView) {
  constexpr uint32_t bs = 4096;
  constexpr uint64_t blocks = 1024, size = blocks * bs;
  constexpr int kThreads = 6;
  auto disk = std::make_shared<MemoryDevice>(pattern(size, 8));
  auto bow = BowTarget::create(disk, size, {}).value();
  ASSERT_TRUE(bow->write_zeroes(size / 4, size / 4 * 3, false, true).ok());
  ASSERT_TRUE(bow->set_state(1).ok());
  std::vector<uint8_t> model = read_all(*bow);
  std::vector<std::thread> ts;
  std::atomic<int> failures{0}, enospc{0};
  for (int t = 0; t < kThreads; t++)
    ts.emplace_back([&, t] {
      std::mt19937_64 g(t + 100);
      for (int i = 0; i < 300 && failures == 0; i++) {
        uint64_t b = (g() % (blocks / kThreads)) * kThreads + t;
        if (b == 0) continue;
        uint64_t off = b * bs + (g() % 8) * 512, len = std::min<uint64_t>(512 * (1 + g() % 8), (b + 1) * bs - off);
        Status s;
        switch (g() % 4) {
          case 0:
          case 1: {
            auto d = pattern(len, t * 100000 + i);
            s = bow->write(off, d);
            if (s.ok()) std::copy(d.begin(), d.end(), model.begin() + off);
            break;
          }
          case 2:
            s = bow->write_zeroes(b * bs, bs, false, g() % 2);
            if (s.ok()) std::fill(model.begin() + b * bs, model.begin() + (b + 1) * bs, 0);
            break;
          case 3: s = bow->flush(); break;
        }
        if (!s.ok() && s.code() == ENOSPC) {
          enospc++;  // nothing changed: the model stays
        } else if (!s.ok()) {
          ADD_FAILURE() << s.to_string();
          failures++;
          return;
        }
        std::vector<uint8_t> back(bs);
        if (!bow->read(b * bs, back).ok() ||
            !std::equal(back.begin(), back.end(), model.begin() + b * bs)) {
          ADD_FAILURE() << "thread " << t << " block " << b << " step " << i;
          failures++;
          return;
        }
      }
    });
  for (auto& t : ts) t.join();
  ASSERT_EQ(failures, 0);
  ASSERT_TRUE(bow->flush().ok());
  EXPECT_GT(bow->stats().entries, 100u);
  std::cout << "  " << bow->stats().entries << " entries, " << enospc << " writes refused (ENOSPC)\n";
  EXPECT_TRUE(bow->map_consistent());
  EXPECT_EQ(read_all(*bow), model);
  ASSERT_TRUE(bow->set_state(2).ok());
  EXPECT_EQ(disk->contents(), model);
}
