// The bow target on memory and fault-injecting devices: states, backups,
// block-0 relocation, unaligned I/O, out-of-space policies, log rollover,
// resume, concurrency, and the restore tool's checks.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <chrono>
#include <mutex>
#include <thread>

#include "bow_test_util.h"
#include "device/target.h"
#include "io/fault_device.h"
#include "util/endian.h"

using namespace udm;
using namespace udm::bow;
using namespace udm::bow::test;

namespace {

constexpr uint32_t kBs = 4096;
constexpr uint64_t kBlocks = 64, kSize = kBlocks * kBs;

struct Rig {
  std::shared_ptr<MemoryDevice> disk;
  std::shared_ptr<BowTarget> bow;
  std::vector<uint8_t> checkpoint;  // device contents as seen at state 1
  std::set<uint64_t> free;          // blocks trimmed in state 0
};

// Device with random "in use" data; blocks [free_from, free_to) trimmed.
Rig make_rig(uint64_t free_from, uint64_t free_to, BowOptions opts = {}, uint64_t size = kSize) {
  Rig r;
  r.disk = std::make_shared<MemoryDevice>(pattern(size, 42));
  auto t = BowTarget::create(r.disk, size, opts);
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  r.bow = t.value();
  uint32_t bs = opts.block_size;
  EXPECT_TRUE(r.bow->trim(free_from * bs, (free_to - free_from) * bs).ok());
  for (uint64_t b = free_from; b < free_to; b++) r.free.insert(b);
  return r;
}

void checkpoint(Rig& r) {
  r.checkpoint = read_all(*r.bow);
  ASSERT_TRUE(r.bow->set_state(1).ok());
  // The view does not change (free blocks may: they hold nothing).
  EXPECT_TRUE(in_use_blocks_equal(read_all(*r.bow), r.checkpoint, r.free, kBs));
}

void restore(BlockDevice& d) {
  auto chain = read_chain(d);
  ASSERT_TRUE(chain.ok()) << chain.status().to_string();
  ASSERT_TRUE(apply_chain(d, chain.value()).ok());
}

}  // namespace

TEST(Bow, StateZeroCollectsWholeBlockTrimsAndWritesUntrim) {
  Rig r = make_rig(10, 20);
  EXPECT_EQ(r.bow->stats().free_bytes, 10 * kBs);
  EXPECT_EQ(r.bow->block_type(10), BlockType::kFree);
  // Partial-block trims free nothing; block 0 is never free.
  ASSERT_TRUE(r.bow->trim(30 * kBs + 512, kBs).ok());
  ASSERT_TRUE(r.bow->trim(0, 2 * kBs).ok());
  EXPECT_EQ(r.bow->block_type(30), BlockType::kUnchanged);
  EXPECT_EQ(r.bow->block_type(0), BlockType::kUnchanged);
  EXPECT_EQ(r.bow->block_type(1), BlockType::kFree);
  // Freed blocks are zeroed on the device (they read as zeroes, also after a
  // restart); the partially trimmed block keeps its bytes.
  std::vector<uint8_t> b(kBs);
  ASSERT_TRUE(r.disk->read(12 * kBs, b).ok());
  EXPECT_EQ(b, std::vector<uint8_t>(kBs, 0));
  auto orig = pattern(kSize, 42);
  ASSERT_TRUE(r.bow->read(30 * kBs, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), orig.begin() + 30 * kBs));
  // A write in state 0 takes the blocks it touches back out of free space.
  ASSERT_TRUE(r.bow->write(12 * kBs + 100, std::vector<uint8_t>(512, 1)).ok());
  EXPECT_EQ(r.bow->block_type(12), BlockType::kUnchanged);
  EXPECT_EQ(r.bow->stats().free_bytes, 10 * kBs);  // 1 freed, 12 taken back
  EXPECT_TRUE(r.bow->map_consistent());
}

