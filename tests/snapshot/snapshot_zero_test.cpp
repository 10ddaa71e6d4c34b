// write_zeroes and trim on snapshot-origin, snapshot (P and N) and
// snapshot-merge, their caps, and the "reads bytes that are not its view"
// class of leaks: COW chunks reused after a merge or a re-created snapshot,
// a chunk written but not committed at a crash, the merge's view while it
// runs, discards that must not reach chunks a snapshot still reads.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/sys_util.h"
#include "io/fault_device.h"
#include "io/memory_device.h"
#include "snapshot/cow_format.h"
#include "snapshot/snapshot.h"
#include "snapshot_test_util.h"

using namespace udm;
using namespace udm::snapshot;
using namespace udm::snapshot::test;
using namespace udm::test;

namespace {

using Bytes = std::vector<uint8_t>;

// Forwards to a device and counts what reaches it. With garbage_trim, a trim
// fills the range with 0xEE ("contents unspecified", the worst a discard
// may do) instead of passing it on.
class Recorder : public BlockDevice {
 public:
  explicit Recorder(DevicePtr d, bool garbage_trim = false) : d_(std::move(d)), garbage_(garbage_trim) {}
  uint64_t size() const override { return d_->size(); }
  DeviceCaps caps() const override {
    DeviceCaps c = d_->caps();
    if (garbage_) {
      c.can_trim = true;
      c.trim_zeroes = false;
    }
    return c;
  }
  std::atomic<uint64_t> writes{0}, zero_ops{0}, zero_bytes{0}, unmaps{0}, fua_zeroes{0}, trims{0},
      trim_bytes{0}, flushes{0};

 protected:
  Status do_read(uint64_t o, std::span<uint8_t> b) override { return d_->read(o, b); }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override {
    writes++;
    return d_->write(o, b, fua);
  }
  Status do_write_zeroes(uint64_t o, uint64_t n, bool fua, bool may_unmap) override {
    zero_ops++;
    zero_bytes += n;
    if (may_unmap) unmaps++;
    if (fua) fua_zeroes++;
    return d_->write_zeroes(o, n, fua, may_unmap);
  }
  Status do_trim(uint64_t o, uint64_t n) override {
    trims++;
    trim_bytes += n;
    if (!garbage_) return d_->trim(o, n);
    Bytes junk(n, 0xEE);
    return d_->write(o, junk);
  }
  Status do_flush() override {
    flushes++;
    return d_->flush();
  }

 private:
  DevicePtr d_;
  bool garbage_;
};

Bytes read_all(BlockDevice& d) {
  Bytes b(d.size());
  Status st = d.read(0, b);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return b;
}

// First differing byte, or -1.
int64_t diff(const Bytes& a, const Bytes& b) {
  if (a.size() != b.size()) return int64_t(std::min(a.size(), b.size()));
  for (size_t i = 0; i < a.size(); i++)
    if (a[i] != b[i]) return int64_t(i);
  return -1;
}

uint64_t exceptions(const TargetPtr& s) {
  return static_cast<SnapshotTarget*>(s.get())->core().store().exception_count();
}

constexpr uint64_t kCB = 4096;

}  // namespace

// ---- snapshot-origin

