// Concurrency: several threads write random 4 KiB blocks through
// snapshot-origin while others read the snapshots; two snapshots (4 KiB and
// 8 KiB chunks, so one 8 KiB chunk is written by two threads at once) are
// attached. Every snapshot read must return the snapshot-time bytes; at the
// end the origin holds the last write of each block, both snapshots still
// read as the snapshot time (also the persistent one reloaded from its COW),
// and merging the other one rolls the origin back.
//
// Each block is written by one thread only (block % writers), so "the last
// write of a block" is well defined; neighbouring blocks belong to different
// threads, so the same 8 KiB chunk is saved by racing writers.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "common/sys_util.h"
#include "io/memory_device.h"
#include "snapshot/snapshot.h"
#include "snapshot_test_util.h"

using namespace udm;
using namespace udm::snapshot;
using namespace udm::snapshot::test;

namespace {

// A 4 KiB block whose bytes name its writer, block and sequence number.
void fill(std::vector<uint8_t>& b, uint64_t tag) {
  for (size_t i = 0; i < b.size(); i += 8) {
    uint64_t v = tag * 0x9E3779B97F4A7C15ull + i;
    memcpy(b.data() + i, &v, 8);
  }
}

}  // namespace

namespace {
void concurrent_origin_writes_and_snapshot_reads(bool writeback) {
  constexpr uint64_t kBlk = 4096, kBlocks = 1024, kSize = kBlocks * kBlk;  // 4 MiB
  constexpr int kWriters = 4, kReaders = 3, kWritesPerThread = 1500;
  MapResolver r;
  const auto base = udm::test::random_bytes(kSize, 7);
  auto origin = std::make_shared<MemoryDevice>(base);
  r.devs["origin"] = origin;
  auto cow1 = std::make_shared<MemoryDevice>(kSize + 64 * kBlk);
  auto cow2 = std::make_shared<MemoryDevice>(kSize + 64 * kBlk);
  r.devs["cow1"] = cow1;
  r.devs["cow2"] = cow2;
  auto o = writeback ? make("snapshot-origin", {"origin", "1", "writeback"}, kSize, &r)
                     : make("snapshot-origin", {"origin"}, kSize, &r);
  auto s1 = make("snapshot", {"origin", "cow1", "P", "8"}, kSize, &r);
  auto s2 = make("snapshot", {"origin", "cow2", "P", "16"}, kSize, &r);
  ASSERT_TRUE(o.ok() && s1.ok() && s2.ok());
  (*s1)->resume();
  (*s2)->resume();
  (*o)->resume();

  // expected[b] = tag of the last write of block b by its owner (0: none).
  std::vector<uint64_t> last(kBlocks, 0);
  std::atomic<int> writers_left{kWriters};
  std::atomic<uint64_t> write_errors{0}, read_errors{0}, bad_reads{0}, reads{0};
  std::vector<std::thread> ts;
  for (int w = 0; w < kWriters; w++) {
    ts.emplace_back([&, w] {
      std::mt19937_64 rng(100 + w);
      std::vector<uint8_t> buf(kBlk);
      for (int i = 1; i <= kWritesPerThread; i++) {
        uint64_t b = (rng() % (kBlocks / kWriters)) * kWriters + w;
        uint64_t tag = (uint64_t(w + 1) << 40) | (b << 20) | uint64_t(i);
        fill(buf, tag);
        if (!(*o)->write(b * kBlk, buf).ok()) write_errors++;
        last[b] = tag;  // only this thread touches last[b]
        if (writeback && i % 500 == 0 && !(*o)->flush().ok()) write_errors++;  // drains racing writes
      }
      writers_left--;
    });
  }
  for (int rd = 0; rd < kReaders; rd++) {
    ts.emplace_back([&, rd] {
      std::mt19937_64 rng(200 + rd);
      BlockDevice& snap = rd % 2 ? **s2 : **s1;
      std::vector<uint8_t> buf;
      // Keep reading until the writers are done (and at least 200 reads).
      for (int i = 0; writers_left.load() > 0 || i < 200; i++) {
        uint64_t off = (rng() % (kSize / 512)) * 512;
        uint64_t len = std::min<uint64_t>(kSize - off, 512 * (1 + rng() % 64));
        buf.resize(len);
        reads++;
        if (!snap.read(off, buf).ok()) {
          read_errors++;
          continue;
        }
        if (memcmp(buf.data(), base.data() + off, len) != 0) bad_reads++;
      }
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_TRUE((*o)->flush().ok());  // (writeback: held writes reach the origin)
  EXPECT_EQ(write_errors.load(), 0u);
  EXPECT_EQ(read_errors.load(), 0u);
  EXPECT_EQ(bad_reads.load(), 0u) << "of " << reads.load() << " snapshot reads";
  EXPECT_EQ((*s1)->status().find("Invalid"), std::string::npos);

  auto expect = base;
  std::vector<uint8_t> blk(kBlk);
  uint64_t written = 0;
  for (uint64_t b = 0; b < kBlocks; b++) {
    if (!last[b]) continue;
    written++;
    fill(blk, last[b]);
    memcpy(expect.data() + b * kBlk, blk.data(), kBlk);
  }
  EXPECT_GT(written, kBlocks / 2);
  EXPECT_TRUE(origin->contents() == expect) << "origin is not the last write of each block";
  std::vector<uint8_t> all(kSize);
  ASSERT_TRUE((*s1)->read(0, all).ok());
  EXPECT_TRUE(all == base);
  ASSERT_TRUE((*s2)->read(0, all).ok());
  EXPECT_TRUE(all == base);
  // s1's COW on its own (a reload from disk) reads the same.
  r.devs["cow1copy"] = std::make_shared<MemoryDevice>(cow1->contents());
  {
    auto again = make("snapshot", {"origin", "cow1copy", "P", "0"}, kSize, &r);
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    ASSERT_TRUE((*again)->read(0, all).ok());
    EXPECT_TRUE(all == base);
  }
  // Roll back with s2 (handover to snapshot-merge); s1 saves what the merge
  // overwrites and keeps reading the snapshot time.
  s2->reset();
  auto m = make("snapshot-merge", {"origin", "cow2", "P", "16"}, kSize, &r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  (*m)->resume();
  ASSERT_TRUE(static_cast<MergeTarget*>(m->get())->wait().ok());
  EXPECT_TRUE(origin->contents() == base) << "merge did not roll the origin back";
  ASSERT_TRUE((*s1)->read(0, all).ok());
  EXPECT_TRUE(all == base);
}
}  // namespace

TEST(SnapshotStress, ConcurrentOriginWritesAndSnapshotReads) { concurrent_origin_writes_and_snapshot_reads(false); }

// The same with a writeback origin: writes held, drained by flushes racing
// other writers, by the 1-second timer and by the handover to the merge.
TEST(SnapshotStress, ConcurrentWritebackOriginWritesAndSnapshotReads) {
  concurrent_origin_writes_and_snapshot_reads(true);
}

namespace {
// A COW whose flush takes a while, so origin writes issued together queue up
// behind one commit and go out as one group; records the largest data write.
class SlowFlushDevice : public MemoryDevice {
 public:
  using MemoryDevice::MemoryDevice;
  std::atomic<uint64_t> largest_write{0};
  int flush_ms = 20;
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override {
    uint64_t cur = largest_write.load();
    while (b.size() > cur && !largest_write.compare_exchange_weak(cur, b.size())) {
    }
    return MemoryDevice::do_write(o, b, fua);
  }
  Status do_flush() override {
    std::this_thread::sleep_for(std::chrono::milliseconds(flush_ms));
    return MemoryDevice::do_flush();
  }
};
}  // namespace

// Group commit with the data chunks written by the committing thread: 16
// writers (one of them on the origin's short last chunk) start together; the
// COW then holds every old chunk under its record (checked on a reload).
TEST(SnapshotStress, GroupCommitWritesEveryDataChunk) {
  constexpr uint64_t kCB = 4096, kSize = 64 * kCB + 2048;
  MapResolver r;
  const auto base = udm::test::random_bytes(kSize, 9);
  auto origin = std::make_shared<MemoryDevice>(base);
  auto cow = std::make_shared<SlowFlushDevice>(96 * kCB);
  r.devs["origin"] = origin;
  r.devs["cow"] = cow;
  auto o = make("snapshot-origin", {"origin"}, kSize, &r);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kSize, &r);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  std::atomic<int> ready{0};
  std::atomic<uint64_t> errors{0};
  std::vector<std::thread> ts;
  std::vector<uint64_t> chunks = {64};
  for (uint64_t c = 3; chunks.size() < 16; c += 2) chunks.push_back(c);
  for (uint64_t c : chunks) {
    ts.emplace_back([&, c] {
      std::vector<uint8_t> buf(c == 64 ? 1024 : kCB, uint8_t(c));
      ready++;
      while (ready.load() < int(chunks.size())) std::this_thread::yield();
      if (!(*o)->write(c * kCB, buf).ok()) errors++;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors.load(), 0u);
  printf("largest COW write: %llu bytes\n", (unsigned long long)cow->largest_write.load());
  r.devs["cow2"] = std::make_shared<MemoryDevice>(cow->contents());
  auto again = make("snapshot", {"origin", "cow2", "P", "8"}, kSize, &r);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  auto& store = static_cast<SnapshotTarget*>(again->get())->core().store();
  EXPECT_EQ(store.exception_count(), chunks.size());
  std::vector<uint8_t> all(kSize);
  ASSERT_TRUE((*again)->read(0, all).ok());
  EXPECT_TRUE(all == base);
  auto img = cow->contents();
  for (uint64_t c : chunks) {
    auto nc = store.lookup(c);
    ASSERT_TRUE(nc.has_value()) << c;
    uint64_t len = std::min(kCB, kSize - c * kCB);
    EXPECT_EQ(memcmp(img.data() + *nc * kCB, base.data() + c * kCB, len), 0) << "chunk " << c;
  }
}

// Writers and readers on snapshot-merge while its background merge runs
// (every fourth write is a zero-out)
// (the origin's flush is slow, so each 4 MiB merge batch stays in flight a
// while and writes meet chunks being merged, not yet merged and merged): a
// read of a block returns the snapshot's bytes or a whole write of that
// block; when the merge is done the origin is the snapshot plus the last
// write of each block.
TEST(SnapshotStress, WritesAndReadsDuringBackgroundMerge) {
  constexpr uint64_t kBlk = 4096, kBlocks = 2048, kSize = kBlocks * kBlk;
  constexpr int kWriters = 3, kReaders = 2, kWritesPerThread = 800;
  constexpr uint64_t kZeroTag = ~uint64_t(0);
  MapResolver r;
  const auto base = udm::test::random_bytes(kSize, 11);
  auto origin = std::make_shared<SlowFlushDevice>(base);
  r.devs["origin"] = origin;
  r.devs["cow"] = std::make_shared<MemoryDevice>(kSize + 64 * kBlk);
  {
    // Snapshot, then change 3/4 of the origin's blocks.
    auto o = make("snapshot-origin", {"origin"}, kSize, &r);
    auto s = make("snapshot", {"origin", "cow", "P", "8"}, kSize, &r);
    ASSERT_TRUE(o.ok() && s.ok());
    (*o)->resume();
    (*s)->resume();
    std::vector<uint8_t> junk(kBlk, 0xa5);
    for (uint64_t b = 0; b < kBlocks; b++) {
      if (b % 4) {
        ASSERT_TRUE((*o)->write(b * kBlk, junk).ok());
      }
    }
  }
  auto block_of = [](uint64_t tag) { return (tag >> 20) & 0xfffff; };
  auto make_block = [](std::vector<uint8_t>& b, uint64_t tag) {
    for (size_t i = 0; i < b.size(); i += 8) {
      uint64_t v = i == 0 ? tag : tag * 0x9E3779B97F4A7C15ull + i;
      memcpy(b.data() + i, &v, 8);
    }
  };
  auto m = make("snapshot-merge", {"origin", "cow", "P", "8"}, kSize, &r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  auto* mt = static_cast<MergeTarget*>(m->get());
  EXPECT_GT(mt->remaining(), kBlocks / 2);
  (*m)->resume();  // the merge starts in the background
  std::vector<uint64_t> last(kBlocks, 0);
  std::atomic<int> writers_left{kWriters};
  std::atomic<uint64_t> errors{0}, bad{0}, reads{0};
  std::vector<std::thread> ts;
  for (int w = 0; w < kWriters; w++) {
    ts.emplace_back([&, w] {
      std::mt19937_64 rng(300 + w);
      std::vector<uint8_t> buf(kBlk);
      for (int i = 1; i <= kWritesPerThread; i++) {
        uint64_t b = (rng() % (kBlocks / kWriters)) * kWriters + w;
        uint64_t tag = (uint64_t(w + 1) << 40) | (b << 20) | uint64_t(i);
        if (i % 4 == 0) {  // a zero-out, with or without unmap
          if (!(*m)->write_zeroes(b * kBlk, kBlk, false, i % 8 == 0).ok()) errors++;
          last[b] = kZeroTag;
          continue;
        }
        make_block(buf, tag);
        if (!(*m)->write(b * kBlk, buf).ok()) errors++;
        last[b] = tag;
      }
      writers_left--;
    });
  }
  for (int rd = 0; rd < kReaders; rd++) {
    ts.emplace_back([&, rd] {
      std::mt19937_64 rng(400 + rd);
      std::vector<uint8_t> buf(kBlk), want(kBlk);
      for (int i = 0; writers_left.load() > 0 || i < 500; i++) {
        uint64_t b = rng() % kBlocks;
        reads++;
        if (!(*m)->read(b * kBlk, buf).ok()) {
          errors++;
          continue;
        }
        if (memcmp(buf.data(), base.data() + b * kBlk, kBlk) == 0) continue;
        if (std::all_of(buf.begin(), buf.end(), [](uint8_t x) { return x == 0; })) continue;
        uint64_t tag;
        memcpy(&tag, buf.data(), 8);
        make_block(want, tag);
        if (block_of(tag) != b || want != buf) bad++;
      }
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_TRUE(mt->wait().ok());
  EXPECT_EQ(errors.load(), 0u);
  EXPECT_EQ(bad.load(), 0u) << "of " << reads.load() << " reads during the merge";
  EXPECT_EQ(mt->remaining(), 0u);
  EXPECT_EQ((*m)->status(), "16/" + std::to_string((kSize + 64 * kBlk) / 512) + " 16");
  auto expect = base;
  std::vector<uint8_t> blk(kBlk);
  for (uint64_t b = 0; b < kBlocks; b++) {
    if (!last[b]) continue;
    if (last[b] == kZeroTag)
      std::fill(blk.begin(), blk.end(), 0);
    else
      make_block(blk, last[b]);
    memcpy(expect.data() + b * kBlk, blk.data(), kBlk);
  }
  EXPECT_TRUE(origin->contents() == expect) << "origin after the merge is not snapshot + last writes";
  std::vector<uint8_t> all(kSize);
  ASSERT_TRUE((*m)->read(0, all).ok());
  EXPECT_TRUE(all == expect);
}

// Batches racing on one snapshot: three threads write and zero random,
// overlapping ranges of up to 40 chunks (several chunk stripes locked at
// once, exceptions created in groups) while another writes big ranges of
// the origin (saves in batches) and another reads; the COW's flush takes
// 2 ms so commits overlap. Every 512-byte sector of
// the final view is the snapshot-time sector, zeroes from a zero-out that
// covered it, or the bytes one write covering it gave that sector; the COW
// reloads (no record twice) to the same view. Runs in about a second unless
// something deadlocks.
TEST(SnapshotStress, OverlappingBatchesOnOneSnapshot) {
  constexpr uint64_t kCB = 4096, kChunks = 512, kSize = kChunks * kCB;
  MapResolver r;
  const auto base = udm::test::random_bytes(kSize, 13);
  r.devs["origin"] = std::make_shared<MemoryDevice>(base);
  auto cow = std::make_shared<SlowFlushDevice>(2 * kSize);
  cow->flush_ms = 2;
  r.devs["cow"] = cow;
  auto o = make("snapshot-origin", {"origin"}, kSize, &r);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kSize, &r);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  // Sector `sec` as written by op `id`.
  auto sector_of = [](uint64_t id, uint64_t sec, uint8_t* p) {
    for (int i = 0; i < 512; i += 8) {
      uint64_t v = (id << 32 | sec) * 0x9E3779B97F4A7C15ull + i;
      memcpy(p + i, &v, 8);
    }
  };
  struct Done {
    uint64_t id, off, len;
    bool zero;
  };
  std::mutex done_mu;
  std::vector<Done> done;
  std::atomic<uint64_t> errors{0}, next_id{1};
  std::atomic<int> left{3};
  std::vector<std::thread> ts;
  for (int t = 0; t < 3; t++) {
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(500 + t);
      std::vector<uint8_t> buf;
      for (int i = 0; i < 60; i++) {
        uint64_t len = 512 * (1 + rng() % (40 * 8)), off = 512 * (rng() % ((kSize - len) / 512 + 1));
        uint64_t id = next_id++;
        bool zero = rng() % 3 == 0;
        Status st;
        if (zero) {
          st = (*s)->write_zeroes(off, len, false, rng() % 2);
        } else {
          buf.resize(len);
          for (uint64_t k = 0; k < len; k += 512) sector_of(id, (off + k) / 512, buf.data() + k);
          st = (*s)->write(off, buf);
        }
        if (!st.ok()) errors++;
        std::lock_guard lk(done_mu);
        done.push_back({id, off, len, zero});
      }
      left--;
    });
  }
  ts.emplace_back([&] {
    std::mt19937_64 rng(600);
    for (int i = 0; left.load() > 0; i++) {
      uint64_t len = kCB * (1 + rng() % 64), off = kCB * (rng() % ((kSize - len) / kCB + 1));
      Status st = i % 2 ? (*o)->write_zeroes(off, len, false, true)
                        : (*o)->write(off, std::vector<uint8_t>(len, uint8_t(i)));
      if (!st.ok()) errors++;
    }
  });
  ts.emplace_back([&] {
    std::mt19937_64 rng(700);
    std::vector<uint8_t> buf(64 * 512);
    while (left.load() > 0)
      if (!(*s)->read(512 * (rng() % (kSize / 512 - 64)), buf).ok()) errors++;
  });
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors.load(), 0u);
  std::vector<uint8_t> view(kSize);
  ASSERT_TRUE((*s)->read(0, view).ok());
  std::vector<uint8_t> want(512);
  uint64_t bad = 0, from_writes = 0, zeroed = 0;
  for (uint64_t sec = 0; sec < kSize / 512; sec++) {
    const uint8_t* got = view.data() + sec * 512;
    bool ok = memcmp(got, base.data() + sec * 512, 512) == 0;
    for (auto& d : done) {
      if (ok) break;
      if (sec * 512 < d.off || sec * 512 >= d.off + d.len) continue;
      if (d.zero) {
        ok = std::all_of(got, got + 512, [](uint8_t x) { return x == 0; });
        zeroed += ok;
      } else {
        sector_of(d.id, sec, want.data());
        ok = memcmp(got, want.data(), 512) == 0;
        from_writes += ok;
      }
    }
    bad += !ok;
  }
  EXPECT_EQ(bad, 0u) << "sectors that are no op's bytes";
  EXPECT_GT(from_writes, 100u);
  EXPECT_GT(zeroed, 100u);
  r.devs["cowcopy"] = std::make_shared<MemoryDevice>(cow->contents());
  auto again = make("snapshot", {"origin", "cowcopy", "P", "8"}, kSize, &r);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  std::vector<uint8_t> view2(kSize);
  ASSERT_TRUE((*again)->read(0, view2).ok());
  EXPECT_TRUE(view2 == view);
}

// A writeback origin under 512-byte writes: four writers own interleaved
// sectors (so every 4 KiB held unit is written by all of them at once), two
// snapshots with 512-byte and 4 KiB chunks (a unit's sectors saved at
// different times), flushes racing the writes. Writes to one unit that go
// straight to the origin and writes held around them (read-modify-write of
// the unit) must not lose each other's sectors.
TEST(SnapshotStress, WritebackOriginSectorWritesSharingUnits) {
  constexpr uint64_t kSec = 512, kSectors = 4096, kSize = kSectors * kSec;  // 2 MiB
  constexpr int kWriters = 4, kWritesPerThread = 3000;
  MapResolver r;
  const auto base = udm::test::random_bytes(kSize, 8);
  auto origin = std::make_shared<MemoryDevice>(base);
  r.devs["origin"] = origin;
  r.devs["cow1"] = std::make_shared<MemoryDevice>(2 * kSize + (1 << 20));
  r.devs["cow2"] = std::make_shared<MemoryDevice>(2 * kSize + (1 << 20));
  auto o = make("snapshot-origin", {"origin", "1", "writeback"}, kSize, &r);
  auto s1 = make("snapshot", {"origin", "cow1", "P", "1"}, kSize, &r);
  auto s2 = make("snapshot", {"origin", "cow2", "P", "8"}, kSize, &r);
  ASSERT_TRUE(o.ok() && s1.ok() && s2.ok());
  (*s1)->resume();
  (*s2)->resume();
  (*o)->resume();
  std::vector<uint64_t> last(kSectors, 0);
  std::atomic<uint64_t> errors{0};
  std::vector<std::thread> ts;
  for (int w = 0; w < kWriters; w++) {
    ts.emplace_back([&, w] {
      std::mt19937_64 rng(300 + w);
      std::vector<uint8_t> buf(kSec);
      for (int i = 1; i <= kWritesPerThread; i++) {
        const uint64_t sec = (rng() % (kSectors / kWriters)) * kWriters + w;
        const uint64_t tag = (uint64_t(w + 1) << 40) | (sec << 20) | uint64_t(i);
        fill(buf, tag);
        if (!(*o)->write(sec * kSec, buf).ok()) errors++;
        last[sec] = tag;  // only this thread writes sector sec
        if (w == 0 && i % 300 == 0 && !(*o)->flush().ok()) errors++;
      }
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_TRUE((*o)->flush().ok());
  EXPECT_EQ(errors.load(), 0u);
  auto expect = base;
  std::vector<uint8_t> sec(kSec);
  for (uint64_t k = 0; k < kSectors; k++) {
    if (!last[k]) continue;
    fill(sec, last[k]);
    memcpy(expect.data() + k * kSec, sec.data(), kSec);
  }
  for (uint64_t k = 0; k < kSectors; k++)
    ASSERT_EQ(memcmp(origin->contents().data() + k * kSec, expect.data() + k * kSec, kSec), 0)
        << "sector " << k << " is not its last write";
  std::vector<uint8_t> all(kSize);
  ASSERT_TRUE((*s1)->read(0, all).ok());
  EXPECT_TRUE(all == base);
  ASSERT_TRUE((*s2)->read(0, all).ok());
  EXPECT_TRUE(all == base);
}