TEST(Bow, CheckpointWritesBackupAndRestoreGivesCheckpointBack) {
  Rig r = make_rig(32, 64);
  checkpoint(r);
  // Three free blocks are taken: the live block 0, the saved original and the
  // intent block.
  EXPECT_EQ(r.bow->status(), fmt::format("state=1 free={} backed_up=4096 entries=1 on_full=fail",
                                         29 * kBs));
  EXPECT_EQ(r.bow->block_type(0), BlockType::kLog);
  // Overwrite in-use blocks (multi-block, unaligned 512 B and 1 KiB), free
  // blocks, and block 0 (ext4's superblock lives at byte 1024 of it).
  auto w1 = pattern(3 * kBs, 1);
  ASSERT_TRUE(r.bow->write(4 * kBs, w1).ok());
  ASSERT_TRUE(r.bow->write(9 * kBs + 512, pattern(512, 2)).ok());
  ASSERT_TRUE(r.bow->write(11 * kBs + 3072, pattern(2048, 3)).ok());  // spans 2 blocks
  ASSERT_TRUE(r.bow->write(1024, pattern(1024, 4)).ok());
  ASSERT_TRUE(r.bow->flush().ok());  // write-back: backups are committed by now
  auto st = r.bow->stats();
  EXPECT_EQ(st.backed_up_bytes, kBs + 3 * kBs + kBs + 2 * kBs);
  uint64_t entries_before = st.entries;
  ASSERT_TRUE(r.bow->write(50 * kBs, pattern(4 * kBs, 5)).ok());  // free space: no backup
  ASSERT_TRUE(r.bow->flush().ok());
  EXPECT_EQ(r.bow->stats().entries, entries_before);
  ASSERT_TRUE(r.bow->write(4 * kBs, pattern(kBs, 6)).ok());  // already changed: no backup
  ASSERT_TRUE(r.bow->flush().ok());
  EXPECT_EQ(r.bow->stats().entries, entries_before);
  ASSERT_TRUE(r.bow->write_zeroes(20 * kBs, 2 * kBs).ok());
  // The view shows the latest data, block 0 included.
  auto view = read_all(*r.bow);
  std::vector<uint8_t> b(1024);
  ASSERT_TRUE(r.bow->read(1024, b).ok());
  EXPECT_EQ(b, pattern(1024, 4));
  EXPECT_TRUE(std::equal(w1.begin() + kBs, w1.end(), view.begin() + 5 * kBs));
  // The raw device's block 0 is the log, not the data.
  std::vector<uint8_t> raw0(kBs);
  ASSERT_TRUE(r.disk->read(0, raw0).ok());
  EXPECT_TRUE(has_log_magic(raw0));
  EXPECT_TRUE(r.bow->map_consistent());
  // Roll back offline.
  r.bow.reset();
  restore(*r.disk);
  EXPECT_TRUE(in_use_blocks_equal(r.disk->contents(), r.checkpoint, r.free, kBs));
  // Running it again finds no log and changes nothing.
  auto again = read_chain(*r.disk);
  EXPECT_EQ(again.status().code(), ENOENT);
}

TEST(Bow, CommitPutsBlockZeroHomeAndPassesThrough) {
  Rig r = make_rig(32, 64);
  checkpoint(r);
  ASSERT_TRUE(r.bow->write(0, pattern(kBs, 7)).ok());
  ASSERT_TRUE(r.bow->write(5 * kBs, pattern(kBs, 8)).ok());
  ASSERT_TRUE(r.bow->flush().ok());
  auto latest = read_all(*r.bow);
  ASSERT_TRUE(r.bow->set_state(2).ok());
  EXPECT_EQ(r.disk->contents(), latest);
  EXPECT_EQ(r.bow->status(), fmt::format("state=2 free=0 backed_up={} entries=2 on_full=fail", 2 * kBs));
  ASSERT_TRUE(r.bow->write(0, pattern(kBs, 9)).ok());  // pass-through
  std::vector<uint8_t> b(kBs);
  ASSERT_TRUE(r.disk->read(0, b).ok());
  EXPECT_EQ(b, pattern(kBs, 9));
  EXPECT_FALSE(r.bow->set_state(1).ok());  // only 0 -> 1 -> 2
  EXPECT_EQ(read_chain(*r.disk).status().code(), ENOENT);
}