// Zeroing the origin saves the old chunks into every snapshot first (like a
// write) and then reaches the origin device as one write_zeroes with the
// caller's may_unmap, never as zero buffers.
TEST(SnapshotZero, OriginWriteZeroesSavesThenZeroesTheOrigin) {
  const uint64_t kOrigin = 1 << 20;
  const Bytes base = random_bytes(kOrigin, 31);
  MapResolver r;
  auto mem = std::make_shared<MemoryDevice>(base);
  auto orec = std::make_shared<Recorder>(mem);
  r.devs["origin"] = orec;
  auto cow1 = std::make_shared<MemoryDevice>(2 << 20);
  r.devs["cow1"] = cow1;
  r.devs["cow2"] = std::make_shared<MemoryDevice>(2 << 20);
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s1 = make("snapshot", {"origin", "cow1", "P", "8"}, kOrigin, &r);
  auto s2 = make("snapshot", {"origin", "cow2", "N", "16"}, kOrigin, &r);
  ASSERT_TRUE(o.ok() && s1.ok() && s2.ok());
  (*o)->resume();
  (*s1)->resume();
  (*s2)->resume();
  Bytes model = base;
  uint64_t zero_ops = 0, unmaps = 0;
  for (bool unmap : {false, true}) {
    SCOPED_TRACE(unmap ? "may_unmap" : "no unmap");
    const uint64_t off = unmap ? 300000 : 10000, len = 50000;  // unaligned, 13-14 chunks
    ASSERT_TRUE((*o)->write_zeroes(off, len, false, unmap).ok());
    memset(model.data() + off, 0, len);
    zero_ops++;
    unmaps += unmap;
    EXPECT_EQ(orec->writes.load(), 0u) << "the origin got zero buffers";
    EXPECT_EQ(orec->zero_ops.load(), zero_ops);
    EXPECT_EQ(orec->unmaps.load(), unmaps);
    EXPECT_EQ(diff(read_all(**o), model), -1);
    EXPECT_EQ(diff(read_all(**s1), base), -1);
    EXPECT_EQ(diff(read_all(**s2), base), -1);
  }
  // 10000..60000 touches 4 KiB chunks 2..14, 300000..350000 chunks 73..85.
  EXPECT_EQ(exceptions(*s1), 13u + 13u);
  // The persistent snapshot reloaded from its COW alone reads the same.
  r.devs["cow1copy"] = std::make_shared<MemoryDevice>(cow1->contents());
  auto again = make("snapshot", {"origin", "cow1copy", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(diff(read_all(**again), base), -1);
  // The whole device with FUA: every chunk saved, FUA passed down.
  ASSERT_TRUE((*o)->write_zeroes(0, kOrigin, true, true).ok());
  EXPECT_EQ(orec->fua_zeroes.load(), 1u);
  EXPECT_EQ(orec->writes.load(), 0u);
  EXPECT_EQ(diff(mem->contents(), Bytes(kOrigin, 0)), -1);
  EXPECT_EQ(diff(read_all(**s1), base), -1);
  EXPECT_EQ(diff(read_all(**s2), base), -1);
  EXPECT_EQ(exceptions(*s1), 256u);
}

// A big origin write saves its unsaved chunks in batches: one group commit
// per batch instead of one per chunk (counted as COW flushes).
TEST(SnapshotZero, BigOriginZeroOutCommitsInBatches) {
  const uint64_t kOrigin = 8 << 20;  // 2048 chunks, 2 batches of 1024
  MapResolver r;
  const Bytes base = random_bytes(kOrigin, 32);
  r.devs["origin"] = std::make_shared<MemoryDevice>(base);
  auto crec = std::make_shared<Recorder>(std::make_shared<MemoryDevice>(kOrigin + 64 * kCB));
  r.devs["cow"] = crec;
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  uint64_t f0 = crec->flushes.load();
  ASSERT_TRUE((*o)->write_zeroes(0, kOrigin, false, true).ok());
  EXPECT_EQ(exceptions(*s), 2048u);
  EXPECT_LE(crec->flushes.load() - f0, 2u);
  EXPECT_EQ(diff(read_all(**s), base), -1);
  EXPECT_EQ(diff(read_all(**o), Bytes(kOrigin, 0)), -1);
}

// ---- snapshot (P and N)

class SnapshotZeroStore : public ::testing::TestWithParam<std::string> {};

// Every path of a snapshot zero-out: a chunk with an exception (its COW
// bytes zeroed on the COW), whole new chunks (allocated, zeroed on the COW
// in one call, committed without a data write), a partial new chunk (old
// chunk with the range zeroed), and a range whose origin bytes are zero
// already (no exception; the view stays zero when the origin changes).
TEST_P(SnapshotZeroStore, EveryPath) {
  const std::string type = GetParam();
  const uint64_t kOrigin = 64 * kCB;
  Bytes base = random_bytes(kOrigin, 33);
  memset(base.data() + 40 * kCB, 0, 8 * kCB);  // chunks 40..47 are zeroes
  memset(base.data() + 50 * kCB, 0, kCB / 2);  // chunk 50's first half too
  MapResolver r;
  auto origin = std::make_shared<MemoryDevice>(base);
  r.devs["origin"] = origin;
  auto cowmem = std::make_shared<MemoryDevice>(128 * kCB);
  auto crec = std::make_shared<Recorder>(cowmem);
  r.devs["cow"] = crec;
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s = make("snapshot", {"origin", "cow", type, "8"}, kOrigin, &r);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  Bytes view = base;
  auto swrite = [&](uint64_t off, size_t len, uint8_t v) {
    Bytes b(len, v);
    ASSERT_TRUE((*s)->write(off, b).ok());
    memset(view.data() + off, v, len);
  };
  auto szero = [&](uint64_t off, uint64_t len, bool unmap) {
    ASSERT_TRUE((*s)->write_zeroes(off, len, false, unmap).ok());
    memset(view.data() + off, 0, len);
  };
  // 1. A chunk with an exception.
  swrite(5 * kCB + 100, 3000, 0xAB);
  ASSERT_EQ(exceptions(*s), 1u);
  uint64_t z0 = crec->zero_ops.load(), w0 = crec->writes.load();
  szero(5 * kCB + 1000, 500, true);
  EXPECT_EQ(exceptions(*s), 1u);
  EXPECT_EQ(crec->zero_ops.load(), z0 + 1);
  EXPECT_EQ(crec->unmaps.load(), 1u);
  EXPECT_EQ(crec->writes.load(), w0);
  EXPECT_EQ(diff(read_all(**s), view), -1);
  // 2. Four whole new chunks: one COW zero-out, no data write, one commit.
  z0 = crec->zero_ops.load();
  uint64_t f0 = crec->flushes.load();
  szero(10 * kCB, 4 * kCB, false);
  EXPECT_EQ(exceptions(*s), 5u);
  EXPECT_EQ(crec->zero_ops.load(), z0 + 1);
  EXPECT_EQ(crec->unmaps.load(), 1u) << "may_unmap=false reached the COW as unmap";
  if (type == "P") {
    EXPECT_EQ(crec->flushes.load(), f0 + 1) << "one group commit for the four records";
    EXPECT_EQ(crec->writes.load(), w0 + 1) << "only the metadata area is written";
  } else {
    EXPECT_EQ(crec->writes.load(), w0);
  }
  EXPECT_EQ(diff(read_all(**s), view), -1);
  // 3. A partial new chunk.
  szero(20 * kCB + 100, 200, true);
  EXPECT_EQ(exceptions(*s), 6u);
  // 4. Origin bytes that are zero already: nothing allocated.
  szero(40 * kCB + 10, 3 * kCB, true);
  EXPECT_EQ(exceptions(*s), 6u);
  EXPECT_EQ(diff(read_all(**s), view), -1);
  // Zero at the chunk's start is not zero in the range: an exception.
  szero(50 * kCB + kCB / 2 + 8, 1000, true);
  EXPECT_EQ(exceptions(*s), 7u);
  EXPECT_EQ(diff(read_all(**s), view), -1);
  // ... and the view stays zero when the origin changes there (saved first).
  Bytes junk(8 * kCB, 0xCD);
  ASSERT_TRUE((*o)->write(40 * kCB, junk).ok());
  EXPECT_EQ(diff(read_all(**s), view), -1);
  // 5. One call across all kinds: existing exceptions, new whole and partial
  // chunks, zero origin chunks (now saved), to the short end of the device.
  szero(4 * kCB + 7, kOrigin - 4 * kCB - 7, true);
  EXPECT_EQ(diff(read_all(**s), view), -1);
  // The origin only changed where it was written.
  Bytes ov = base;
  memset(ov.data() + 40 * kCB, 0xCD, 8 * kCB);
  EXPECT_EQ(diff(origin->contents(), ov), -1);
  if (type == "P") {
    r.devs["cowcopy"] = std::make_shared<MemoryDevice>(cowmem->contents());
    auto again = make("snapshot", {"origin", "cowcopy", "P", "8"}, kOrigin, &r);
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    EXPECT_EQ(diff(read_all(**again), view), -1);
  }
}

// A snapshot zero-out larger than a batch commits once per batch.
TEST_P(SnapshotZeroStore, BigZeroOutCommitsInBatches) {
  const std::string type = GetParam();
  const uint64_t kOrigin = 8 << 20;  // 2048 chunks
  MapResolver r;
  const Bytes base = random_bytes(kOrigin, 34);
  r.devs["origin"] = std::make_shared<MemoryDevice>(base);
  auto crec = std::make_shared<Recorder>(std::make_shared<MemoryDevice>(kOrigin + 64 * kCB));
  r.devs["cow"] = crec;
  auto s = make("snapshot", {"origin", "cow", type, "8"}, kOrigin, &r);
  ASSERT_TRUE(s.ok());
  (*s)->resume();
  uint64_t f0 = crec->flushes.load(), z0 = crec->zero_ops.load();
  ASSERT_TRUE((*s)->write_zeroes(0, kOrigin, true, true).ok());
  EXPECT_EQ(exceptions(*s), 2048u);
  if (type == "P") {
    EXPECT_LE(crec->flushes.load() - f0, 2u);
    // The data chunks of a batch are consecutive except for the metadata
    // areas between them (every 256 chunks).
    EXPECT_LE(crec->zero_ops.load() - z0, 2 * 5u);
  }
  EXPECT_EQ(diff(read_all(**s), Bytes(kOrigin, 0)), -1);
  // Big writes batch the same way.
  Bytes data = random_bytes(kOrigin, 35);
  f0 = crec->flushes.load();
  ASSERT_TRUE((*s)->write(0, data).ok());
  EXPECT_EQ(diff(read_all(**s), data), -1);
}

INSTANTIATE_TEST_SUITE_P(Stores, SnapshotZeroStore, ::testing::Values("P", "N"));

// ---- snapshot-merge

// Zeroing through snapshot-merge before, in the middle of and after the
// merge: chunks not merged yet are zeroed in the COW (and merged as zeroes),
// other chunks on the origin after the origin's other snapshots saved them.
TEST(SnapshotZero, MergeBeforeDuringAndAfter) {
  const uint64_t kOrigin = 512 * kCB;  // 300 exceptions: area 1 (44) merges first
  const Bytes base = random_bytes(kOrigin, 36);
  MapResolver r;
  auto mem = std::make_shared<MemoryDevice>(base);
  auto orec = std::make_shared<Recorder>(mem);
  r.devs["origin"] = orec;
  r.devs["cow"] = std::make_shared<MemoryDevice>(400 * kCB);
  r.devs["cow2"] = std::make_shared<MemoryDevice>(600 * kCB);
  Bytes view = base;
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s2 = make("snapshot", {"origin", "cow2", "P", "8"}, kOrigin, &r);  // must never change
  ASSERT_TRUE(o.ok() && s2.ok());
  (*o)->resume();
  (*s2)->resume();
  {
    auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
    ASSERT_TRUE(s.ok());
    (*s)->resume();
    for (uint64_t i = 0; i < 300; i++) {
      uint64_t c = (i * 37) % 512;
      Bytes b(kCB / 2, uint8_t(i));
      ASSERT_TRUE((*s)->write(c * kCB + kCB / 4, b).ok());
      memset(view.data() + c * kCB + kCB / 4, uint8_t(i), kCB / 2);
    }
  }
  auto m = make("snapshot-merge", {"origin", "cow", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  auto* mt = static_cast<MergeTarget*>(m->get());
  ASSERT_EQ(mt->remaining(), 300u);
  auto mzero = [&](uint64_t off, uint64_t len, bool unmap) {
    ASSERT_TRUE((*m)->write_zeroes(off, len, false, unmap).ok());
    memset(view.data() + off, 0, len);
  };
  // Before: across saved and unsaved chunks.
  mzero(10 * kCB + 123, 40 * kCB, true);
  EXPECT_EQ(diff(read_all(**m), view), -1);
  EXPECT_EQ(diff(read_all(**s2), base), -1);
  // During: one batch (area 1's 44 records) merged, then more zeroes.
  mt->set_max_batch_bytes(44 * kCB);
  int batches = 0;
  ASSERT_TRUE(mt->run_merge([&](uint64_t) {
                  if (++batches == 1) mt->presuspend();
                }).ok());
  EXPECT_EQ(mt->remaining(), 256u);
  EXPECT_EQ(diff(read_all(**m), view), -1);
  mzero(200 * kCB, 100 * kCB + 77, false);
  EXPECT_EQ(diff(read_all(**m), view), -1);
  EXPECT_EQ(diff(read_all(**s2), base), -1);
  // The rest of the merge in the background.
  mt->resume();
  ASSERT_TRUE(mt->wait().ok());
  EXPECT_EQ(mt->remaining(), 0u);
  EXPECT_EQ(diff(mem->contents(), view), -1) << "merge did not copy the zeroed view";
  // After: straight to the origin as one write_zeroes.
  uint64_t w = orec->writes.load(), z = orec->zero_ops.load();
  mzero(1000, 300 * kCB, true);
  EXPECT_EQ(orec->writes.load(), w);
  EXPECT_EQ(orec->zero_ops.load(), z + 1);
  EXPECT_EQ(diff(mem->contents(), view), -1);
  EXPECT_EQ(diff(read_all(**s2), base), -1);
}

// ---- trim

// snapshot-origin passes a discard down only for chunks no snapshot still
// reads from the origin; the origin here fills discarded ranges with junk,
// which no snapshot may ever see.
TEST(SnapshotTrim, OriginDiscardsOnlyWhatNoSnapshotNeeds) {
  const uint64_t kOrigin = 64 * kCB;
  const Bytes base = random_bytes(kOrigin, 37);
  MapResolver r;
  auto mem = std::make_shared<MemoryDevice>(base);
  auto orec = std::make_shared<Recorder>(mem, true);
  r.devs["origin"] = orec;
  r.devs["cow"] = std::make_shared<MemoryDevice>(128 * kCB);
  r.devs["cow2"] = std::make_shared<MemoryDevice>(128 * kCB);
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  ASSERT_TRUE(o.ok());
  (*o)->resume();
  EXPECT_TRUE((*o)->caps().can_trim);
  EXPECT_FALSE((*o)->caps().trim_zeroes);
  Bytes ov = base;
  // No snapshot: the whole range goes down.
  ASSERT_TRUE((*o)->trim(60 * kCB, 4 * kCB).ok());
  EXPECT_EQ(orec->trim_bytes.load(), 4 * kCB);
  memset(ov.data() + 60 * kCB, 0xEE, 4 * kCB);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
  auto s2 = make("snapshot", {"origin", "cow2", "N", "16"}, kOrigin, &r);
  ASSERT_TRUE(s.ok() && s2.ok());
  (*s)->resume();
  (*s2)->resume();
  // Two snapshots, 4 and 8 KiB chunks. Origin writes to 4 KiB chunks 3, 10
  // and 11 make s save those and s2 its 8 KiB chunks 1 and 5 (4 KiB chunks
  // 2, 3, 10, 11); a snapshot write gives s chunk 20 (s2 still needs it), so
  // only 3, 10 and 11 are needed by nobody.
  Bytes b(kCB, 0x42);
  ASSERT_TRUE((*o)->write(3 * kCB, b).ok());
  ASSERT_TRUE((*o)->write(10 * kCB, b).ok());
  ASSERT_TRUE((*o)->write(11 * kCB, b).ok());
  ASSERT_TRUE((*s)->write(20 * kCB, b).ok());
  uint64_t t0 = orec->trim_bytes.load();
  ASSERT_TRUE((*o)->trim(0, 32 * kCB).ok());
  EXPECT_EQ(orec->trim_bytes.load() - t0, 3 * kCB);
  EXPECT_EQ(orec->trims.load(), 3u) << "chunk 3, then chunks 10-11 as one run";
  memset(ov.data() + 3 * kCB, 0xEE, kCB);
  memset(ov.data() + 10 * kCB, 0xEE, 2 * kCB);
  EXPECT_EQ(diff(mem->contents(), ov), -1);
  Bytes sv = base;
  memset(sv.data() + 60 * kCB, 0xEE, 4 * kCB);  // discarded before the snapshots
  EXPECT_EQ(diff(read_all(**s2), sv), -1);
  memset(sv.data() + 20 * kCB, 0x42, kCB);
  EXPECT_EQ(diff(read_all(**s), sv), -1);
}

// A snapshot discard zeroes the COW bytes (with unmap) of whole chunks that
// have an exception; partial chunks and chunks reading the origin stay.
TEST(SnapshotTrim, SnapshotDiscardZeroesWholeExceptionChunks) {
  const uint64_t kOrigin = 64 * kCB;
  const Bytes base = random_bytes(kOrigin, 38);
  MapResolver r;
  r.devs["origin"] = std::make_shared<MemoryDevice>(base);
  auto crec = std::make_shared<Recorder>(std::make_shared<MemoryDevice>(128 * kCB));
  r.devs["cow"] = crec;
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(s.ok());
  (*s)->resume();
  DeviceCaps c = (*s)->caps();
  EXPECT_TRUE(c.can_trim);
  EXPECT_FALSE(c.trim_zeroes);
  Bytes view = base;
  auto sw = [&](uint64_t c, uint64_t n, uint8_t v) {
    Bytes b(n * kCB, v);
    ASSERT_TRUE((*s)->write(c * kCB, b).ok());
    memset(view.data() + c * kCB, v, n * kCB);
  };
  sw(30, 1, 0x60);  // COW chunk 2
  sw(8, 3, 0x61);   // COW chunks 3-5
  sw(12, 1, 0x62);  // COW chunk 6
  sw(40, 1, 0x63);  // COW chunk 7
  uint64_t e = exceptions(*s);
  // Whole: 8, 9, 12, 30 (runs COW 3-4, 6, 2) and the ones without an
  // exception; partial: 10 (from 10*kCB+100) and 40.
  ASSERT_TRUE((*s)->trim(7 * kCB, 3 * kCB + 100).ok());
  ASSERT_TRUE((*s)->trim(11 * kCB, 20 * kCB).ok());
  ASSERT_TRUE((*s)->trim(40 * kCB + 100, kCB).ok());
  memset(view.data() + 8 * kCB, 0, 2 * kCB);
  memset(view.data() + 12 * kCB, 0, kCB);
  memset(view.data() + 30 * kCB, 0, kCB);
  EXPECT_EQ(exceptions(*s), e);
  EXPECT_EQ(crec->zero_ops.load(), 3u);
  EXPECT_EQ(crec->unmaps.load(), 3u);
  EXPECT_EQ(diff(read_all(**s), view), -1);
}

// snapshot-merge discards only chunks without an exception (merged or never
// saved), and only where no other snapshot of the origin still needs them.
TEST(SnapshotTrim, MergeDiscardsOnlyMergedAndUnneededChunks) {
  const uint64_t kOrigin = 64 * kCB;
  const Bytes base = random_bytes(kOrigin, 39);
  MapResolver r;
  auto mem = std::make_shared<MemoryDevice>(base);
  auto orec = std::make_shared<Recorder>(mem, true);
  r.devs["origin"] = orec;
  r.devs["cow"] = std::make_shared<MemoryDevice>(128 * kCB);
  r.devs["cow2"] = std::make_shared<MemoryDevice>(128 * kCB);
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s2 = make("snapshot", {"origin", "cow2", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(o.ok() && s2.ok());
  (*o)->resume();
  (*s2)->resume();
  Bytes view = base;
  {
    auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
    ASSERT_TRUE(s.ok());
    (*s)->resume();
    Bytes b(2 * kCB, 0x71);
    ASSERT_TRUE((*s)->write(4 * kCB, b).ok());  // chunks 4, 5 to merge
    memset(view.data() + 4 * kCB, 0x71, 2 * kCB);
  }
  // s2 has saved chunk 20 (an origin write); nobody else needs it. Chunks 4
  // and 5 are saved by s2 too, but wait for the merge: discarding them would
  // only be undone by the merge's copy.
  Bytes w(kCB, 0x72);
  ASSERT_TRUE((*o)->write(20 * kCB, w).ok());
  memset(view.data() + 20 * kCB, 0x72, kCB);
  Bytes w2(2 * kCB, 0x73);
  ASSERT_TRUE((*o)->write(4 * kCB, w2).ok());
  o->reset();
  auto m = make("snapshot-merge", {"origin", "cow", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE((*m)->trim(0, 32 * kCB).ok());
  // Only chunk 20: 4 and 5 wait for the merge, the others s2 still reads.
  EXPECT_EQ(orec->trim_bytes.load(), kCB);
  memset(view.data() + 20 * kCB, 0xEE, kCB);
  EXPECT_EQ(diff(read_all(**m), view), -1);
  EXPECT_EQ(diff(read_all(**s2), base), -1);
  ASSERT_TRUE(static_cast<MergeTarget*>(m->get())->run_merge().ok());
  EXPECT_EQ(diff(mem->contents(), view), -1);
  // Merged now: chunks 4 and 5 may go (s2 has them).
  ASSERT_TRUE((*m)->trim(4 * kCB, 2 * kCB).ok());
  EXPECT_EQ(orec->trim_bytes.load(), 3 * kCB);
  EXPECT_EQ(diff(read_all(**s2), base), -1);
}

// ---- caps

TEST(SnapshotCaps, HonestForEveryTarget) {
  const uint64_t kOrigin = 64 * kCB;
  MapResolver r;
  r.devs["origin"] = std::make_shared<MemoryDevice>(kOrigin);
  r.devs["cow"] = std::make_shared<MemoryDevice>(256 * kCB);
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s = make("snapshot", {"origin", "cow", "P", "128"}, kOrigin, &r);  // 64 KiB chunks
  ASSERT_TRUE(o.ok() && s.ok()) << s.status().to_string();
  DeviceCaps mc = r.devs["origin"]->caps();
  DeviceCaps oc = (*o)->caps();
  EXPECT_FALSE(oc.read_only);
  EXPECT_EQ(oc.can_trim, mc.can_trim);
  EXPECT_FALSE(oc.trim_zeroes);
  EXPECT_TRUE(oc.can_write_zeroes);
  EXPECT_EQ(oc.fast_zero, mc.fast_zero);
  EXPECT_EQ(oc.logical_block, mc.logical_block);
  DeviceCaps sc = (*s)->caps();
  EXPECT_FALSE(sc.read_only);
  EXPECT_TRUE(sc.can_trim);
  EXPECT_FALSE(sc.trim_zeroes);
  EXPECT_TRUE(sc.can_write_zeroes);
  EXPECT_FALSE(sc.fast_zero);
  EXPECT_EQ(sc.physical_block, 65536u);
  EXPECT_EQ(sc.logical_block, 512u);
  s->reset();
  auto m = make("snapshot-merge", {"origin", "cow", "P", "128"}, kOrigin, &r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  DeviceCaps gc = (*m)->caps();
  EXPECT_FALSE(gc.read_only);
  EXPECT_FALSE(gc.trim_zeroes);
  EXPECT_TRUE(gc.can_write_zeroes);
  // A read-only origin device: snapshot-origin is read-only and refuses.
  r.devs["ro"] = std::make_shared<MemoryDevice>(kOrigin, true);
  auto ro = make("snapshot-origin", {"ro"}, kOrigin, &r);
  ASSERT_TRUE(ro.ok());
  EXPECT_TRUE((*ro)->caps().read_only);
  EXPECT_FALSE((*ro)->caps().can_trim);
  EXPECT_FALSE((*ro)->caps().can_write_zeroes);
  EXPECT_EQ((*ro)->write_zeroes(0, kCB, false, true).code(), EROFS);
  EXPECT_EQ((*ro)->trim(0, kCB).code(), EOPNOTSUPP);
}

// ---- leaks: bytes that are not the view

// After a merge the COW's data chunks still hold old bytes; a new snapshot
// over the same COW reuses them. Partial writes, zero-outs (whole chunks
// zeroed on the COW, partial ones assembled), origin saves: the new view
// never shows a byte of the old snapshot. The transient store gets a COW
// full of junk to begin with.
TEST(SnapshotLeak, CowChunksReusedAfterMergeOrFromJunk) {
  for (std::string type : {"P", "N"}) {
    SCOPED_TRACE(type);
    const uint64_t kOrigin = 64 * kCB;
    MapResolver r;
    auto origin = std::make_shared<MemoryDevice>(random_bytes(kOrigin, 40));
    r.devs["origin"] = origin;
    auto cow = std::make_shared<MemoryDevice>(Bytes(128 * kCB, 0x99));
    if (type == "P") {
      // A first snapshot whose chunks all hold 0x99 ends merged.
      cow = std::make_shared<MemoryDevice>(128 * kCB);
      r.devs["cow"] = cow;
      {
        auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
        ASSERT_TRUE(s.ok());
        (*s)->resume();
        Bytes b(kOrigin, 0x99);
        ASSERT_TRUE((*s)->write(0, b).ok());
      }
      auto m = make("snapshot-merge", {"origin", "cow", "P", "8"}, kOrigin, &r);
      ASSERT_TRUE(m.ok());
      ASSERT_TRUE(static_cast<MergeTarget*>(m->get())->run_merge().ok());
    }
    r.devs["cow"] = cow;
    // The origin moves on.
    Bytes now = random_bytes(kOrigin, 41);
    ASSERT_TRUE(origin->write(0, now).ok());
    auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
    auto s = make("snapshot", {"origin", "cow", type, "8"}, kOrigin, &r);
    ASSERT_TRUE(o.ok() && s.ok()) << s.status().to_string();
    (*o)->resume();
    (*s)->resume();
    EXPECT_EQ(exceptions(*s), 0u);
    Bytes view = now;
    Bytes small(100, 0x11);
    ASSERT_TRUE((*s)->write(2 * kCB + 50, small).ok());  // partial write
    memset(view.data() + 2 * kCB + 50, 0x11, 100);
    ASSERT_TRUE((*s)->write_zeroes(4 * kCB, 2 * kCB, false, false).ok());  // whole, no unmap
    memset(view.data() + 4 * kCB, 0, 2 * kCB);
    ASSERT_TRUE((*s)->write_zeroes(7 * kCB, kCB, false, true).ok());  // whole, unmap
    memset(view.data() + 7 * kCB, 0, kCB);
    ASSERT_TRUE((*s)->write_zeroes(9 * kCB + 1000, 10, false, true).ok());  // partial
    memset(view.data() + 9 * kCB + 1000, 0, 10);
    ASSERT_TRUE((*o)->write(12 * kCB + 7, small).ok());  // origin partial write: save
    ASSERT_TRUE((*o)->write_zeroes(14 * kCB, 3 * kCB + 5, false, true).ok());  // saves
    ASSERT_TRUE((*s)->write(63 * kCB + 4000, Bytes(96, 0x12)).ok());  // last chunk
    memset(view.data() + 63 * kCB + 4000, 0x12, 96);
    Bytes got = read_all(**s);
    EXPECT_EQ(diff(got, view), -1);
    EXPECT_EQ(std::search_n(got.begin(), got.end(), 16, 0x99), got.end()) << "old bytes visible";
    if (type == "P") {
      r.devs["cowcopy"] = std::make_shared<MemoryDevice>(cow->contents());
      auto again = make("snapshot", {"origin", "cowcopy", "P", "8"}, kOrigin, &r);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(diff(read_all(**again), view), -1);
    }
  }
}

// A snapshot re-created over an old COW by zeroing its header chunk (what
// the benchmark and `dd` of the first chunk do): area 0 is zeroed before the
// new header, area 1 still holds the old records. When the new table fills
// area 0, area 1 must read empty before area 0 is written full, or a reload
// would pick up the old records (pointing at old bytes).
TEST(SnapshotLeak, RecreatedSnapshotNeverLoadsOldRecords) {
  const uint64_t kOrigin = 512 * kCB;
  const Bytes base = random_bytes(kOrigin, 42);
  MapResolver r;
  auto origin = std::make_shared<MemoryDevice>(base);
  r.devs["origin"] = origin;
  auto cow = std::make_shared<MemoryDevice>(400 * kCB);
  r.devs["cow"] = cow;
  {
    auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
    auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
    ASSERT_TRUE(o.ok() && s.ok());
    (*o)->resume();
    (*s)->resume();
    Bytes b(kCB, 0x55);
    for (uint64_t c = 0; c < 300; c++) ASSERT_TRUE((*o)->write(c * kCB, b).ok());
  }
  ASSERT_TRUE(cow->write(0, Bytes(kCB, 0)).ok());  // drop the old snapshot's header
  const Bytes now = origin->contents();
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(o.ok() && s.ok()) << s.status().to_string();
  (*o)->resume();
  (*s)->resume();
  EXPECT_EQ(exceptions(*s), 0u);
  Bytes b(kCB, 0x66);
  for (uint64_t k = 0; k < 260; k++) {
    // Alternate origin writes and snapshot zero-outs, from the top down.
    uint64_t c = 511 - k;
    if (k % 2)
      ASSERT_TRUE((*o)->write(c * kCB, b).ok());
    else
      ASSERT_TRUE((*s)->write_zeroes(c * kCB, kCB, false, true).ok());
    if (k == 254 || k == 255 || k == 256 || k == 259) {
      SCOPED_TRACE("after " + std::to_string(k + 1) + " exceptions");
      r.devs["copy"] = std::make_shared<MemoryDevice>(cow->contents());
      auto again = make("snapshot", {"origin", "copy", "P", "8"}, kOrigin, &r);
      ASSERT_TRUE(again.ok()) << again.status().to_string();
      EXPECT_EQ(exceptions(*again), k + 1);
      Bytes view = now;
      for (uint64_t j = 0; j <= k; j++)
        if (j % 2 == 0) memset(view.data() + (511 - j) * kCB, 0, kCB);
      EXPECT_EQ(diff(read_all(**again), view), -1);
      EXPECT_EQ(diff(read_all(**s), view), -1);
    }
  }
}

// Power cut after a new exception's data reached the COW but before its
// record: after the reboot the chunk reads the origin again, and the COW
// chunk (holding the lost write's bytes) is reused by the next exceptions -
// a partial snapshot write, a partial zero-out, an origin save - none of
// which may show the lost bytes.
TEST(SnapshotLeak, ChunkWrittenButNotCommittedAtCrash) {
  const uint64_t kOrigin = 32 * kCB;
  const Bytes base = random_bytes(kOrigin, 43);
  for (int variant = 0; variant < 3; variant++) {
    SCOPED_TRACE("variant " + std::to_string(variant));
    auto od = std::make_shared<FaultDevice>(base);
    auto cd = std::make_shared<FaultDevice>(64 * kCB);
    {
      MapResolver r;
      r.devs["origin"] = od;
      r.devs["cow"] = cd;
      auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
      auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
      ASSERT_TRUE(o.ok() && s.ok());
      (*o)->resume();
      (*s)->resume();
      // The data write goes through, the area write cuts the power.
      cd->cut_after_writes(1);
      Bytes lost(2 * kCB, 0x99);
      EXPECT_FALSE((*s)->write(5 * kCB, lost).ok());
    }
    MapResolver r;
    auto o2 = std::make_shared<MemoryDevice>(od->durable_image());
    auto c2 = std::make_shared<MemoryDevice>(cd->durable_image());
    r.devs["origin"] = o2;
    r.devs["cow"] = c2;
    // The data chunks did reach the COW.
    Bytes img = c2->contents();
    ASSERT_EQ(img[2 * kCB], 0x99);
    auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
    auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
    ASSERT_TRUE(o.ok() && s.ok()) << s.status().to_string();
    (*o)->resume();
    (*s)->resume();
    EXPECT_EQ(exceptions(*s), 0u);
    Bytes view = base;
    EXPECT_EQ(diff(read_all(**s), view), -1);
    Bytes small(10, 0x21);
    if (variant == 0) {
      ASSERT_TRUE((*s)->write(9 * kCB + 20, small).ok());
      memset(view.data() + 9 * kCB + 20, 0x21, 10);
      ASSERT_TRUE((*s)->write(10 * kCB + 20, small).ok());
      memset(view.data() + 10 * kCB + 20, 0x21, 10);
    } else if (variant == 1) {
      ASSERT_TRUE((*s)->write_zeroes(9 * kCB + 20, 10, false, true).ok());
      memset(view.data() + 9 * kCB + 20, 0, 10);
      ASSERT_TRUE((*s)->write_zeroes(10 * kCB + 20, 10, false, false).ok());
      memset(view.data() + 10 * kCB + 20, 0, 10);
    } else {
      ASSERT_TRUE((*o)->write(9 * kCB + 20, small).ok());
      ASSERT_TRUE((*o)->write_zeroes(10 * kCB + 20, 10, false, true).ok());
    }
    EXPECT_EQ(exceptions(*s), 2u);
    Bytes got = read_all(**s);
    EXPECT_EQ(diff(got, view), -1);
    EXPECT_EQ(std::search_n(got.begin(), got.end(), 16, 0x99), got.end()) << "lost bytes visible";
  }
}

namespace {
// An origin whose flush takes a while, so a merge stays in flight.
class SlowFlushOrigin : public MemoryDevice {
 public:
  using MemoryDevice::MemoryDevice;
  Status do_flush() override {
    std::this_thread::sleep_for(std::chrono::milliseconds(15));
    return MemoryDevice::do_flush();
  }
};
}  // namespace

// Another device with a snapshot-origin table over an origin whose snapshot
// is being merged (snapshot-merge loaded into a second device instead of the
// origin's own): it must read and write the merge's view - not the raw
// origin, which mixes merged and unmerged chunks, and where a write to an
// unmerged chunk would be overwritten by the merge.
TEST(SnapshotLeak, SecondOriginDeviceDuringMerge) {
  const uint64_t kOrigin = 512 * kCB;
  const Bytes base = random_bytes(kOrigin, 44);
  MapResolver r;
  auto origin = std::make_shared<SlowFlushOrigin>(base);
  r.devs["origin"] = origin;
  r.devs["cow"] = std::make_shared<MemoryDevice>(600 * kCB);
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  ASSERT_TRUE(o.ok());
  (*o)->resume();
  {
    auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
    ASSERT_TRUE(s.ok());
    (*s)->resume();
    // After the snapshot the origin changes everywhere.
    ASSERT_TRUE((*o)->write(0, Bytes(kOrigin, 0x5A)).ok());
  }
  Bytes view = base;
  auto m = make("snapshot-merge", {"origin", "cow", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(m.ok());
  auto* mt = static_cast<MergeTarget*>(m->get());
  ASSERT_EQ(mt->remaining(), 512u);
  (*m)->resume();  // the merge runs in the background (2 batches, slow flushes)
  EXPECT_EQ(diff(read_all(**o), view), -1) << "the other origin device reads the raw origin";
  Bytes w(3 * kCB, 0x77);
  ASSERT_TRUE((*o)->write(100 * kCB + 10, w).ok());
  memset(view.data() + 100 * kCB + 10, 0x77, w.size());
  ASSERT_TRUE((*o)->write_zeroes(400 * kCB, 5 * kCB, false, true).ok());
  memset(view.data() + 400 * kCB, 0, 5 * kCB);
  EXPECT_EQ(diff(read_all(**m), view), -1);
  EXPECT_EQ(diff(read_all(**o), view), -1);
  ASSERT_TRUE(mt->wait().ok());
  EXPECT_EQ(diff(origin->contents(), view), -1) << "a write through the other device was lost";
  EXPECT_EQ(diff(read_all(**o), view), -1);
  // Without the merge target the origin device is plain again.
  m->reset();
  ASSERT_TRUE((*o)->write(0, Bytes(kCB, 0x78)).ok());
  memset(view.data(), 0x78, kCB);
  EXPECT_EQ(diff(origin->contents(), view), -1);
}

// One batch that spans two metadata areas (300 new exceptions from a single
// snapshot write or zero-out, 4 KiB chunks: 256 records fill area 0, 44 go
// to area 1), over a COW full of junk, with the power cut after every COW
// write of it and the unflushed writes dropped or half kept. After each cut
// the COW loads and every chunk of the view is either the old chunk or the
// new bytes - never junk - and the loaded table is the old one or the new
// one: area 1 is written before the full area 0, so area 1's records are
// unreachable until area 0 is on disk.
TEST(SnapshotLeak, BatchAcrossAreasPowerCut) {
  const uint64_t kOrigin = 512 * kCB, kCowBytes = 400 * kCB;
  const Bytes base = random_bytes(kOrigin, 45);
  Bytes junk = random_bytes(kCowBytes, 46);
  memset(junk.data(), 0, kCB);  // a new store
  Bytes data(300 * kCB);
  for (uint64_t c = 0; c < 300; c++) memset(data.data() + c * kCB, int(c % 250) + 1, kCB);
  for (bool zero : {false, true}) {
    for (double survival : {0.0, 0.5}) {
      int cuts = 0;
      for (uint64_t n = 0;; n++) {
        SCOPED_TRACE(std::string(zero ? "zero-out" : "write") + ", survival " +
                     std::to_string(survival) + ", cut after " + std::to_string(n));
        auto cd = std::make_shared<FaultDevice>(junk);
        if (survival > 0) cd->set_unflushed_survival(survival, n + 7);
        bool completed;
        {
          MapResolver r;
          r.devs["origin"] = std::make_shared<MemoryDevice>(base);
          r.devs["cow"] = cd;
          auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
          ASSERT_TRUE(s.ok());
          (*s)->resume();
          cd->cut_after_writes(n);
          Status st = zero ? (*s)->write_zeroes(0, 300 * kCB, false, true) : (*s)->write(0, data);
          completed = st.ok();
        }
        MapResolver r;
        r.devs["origin"] = std::make_shared<MemoryDevice>(base);
        r.devs["cow"] = std::make_shared<MemoryDevice>(cd->durable_image());
        auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
        ASSERT_TRUE(s.ok()) << s.status().to_string();
        uint64_t e = exceptions(*s);
        EXPECT_TRUE(e == 0 || e == 300) << e << " records loaded";
        if (completed) {
          EXPECT_EQ(e, 300u);
        }
        Bytes v = read_all(**s);
        for (uint64_t c = 0; c < 512; c++) {
          const uint8_t* got = v.data() + c * kCB;
          bool old = memcmp(got, base.data() + c * kCB, kCB) == 0;
          bool now = c < 300 && (zero ? std::all_of(got, got + kCB, [](uint8_t x) { return x == 0; })
                                      : memcmp(got, data.data() + c * kCB, kCB) == 0);
          ASSERT_TRUE(old || now) << "chunk " << c << " is neither old nor new";
          if (c >= 300 || e == 0) {
            ASSERT_TRUE(old) << "chunk " << c;
          }
        }
        cuts++;
        if (completed) break;
        ASSERT_LT(n, 20u) << "the commit never completed";
      }
      EXPECT_GE(cuts, 4);  // data run(s), area 1, area 0
    }
  }
}

// Big chunks (64 KiB): a whole-chunk zero-out probes the first sector before
// reading the chunk. First sector non-zero: an exception without reading the
// rest; first sector zero but not the rest: the whole chunk is read and it
// gets an exception; all zero: none. Partial chunks as with small chunks.
TEST(SnapshotZero, BigChunksProbeFirstSector) {
  constexpr uint64_t kBig = 64 << 10, kOrigin = 16 * kBig;
  Bytes base = random_bytes(kOrigin, 47);
  memset(base.data() + 2 * kBig, 0, 512);        // chunk 2: only the first sector zero
  memset(base.data() + 3 * kBig, 0, kBig);       // chunk 3: all zero
  memset(base.data() + 4 * kBig, 0, kBig - 1);   // chunk 4: all zero but its last byte
  for (std::string type : {"P", "N"}) {
    SCOPED_TRACE(type);
    MapResolver r;
    r.devs["origin"] = std::make_shared<MemoryDevice>(base);
    auto cow = std::make_shared<MemoryDevice>(2 * kOrigin);
    r.devs["cow"] = cow;
    auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
    auto s = make("snapshot", {"origin", "cow", type, "128"}, kOrigin, &r);
    ASSERT_TRUE(o.ok() && s.ok()) << s.status().to_string();
    (*o)->resume();
    (*s)->resume();
    Bytes view = base;
    ASSERT_TRUE((*s)->write_zeroes(kBig, 4 * kBig, false, true).ok());  // chunks 1-4
    memset(view.data() + kBig, 0, 4 * kBig);
    EXPECT_EQ(exceptions(*s), 3u) << "chunks 1, 2 and 4; chunk 3 is zero already";
    EXPECT_EQ(diff(read_all(**s), view), -1);
    ASSERT_TRUE((*s)->write_zeroes(8 * kBig + 100, 1000, false, false).ok());  // partial
    memset(view.data() + 8 * kBig + 100, 0, 1000);
    EXPECT_EQ(exceptions(*s), 4u);
    // The origin moves on; the view does not.
    ASSERT_TRUE((*o)->write(0, Bytes(kOrigin, 0x3C)).ok());
    EXPECT_EQ(diff(read_all(**s), view), -1);
    if (type == "P") {
      r.devs["copy"] = std::make_shared<MemoryDevice>(cow->contents());
      auto again = make("snapshot", {"origin", "copy", "P", "128"}, kOrigin, &r);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(diff(read_all(**again), view), -1);
    }
  }
}