TEST(Bow, StateMachineAndMessages) {
  Rig r = make_rig(32, 64);
  EXPECT_FALSE(r.bow->set_state(2).ok());
  EXPECT_FALSE(r.bow->message({"state", "3"}).ok());
  EXPECT_FALSE(r.bow->message({"frob"}).ok());
  EXPECT_TRUE(r.bow->message({"state", "1"}).ok());
  EXPECT_EQ(r.bow->stats().state, 1);
  EXPECT_TRUE(r.bow->message({"state", "1"}).ok());  // idempotent
  EXPECT_TRUE(r.bow->message({"state", "2"}).ok());
  EXPECT_EQ(r.bow->stats().state, 2);
  // Checkpoint needs three free blocks.
  Rig n = make_rig(5, 7);
  Status s = n.bow->set_state(1);
  EXPECT_EQ(s.code(), ENOSPC);
  EXPECT_NE(s.message().find("fstrim"), std::string::npos);
  EXPECT_EQ(n.bow->stats().state, 0);
}

TEST(Bow, WritingIntoTheLiveBlockZeroCopyOrBackupsMovesThem) {
  Rig r = make_rig(32, 40);
  checkpoint(r);
  // The live block 0 and the saved original are in free blocks 32 and 33:
  // the filesystem thinks they are free and may write there.
  EXPECT_EQ(r.bow->block_type(32), BlockType::kSector0);
  EXPECT_EQ(r.bow->block_type(33), BlockType::kBackup);
  ASSERT_TRUE(r.bow->write(0, pattern(kBs, 11)).ok());
  ASSERT_TRUE(r.bow->write(32 * kBs, pattern(2 * kBs, 12)).ok());
  ASSERT_TRUE(r.bow->flush().ok());
  EXPECT_EQ(r.bow->block_type(32), BlockType::kChanged);
  EXPECT_EQ(r.bow->block_type(33), BlockType::kChanged);
  std::vector<uint8_t> b(kBs);
  ASSERT_TRUE(r.bow->read(0, b).ok());
  EXPECT_EQ(b, pattern(kBs, 11));  // live block 0 survived its move
  ASSERT_TRUE(r.bow->read(32 * kBs, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), pattern(2 * kBs, 12).begin()));
  auto latest = read_all(*r.bow);
  // Restore still brings back the original block 0 (its backup was saved again).
  auto copy = std::make_shared<MemoryDevice>(r.disk->contents());
  restore(*copy);
  EXPECT_TRUE(in_use_blocks_equal(copy->contents(), r.checkpoint, r.free, kBs));
  // And commit gives the latest view.
  ASSERT_TRUE(r.bow->set_state(2).ok());
  EXPECT_EQ(r.disk->contents(), latest);
}

TEST(Bow, OneKiBAndSectorBlockSizes) {
  for (uint32_t bs : {512u, 1024u}) {
    SCOPED_TRACE(bs);
    BowOptions o;
    o.block_size = bs;
    uint64_t size = 256 * bs;
    Rig r = make_rig(128, 256, o, size);
    r.checkpoint = read_all(*r.bow);
    ASSERT_TRUE(r.bow->set_state(1).ok());
    // Enough scattered 512-byte writes to roll the log over several times.
    for (int i = 0; i < 100; i++)
      ASSERT_TRUE(r.bow->write((1 + i) * bs + (i % (bs / 512)) * 512, pattern(512, 100 + i)).ok());
    ASSERT_TRUE(r.bow->flush().ok());
    EXPECT_GT(r.bow->stats().sequence, 0u);
    ASSERT_TRUE(r.bow->write(2 * bs, pattern(bs * 3, 77)).ok());  // rewrite: no backup
    r.bow.reset();
    restore(*r.disk);
    EXPECT_TRUE(in_use_blocks_equal(r.disk->contents(), r.checkpoint, r.free, bs));
  }
}

TEST(Bow, OutOfSpaceFailPolicyFailsOnlyThatWrite) {
  Rig r = make_rig(56, 64);  // 8 free blocks, 3 taken by the checkpoint
  checkpoint(r);
  ASSERT_TRUE(r.bow->write(1 * kBs, pattern(5 * kBs, 1)).ok());
  EXPECT_EQ(r.bow->stats().free_bytes, 0u);
  Status s = r.bow->write(20 * kBs, pattern(kBs, 2));
  EXPECT_EQ(s.code(), ENOSPC);
  std::vector<uint8_t> b(kBs);
  ASSERT_TRUE(r.bow->read(20 * kBs, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), r.checkpoint.begin() + 20 * kBs));  // untouched
  // Writes that need no backup keep working.
  ASSERT_TRUE(r.bow->write(2 * kBs, pattern(kBs, 3)).ok());
  EXPECT_EQ(r.bow->stats().state, 1);
  r.bow.reset();
  restore(*r.disk);
  EXPECT_TRUE(in_use_blocks_equal(r.disk->contents(), r.checkpoint, r.free, kBs));
}

TEST(Bow, OutOfSpaceDropPolicyGoesPassThroughAndSaysSo) {
  BowOptions o;
  o.drop_on_full = true;
  Rig r = make_rig(56, 64, o);
  checkpoint(r);
  ASSERT_TRUE(r.bow->write(1 * kBs, pattern(5 * kBs, 1)).ok());
  ASSERT_TRUE(r.bow->write(20 * kBs, pattern(kBs, 2)).ok());  // would need a backup
  auto st = r.bow->stats();
  EXPECT_EQ(st.state, 2);
  EXPECT_TRUE(st.dropped);
  EXPECT_NE(r.bow->status().find("dropped"), std::string::npos);
  auto view = read_all(*r.bow);
  EXPECT_EQ(r.disk->contents(), view);  // block 0 home: the raw device is the latest state
  EXPECT_EQ(read_chain(*r.disk).status().code(), ENOENT);
}

TEST(Bow, ResumeAfterRestartKeepsTheCheckpoint) {
  Rig r = make_rig(32, 64);
  checkpoint(r);
  ASSERT_TRUE(r.bow->write(3 * kBs, pattern(2 * kBs, 1)).ok());
  ASSERT_TRUE(r.bow->write(0, pattern(kBs, 2)).ok());
  ASSERT_TRUE(r.bow->flush().ok());
  auto latest = read_all(*r.bow);
  r.bow.reset();
  auto t = BowTarget::create(r.disk, kSize, {});
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  auto bow = t.value();
  auto st = bow->stats();
  EXPECT_EQ(st.state, 1);
  EXPECT_TRUE(st.resumed);
  EXPECT_EQ(st.entries, 2u);
  EXPECT_EQ(read_all(*bow), latest);
  // Blocks the log saved are known as changed; others cannot be saved (no
  // free space is known after a restart), so on_full applies.
  ASSERT_TRUE(bow->write(3 * kBs, pattern(kBs, 3)).ok());
  EXPECT_EQ(bow->write(10 * kBs, pattern(kBs, 4)).code(), ENOSPC);
  bow.reset();
  restore(*r.disk);
  EXPECT_TRUE(in_use_blocks_equal(r.disk->contents(), r.checkpoint, r.free, kBs));
  // A different block size than the log's is refused.
  Rig q = make_rig(32, 64);
  checkpoint(q);
  q.bow.reset();
  BowOptions o;
  o.block_size = 1024;
  auto bad = BowTarget::create(q.disk, kSize, o);
  EXPECT_FALSE(bad.ok());
}

TEST(Bow, ConcurrentWritersOnlyWaitForTheirOwnBlocks) {
  constexpr uint64_t blocks = 4096;
  Rig r = make_rig(2048, 4096, {}, blocks * kBs);
  checkpoint(r);
  std::vector<std::thread> ts;
  std::vector<std::vector<uint8_t>> last(8);
  for (int t = 0; t < 8; t++) {
    ts.emplace_back([&, t] {
      std::mt19937_64 g(t);
      for (int i = 0; i < 200; i++) {
        // Each thread owns blocks b with b % 8 == t (in use and free ones).
        uint64_t b = (g() % (blocks / 8)) * 8 + t;
        if (b == 0) continue;
        auto d = pattern(kBs, t * 1000 + i);
        Status s = r.bow->write(b * kBs, d);
        if (!s.ok()) {
          ADD_FAILURE() << s.to_string();
          return;
        }
        std::vector<uint8_t> back(kBs);
        ASSERT_TRUE(r.bow->read(b * kBs, back).ok());
        ASSERT_EQ(back, d);
      }
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_TRUE(r.bow->flush().ok());
  EXPECT_TRUE(r.bow->map_consistent());
  auto latest = read_all(*r.bow);
  auto copy = std::make_shared<MemoryDevice>(r.disk->contents());
  restore(*copy);
  EXPECT_TRUE(in_use_blocks_equal(copy->contents(), r.checkpoint, r.free, kBs));
  ASSERT_TRUE(r.bow->set_state(2).ok());
  EXPECT_EQ(r.disk->contents(), latest);
}

TEST(Bow, TableLineParsing) {
  class OneDev : public DeviceResolver {
   public:
    DevicePtr d = std::make_shared<MemoryDevice>(kSize);
    Result<DevicePtr> open(const std::string& spec, bool) override {
      if (spec != "/dev/x") return Invalid("no such device " + spec);
      return d;
    }
  } res;
  auto make = [&](std::vector<std::string> args) {
    TargetParams p;
    p.type = "bow";
    p.length = kSize;
    p.args = std::move(args);
    p.resolver = &res;
    return TargetRegistry::builtin().create(p);
  };
  EXPECT_TRUE(make({"/dev/x"}).ok());
  EXPECT_TRUE(make({"/dev/x", "1", "on_full=drop"}).ok());
  EXPECT_TRUE(make({"/dev/x", "2", "on_full=fail", "block_size=1024"}).ok());
  EXPECT_NE(make({"/dev/x", "1", "on_full=drop"}).value()->status().find("on_full=drop"),
            std::string::npos);
  // Refused, each naming the argument at fault (device/target_args.h).
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad{
      {{}, "bow: missing <dev>"},
      {{"/dev/y"}, "no such device /dev/y"},
      {{"/dev/x", "2", "on_full=drop"}, "bow: <#opt_args>: says 2 but 1 optional argument follow"},
      {{"/dev/x", "1", "on_full=maybe"}, "bow: on_full: 'maybe' is not one of fail, drop"},
      {{"/dev/x", "2", "on_full=drop", "on_full=fail"}, "bow: on_full: given twice"},
      {{"/dev/x", "1", "block_size=3000"}, "bow: block_size: 3000 is not a power of two in 512..65536"},
      {{"/dev/x", "1", "block_size=256"}, "bow: block_size: 256 is not a power of two in 512..65536"},
      {{"/dev/x", "1", "block_size=4k"}, "bow: block_size: '4k' is not a decimal number"},
      {{"/dev/x", "x"}, "bow: <#opt_args>: 'x' is not a decimal number"},
      {{"/dev/x", "1", "frob"}, "bow: unknown optional argument 'frob'"},
  };
  for (const auto& [args, want] : bad) {
    auto t = make(args);
    ASSERT_FALSE(t.ok()) << want;
    EXPECT_EQ(t.status().code(), EINVAL) << t.status().message();
    EXPECT_NE(t.status().message().find(want), std::string::npos) << t.status().message();
  }
}

// --- restore: bad input is refused and changes nothing ---

namespace {
// A checkpointed device with a few log blocks (512-byte blocks: 20 entries each).
struct Chained {
  std::shared_ptr<MemoryDevice> disk;
  std::vector<uint8_t> checkpoint;
  std::set<uint64_t> free;
};
Chained make_chained() {
  BowOptions o;
  o.block_size = 512;
  Rig r = make_rig(200, 512, o, 512 * 512);
  r.checkpoint = read_all(*r.bow);
  EXPECT_TRUE(r.bow->set_state(1).ok());
  for (int i = 1; i < 60; i++) EXPECT_TRUE(r.bow->write(i * 512, pattern(512, i)).ok());
  EXPECT_TRUE(r.bow->flush().ok());
  EXPECT_EQ(r.bow->stats().sequence, 3u);
  return {r.disk, r.checkpoint, r.free};
}
}  // namespace

TEST(BowRestore, DamagedEntryIsRefusedThenSkippedWithForce) {
  Chained c = make_chained();
  auto chain = read_chain(*c.disk);
  ASSERT_TRUE(chain.ok());
  // Corrupt the saved copy of source block 30.
  const ChainStep* victim = nullptr;
  for (const auto& s : chain.value().steps)
    if (s.entry.source == 30) victim = &s;
  ASSERT_NE(victim, nullptr);
  std::vector<uint8_t> junk(512, 0xee);
  ASSERT_TRUE(c.disk->write(victim->entry.dest * 512, junk).ok());
  auto before = c.disk->contents();
  auto bad = read_chain(*c.disk);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), EUCLEAN);
  std::string id = to_string(victim->id);
  EXPECT_NE(bad.status().message().find("entry " + id), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find("checksum mismatch"), std::string::npos);
  EXPECT_EQ(c.disk->contents(), before);  // nothing written
  ChainOptions o;
  o.skip = parse_entry_ids(id).value();
  auto forced = read_chain(*c.disk, o);
  ASSERT_TRUE(forced.ok()) << forced.status().to_string();
  ASSERT_TRUE(apply_chain(*c.disk, forced.value()).ok());
  c.free.insert(30);  // the one block that could not come back
  EXPECT_TRUE(in_use_blocks_equal(c.disk->contents(), c.checkpoint, c.free, 512));
}

TEST(BowRestore, BrokenChainAndForeignBlockZero) {
  Chained c = make_chained();
  auto chain = read_chain(*c.disk).value();
  // Break the saved copy of log block 1 (entry 2:0 saves it).
  for (const auto& s : chain.steps)
    if (s.id.sequence == 2 && s.id.index == 0) {
      auto log = c.disk->contents();
      std::vector<uint8_t> b(512);
      ASSERT_TRUE(c.disk->read(s.entry.dest * 512, b).ok());
      b[12] ^= 0xff;  // count
      ASSERT_TRUE(c.disk->write(s.entry.dest * 512, b).ok());
    }
  auto before = c.disk->contents();
  auto bad = read_chain(*c.disk);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("2:0"), std::string::npos) << bad.status().message();
  EXPECT_EQ(c.disk->contents(), before);
  // Foreign block 0: no log, ENOENT.
  auto plain = std::make_shared<MemoryDevice>(pattern(kSize, 5));
  EXPECT_EQ(read_chain(*plain).status().code(), ENOENT);
  // Corrupt header field: refused with the field named.
  auto hdr = c.disk->contents();
  store_le<uint32_t>(&hdr[8], 1000);
  auto d2 = std::make_shared<MemoryDevice>(hdr);
  auto r2 = read_chain(*d2);
  EXPECT_EQ(r2.status().code(), EUCLEAN);
  EXPECT_NE(r2.status().message().find("block size"), std::string::npos);
}

TEST(BowRestore, PowerCutAtEveryWriteOfTheRestoreThenRunAgain) {
  Chained c = make_chained();
  auto image = c.disk->contents();
  uint64_t total;
  {
    auto d = std::make_shared<FaultDevice>(image);
    restore(*d);
    total = d->write_ops();
    ASSERT_TRUE(in_use_blocks_equal(d->current_image(), c.checkpoint, c.free, 512));
  }
  for (uint64_t n = 0; n <= total; n++) {
    SCOPED_TRACE(n);
    auto d = std::make_shared<FaultDevice>(image);
    d->cut_after_writes(n);
    auto chain = read_chain(*d);
    ASSERT_TRUE(chain.ok());
    (void)apply_chain(*d, chain.value());
    auto after = std::make_shared<MemoryDevice>(d->durable_image());
    auto again = read_chain(*after);
    if (again.ok()) {
      ASSERT_TRUE(apply_chain(*after, again.value()).ok());
    } else {
      ASSERT_EQ(again.status().code(), ENOENT) << again.status().to_string();
    }
    ASSERT_TRUE(in_use_blocks_equal(after->contents(), c.checkpoint, c.free, 512));
  }
}

TEST(Bow, WriteBackIsVisibleAtOnceAndFuaIsSynchronous) {
  Rig r = make_rig(32, 64);
  checkpoint(r);
  // A write that needs a backup is acknowledged before the backup is
  // committed; reads (whole, partial, overlapping) see it at once.
  auto w = pattern(2 * kBs + 1024, 21);
  ASSERT_TRUE(r.bow->write(3 * kBs + 512, w).ok());
  ASSERT_TRUE(r.bow->write_zeroes(8 * kBs, 1024).ok());
  std::vector<uint8_t> b(4 * kBs);
  ASSERT_TRUE(r.bow->read(3 * kBs, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + 512, r.checkpoint.begin() + 3 * kBs));
  EXPECT_TRUE(std::equal(w.begin(), w.end(), b.begin() + 512));
  std::vector<uint8_t> z(2048);
  ASSERT_TRUE(r.bow->read(8 * kBs, z).ok());
  EXPECT_TRUE(std::all_of(z.begin(), z.begin() + 1024, [](uint8_t x) { return x == 0; }));
  EXPECT_TRUE(std::equal(z.begin() + 1024, z.end(), r.checkpoint.begin() + 8 * kBs + 1024));
  // A rewrite of a block with a queued backup waits for it, then wins.
  ASSERT_TRUE(r.bow->write(3 * kBs + 512, pattern(512, 22)).ok());
  ASSERT_TRUE(r.bow->read(3 * kBs + 512, std::span(b).first(512)).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + 512, pattern(512, 22).begin()));
  // FUA: the backup is durable (logged) when the write returns.
  uint64_t before = r.bow->stats().entries;
  ASSERT_TRUE(r.bow->write(20 * kBs, pattern(kBs, 23), /*fua=*/true).ok());
  EXPECT_GT(r.bow->stats().entries, before);
  // After flush everything is on the device: restore gives the checkpoint.
  ASSERT_TRUE(r.bow->flush().ok());
  auto copy = std::make_shared<MemoryDevice>(r.disk->contents());
  restore(*copy);
  EXPECT_TRUE(in_use_blocks_equal(copy->contents(), r.checkpoint, r.free, kBs));
}

// Write-back writes whose backups are committed: reads see them at once,
// they are on the device below after a flush, after the commit (state 2) and
// when the target is closed, and a rewrite of one of their blocks lands
// after them. (Holds however long the committer keeps them in memory.)
TEST(Bow, CommittedWriteBackWritesGoDownAtFlushCommitAndClose) {
  for (int end = 0; end < 3; end++) {
    SCOPED_TRACE(end == 0 ? "flush" : end == 1 ? "state 2" : "close");
    Rig r = make_rig(32, 64);
    checkpoint(r);
    std::vector<uint8_t> want = r.checkpoint;
    for (uint64_t b = 1; b < 24; b += 2) {
      auto w = pattern(kBs, 100 + b);
      ASSERT_TRUE(r.bow->write(b * kBs, w).ok());
      std::copy(w.begin(), w.end(), want.begin() + b * kBs);
    }
    // Their backups are committed long before anything asks for the writes.
    for (int i = 0; i < 2000 && r.bow->stats().entries < 12; i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_GE(r.bow->stats().entries, 12u);
    auto again = pattern(kBs, 200);
    ASSERT_TRUE(r.bow->write(5 * kBs, again).ok());  // a CHANGED block with a write pending
    std::copy(again.begin(), again.end(), want.begin() + 5 * kBs);
    EXPECT_TRUE(in_use_blocks_equal(read_all(*r.bow), want, r.free, kBs));
    if (end == 0) {
      ASSERT_TRUE(r.bow->flush().ok());
    } else if (end == 1) {
      ASSERT_TRUE(r.bow->set_state(2).ok());
    } else {
      r.bow.reset();
    }
    // (In state 1 block 0 of the device holds the log.)
    std::set<uint64_t> skip = r.free;
    if (end != 1) skip.insert(0);
    EXPECT_TRUE(in_use_blocks_equal(r.disk->contents(), want, skip, kBs));
    if (end == 0) {  // and the backups restore the checkpoint
      auto copy = std::make_shared<MemoryDevice>(r.disk->contents());
      restore(*copy);
      EXPECT_TRUE(in_use_blocks_equal(copy->contents(), r.checkpoint, r.free, kBs));
    }
  }
}

namespace {
// Records every write and flush that reaches the device below.
class RecordingDevice : public MemoryDevice {
 public:
  struct Op {
    bool flush;
    uint64_t off, len;
    uint32_t magic;  // the first four bytes written (little-endian)
  };
  using MemoryDevice::MemoryDevice;
  std::vector<Op> ops() {
    std::lock_guard g(mu_);
    return ops_;
  }
  void clear() {
    std::lock_guard g(mu_);
    ops_.clear();
  }

 protected:
  Status do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) override {
    add({false, off, buf.size(), buf.size() >= 4 ? le32(buf.data()) : 0u});
    return MemoryDevice::do_write(off, buf, fua);
  }
  Status do_trim(uint64_t off, uint64_t len) override {
    add({false, off, len, 0});
    return MemoryDevice::do_trim(off, len);
  }
  Status do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool may_unmap) override {
    add({false, off, len, 0});
    return MemoryDevice::do_write_zeroes(off, len, fua, may_unmap);
  }
  Status do_flush() override {
    add({true, 0, 0, 0});
    return MemoryDevice::do_flush();
  }

 private:
  void add(Op op) {
    std::lock_guard g(mu_);
    ops_.push_back(op);
  }
  std::mutex mu_;
  std::vector<Op> ops_;
};
}  // namespace

// When a write hits the intent block, the intent moves: the list naming the
// new home must be durable before the new home (a block free in the
// filesystem's view) receives the intent's copy; else a cut that keeps the
// copy and loses the list leaves an intent block in free space that nothing
// names, and restore does not zero it (found by the 512-byte sweep, rarely).
TEST(Bow, IntentMovesOnlyAfterTheListNamingItsNewHomeIsDurable) {
  auto dev = std::make_shared<RecordingDevice>(pattern(kSize, 42));
  auto t = BowTarget::create(dev, kSize, {});
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  auto bow = t.value();
  ASSERT_TRUE(bow->trim(32 * kBs, 32 * kBs).ok());
  ASSERT_TRUE(bow->set_state(1).ok());
  auto intent_block = [&] {
    for (uint64_t b = 0; b < kBlocks; b++)
      if (bow->block_type(b) == BlockType::kIntent) return b;
    return uint64_t{0};
  };
  const uint64_t old_home = intent_block();
  ASSERT_NE(old_home, 0u);
  // Give the batch a backup too (the intent is written with a list).
  ASSERT_TRUE(bow->write(2 * kBs, pattern(kBs, 7)).ok());
  dev->clear();
  ASSERT_TRUE(bow->write(old_home * kBs, pattern(kBs, 8), /*fua=*/true).ok());
  const uint64_t new_home = intent_block();
  ASSERT_NE(new_home, 0u);
  ASSERT_NE(new_home, old_home);
  auto ops = dev->ops();
  // The copy at the new home, and the list at the old home before it.
  int64_t copy = -1, list = -1;
  for (size_t i = 0; i < ops.size(); i++) {
    if (ops[i].flush || ops[i].magic != kIntentMagic) continue;
    if (ops[i].off == new_home * kBs && copy < 0) copy = static_cast<int64_t>(i);
    if (ops[i].off == old_home * kBs && copy < 0) list = static_cast<int64_t>(i);
  }
  ASSERT_GE(copy, 0) << "no intent written at its new home " << new_home;
  ASSERT_GE(list, 0) << "no intent written at its old home " << old_home << " before the move";
  bool flushed_between = false;
  for (int64_t i = list + 1; i < copy; i++) flushed_between |= ops[i].flush;
  EXPECT_TRUE(flushed_between) << "the intent's new home " << new_home
                               << " was written before the list naming it was durable";
  // And a flush before the log (block 0) points at the new home.
  bool flushed_after = false;
  for (size_t i = copy + 1; i < ops.size(); i++) {
    if (ops[i].flush) flushed_after = true;
    if (!ops[i].flush && ops[i].off == 0) {
      EXPECT_TRUE(flushed_after) << "the log was written before the new intent was durable";
      break;
    }
  }
}
