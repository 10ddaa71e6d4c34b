// Power-cut sweep: create a snapshot, write the origin *and* the snapshot
// (interleaved, with flushes in between), flush, merge; cut power after every
// write-type operation N and reboot on the durable images. Two cache models:
// every unflushed write dropped, and a random subset of the unflushed writes
// surviving (FaultDevice::set_unflushed_survival, several seeds per cut).
// After every cut:
//  * before the merge started, each origin byte holds the value of one of
//    the origin writes covering it that may be there (the last one before a
//    completed origin flush, or any later started one) - "pre- or post-write
//    data of each write";
//  * the snapshot (seen through snapshot-merge on the rebooted images) reads
//    as the origin at snapshot time plus the snapshot's own writes, byte by
//    byte under the same rule; untouched bytes exactly as at snapshot time;
//  * once the merge started (all writes were flushed), the view is exact;
//  * a restarted merge finishes and leaves the origin equal to that view.
// The workload mixes writes with zero-outs (write_zeroes with and without
// may_unmap) on both devices - whole and partial chunks, a chunk with an
// exception, a range the origin holds as zeroes already - and discards: a
// zero-out is a write of zeroes; a discard may leave a byte as it was or
// zero it (FaultDevice discards to zeroes), but the snapshot's view must
// never change because of an origin discard.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "common/job_wait.h"
#include "common/sys_util.h"
#include "io/fault_device.h"
#include "io/memory_device.h"
#include "snapshot/snapshot.h"
#include "snapshot_test_util.h"

using namespace udm;
using namespace udm::snapshot;
using namespace udm::snapshot::test;

namespace {

constexpr uint64_t kCB = 4096, kOrigin = 48 * kCB, kCow = 96 * kCB;

// A COW that held other data before: junk everywhere but the header chunk
// (zero: a new store), so a record that reached the disk before its data
// chunk would point at junk.
std::vector<uint8_t> junk_cow() {
  std::vector<uint8_t> img = udm::test::random_bytes(kCow, 77);
  memset(img.data(), 0, kCB);
  return img;
}

// Both disks lose power together after `limit` write-type operations.
struct Power {
  std::atomic<uint64_t> ops{0};
  uint64_t limit = UINT64_MAX;
  std::vector<FaultDevice*> disks;
  bool tick() {
    if (++ops > limit) {
      for (auto* d : disks) d->power_cut();
      return false;
    }
    return true;
  }
};

class Counted : public BlockDevice {
 public:
  Counted(std::shared_ptr<FaultDevice> d, Power* p) : d_(std::move(d)), p_(p) {}
  uint64_t size() const override { return d_->size(); }
  DeviceCaps caps() const override { return d_->caps(); }

 protected:
  Status do_read(uint64_t o, std::span<uint8_t> b) override { return d_->read(o, b); }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override {
    if (!p_->tick()) return IoError("power cut");
    return d_->write(o, b, fua);
  }
  Status do_write_zeroes(uint64_t o, uint64_t n, bool fua, bool may_unmap) override {
    if (!p_->tick()) return IoError("power cut");
    return d_->write_zeroes(o, n, fua, may_unmap);
  }
  Status do_trim(uint64_t o, uint64_t n) override {
    if (!p_->tick()) return IoError("power cut");
    return d_->trim(o, n);
  }
  Status do_flush() override { return d_->flush(); }

 private:
  std::shared_ptr<FaultDevice> d_;
  Power* p_;
};

Result<TargetPtr> make(const std::string& type, std::vector<std::string> args, DeviceResolver* r) {
  return snapshot::test::make(type, std::move(args), kOrigin, r);
}

enum class Dev { kOrigin, kSnap };
enum class Kind { kWrite, kZero, kZeroUnmap, kTrim, kFlush };
struct Op {
  Dev dev;
  Kind kind;
  uint64_t off = 0;
  size_t len = 0;
  uint8_t seed = 0;
  bool flush() const { return kind == Kind::kFlush; }
  bool trim() const { return kind == Kind::kTrim; }
  uint8_t value() const { return kind == Kind::kWrite ? seed : 0; }
};
Op ow(uint64_t off, size_t len, uint8_t seed) { return {Dev::kOrigin, Kind::kWrite, off, len, seed}; }
Op sw(uint64_t off, size_t len, uint8_t seed) { return {Dev::kSnap, Kind::kWrite, off, len, seed}; }
Op oz(uint64_t off, size_t len, bool unmap) {
  return {Dev::kOrigin, unmap ? Kind::kZeroUnmap : Kind::kZero, off, len};
}
Op sz(uint64_t off, size_t len, bool unmap) {
  return {Dev::kSnap, unmap ? Kind::kZeroUnmap : Kind::kZero, off, len};
}
Op ot(uint64_t off, size_t len) { return {Dev::kOrigin, Kind::kTrim, off, len}; }
Op st(uint64_t off, size_t len) { return {Dev::kSnap, Kind::kTrim, off, len}; }
Op of() { return {Dev::kOrigin, Kind::kFlush}; }
Op sf() { return {Dev::kSnap, Kind::kFlush}; }

// The base image holds zeroes in chunks 30..33 (a snapshot zero-out there
// needs no exception).
constexpr uint64_t kZeroStart = 30 * kCB, kZeroLen = 4 * kCB;

// Origin writes: whole chunks, partial chunks, several chunks, the last
// (short) sector range; snapshot writes: a new partial exception, a chunk the
// origin already saved, new full chunks, a write across two saved chunks, a
// rewrite of a snapshot-owned chunk; the origin also writes a chunk the
// snapshot owns (no save). Each flush in the middle has cached writes before
// it and a write that saves a chunk (the first write-type op a cut can hit)
// right after it, so a flush that did nothing would be seen. Zero-outs: the
// origin across unsaved chunks (unmap) and whole chunks (no unmap), the
// snapshot over its own exception, whole new chunks, a partial new chunk
// and the origin's zero chunks (then overwritten on the origin: the view
// stays zero); discards on the origin (only chunks the snapshot saved may
// go) and on the snapshot (whole chunks with an exception).
const std::vector<Op> kOps = {
    ow(0, 4096, 1),          sw(4096 * 3 + 100, 700, 11), ow(5000, 100, 2),
    sw(0, 1024, 12),         sf(),                        ow(4096 * 7, 9000, 3),
    sw(4096 * 40, 8192, 13), ow(512, 512, 4),             oz(4096 * 9 + 300, 5000, true),
    sz(4096 * 40 + 10, 100, true), ow(4096 * 3, 4096, 5), sz(4096 * 44, 8192, false),
    of(),                    ow(4096 * 47 + 100, 200, 6), sw(4096 * 7 + 4000, 200, 14),
    sz(4096 * 42 + 50, 300, true), sz(kZeroStart + 5, 2 * 4096, false), ow(4096 * 7, 512, 7),
    ow(kZeroStart, 8192, 10), ow(4096 * 20, 16384, 8), oz(4096 * 24, 8192, false),
    ot(0, 4096 * 48),        sw(4096 * 41, 100, 15),      st(4096 * 40, 8192),
    sf(),                    ow(70000, 3000, 9),          of(),
    sf(),
};

struct Outcome {
  size_t started = 0;                 // ops begun (the last may have failed)
  size_t flushed[2] = {0, 0};         // ops before the last completed flush, per device
  bool merge_started = false;
};

int g_iter = 0;
void workload(Power& power, std::shared_ptr<FaultDevice> od, std::shared_ptr<FaultDevice> cd,
              Outcome* out, bool writeback) {
  MapResolver r;
  std::string on = "o" + std::to_string(g_iter), cn = "c" + std::to_string(g_iter);
  g_iter++;
  r.devs[on] = std::make_shared<Counted>(od, &power);
  r.devs[cn] = std::make_shared<Counted>(cd, &power);
  auto o = writeback ? make("snapshot-origin", {on, "1", "writeback"}, &r) : make("snapshot-origin", {on}, &r);
  auto s = make("snapshot", {on, cn, "P", "8"}, &r);
  if (!o.ok() || !s.ok()) return;
  (*o)->resume();
  (*s)->resume();
  for (size_t i = 0; i < kOps.size(); i++) {
    const Op& op = kOps[i];
    out->started = i + 1;
    BlockDevice& dev = op.dev == Dev::kOrigin ? **o : **s;
    if (op.flush()) {
      if (!dev.flush().ok()) return;
      out->flushed[int(op.dev)] = i;
      continue;
    }
    Status st;
    if (op.kind == Kind::kWrite) {
      std::vector<uint8_t> buf(op.len, op.seed);
      st = dev.write(op.off, buf);
    } else if (op.trim()) {
      st = dev.trim(op.off, op.len);
    } else {
      st = dev.write_zeroes(op.off, op.len, false, op.kind == Kind::kZeroUnmap);
    }
    if (!st.ok()) return;
  }
  s->reset();
  out->merge_started = true;
  auto m = make("snapshot-merge", {on, cn, "P", "8"}, &r);
  if (!m.ok()) return;
  (void)static_cast<MergeTarget*>(m->get())->run_merge();
}

// Checks `img` byte by byte against the ops of `dev` in kOps[0, started):
// a byte holds the value of the last write (zero-out: 0) covering it among
// the ops before the device's last completed flush (or base), or of any
// later started write covering it; a discard covering it adds 0 to what it
// may hold (before the flush: until a later write covers the byte).
// Returns the first bad offset, or -1.
int64_t check_bytes(const std::vector<uint8_t>& img, const std::vector<uint8_t>& base, Dev dev,
                    const Outcome& out) {
  for (uint64_t b = 0; b < img.size(); b++) {
    int allowed[64], n = 0;  // what the flushed ops leave, then later ones (kOps < 63)
    allowed[n++] = base[b];
    for (size_t i = 0; i < out.started; i++) {
      const Op& op = kOps[i];
      if (op.dev != dev || op.flush() || b < op.off || b >= op.off + op.len) continue;
      if (i < out.flushed[int(dev)]) {
        if (!op.trim()) n = 0;
        allowed[n++] = op.value();
      } else {
        allowed[n++] = op.value();
      }
    }
    bool ok = false;
    for (int k = 0; k < n && !ok; k++) ok = img[b] == allowed[k];
    if (!ok) return int64_t(b);
  }
  return -1;
}

// The image after every op of `dev`; a snapshot discard zeroes (it covers
// whole chunks that have an exception by then), an origin discard is left out.
std::vector<uint8_t> apply_all(std::vector<uint8_t> img, Dev dev) {
  for (auto& op : kOps)
    if (op.dev == dev && !op.flush() && !(op.trim() && dev == Dev::kOrigin))
      memset(img.data() + op.off, op.value(), op.len);
  return img;
}

struct SweepMode {
  const char* name;
  double survival;  // 0: every unflushed write dropped
  int seeds;        // runs per cut point
  bool writeback = false;  // snapshot-origin <origin> 1 writeback
};

class SnapshotSweep : public ::testing::TestWithParam<SweepMode> {};

}  // namespace

TEST_P(SnapshotSweep, PowerCutAfterEveryWrite) {
  const SweepMode mode = GetParam();
  std::vector<uint8_t> base = udm::test::random_bytes(kOrigin, 42);
  memset(base.data() + kZeroStart, 0, kZeroLen);
  const std::vector<uint8_t> snap_final = apply_all(base, Dev::kSnap);
  ASSERT_LT(kOps.size(), 63u);
  uint64_t total;
  {
    Power p;
    auto od = std::make_shared<FaultDevice>(base);
    auto cd = std::make_shared<FaultDevice>(junk_cow());
    p.disks = {od.get(), cd.get()};
    Outcome out;
    workload(p, od, cd, &out, mode.writeback);
    ASSERT_TRUE(out.merge_started);
    // Uncut: the merge rolled the origin back to the snapshot's view.
    EXPECT_TRUE(od->current_image() == snap_final);
    total = p.ops;
  }
  ASSERT_GT(total, 20u);
  uint64_t merge_cuts = 0, checked = 0, runs = 0, differing_views = 0;
  for (uint64_t n = 0; n <= total; n++) {
    for (int seed = 0; seed < mode.seeds; seed++) {
      SCOPED_TRACE("cut after write " + std::to_string(n) + ", seed " + std::to_string(seed));
      runs++;
      Power p;
      p.limit = n;
      auto od = std::make_shared<FaultDevice>(base);
      auto cd = std::make_shared<FaultDevice>(junk_cow());
      if (mode.survival > 0) {
        od->set_unflushed_survival(mode.survival, n * 1000 + seed * 2);
        cd->set_unflushed_survival(mode.survival, n * 1000 + seed * 2 + 1);
      }
      p.disks = {od.get(), cd.get()};
      Outcome out;
      workload(p, od, cd, &out, mode.writeback);
      auto oimg = od->durable_image();
      auto cimg = cd->durable_image();
      if (out.merge_started) {
        merge_cuts++;
      } else {
        int64_t bad = check_bytes(oimg, base, Dev::kOrigin, out);
        EXPECT_EQ(bad, -1) << "origin byte " << bad << " holds no value its writes allow";
      }
      // Reboot: load the durable images and merge.
      MapResolver r;
      std::string on = "ro" + std::to_string(runs), cn = "rc" + std::to_string(runs);
      auto o2 = std::make_shared<MemoryDevice>(oimg);
      r.devs[on] = o2;
      r.devs[cn] = std::make_shared<MemoryDevice>(cimg);
      if (cimg[0] == 0 && cimg[1] == 0 && cimg[2] == 0 && cimg[3] == 0) {
        // The COW was never formatted: nothing may have been written.
        EXPECT_TRUE(oimg == base);
        EXPECT_EQ(out.started, 0u);
        continue;
      }
      auto m = make("snapshot-merge", {on, cn, "P", "8"}, &r);
      ASSERT_TRUE(m.ok()) << m.status().to_string();
      std::vector<uint8_t> view(kOrigin);
      ASSERT_TRUE((*m)->read(0, view).ok());
      if (out.merge_started) {
        EXPECT_TRUE(view == snap_final) << "snapshot view differs after a cut during the merge";
      } else {
        int64_t bad = check_bytes(view, base, Dev::kSnap, out);
        EXPECT_EQ(bad, -1) << "snapshot byte " << bad << " holds no value its writes allow";
        if (view != base && view != snap_final) differing_views++;
      }
      ASSERT_TRUE(static_cast<MergeTarget*>(m->get())->run_merge().ok());
      EXPECT_TRUE(o2->contents() == view) << "merge did not restore the origin to the view";
      EXPECT_EQ((*m)->status(), "16/" + std::to_string(kCow / 512) + " 16");
      checked++;
    }
  }
  printf("sweep %s: %llu cut points x %d, %llu runs cut during merge, %llu rebooted and merged, "
         "%llu snapshot views in between\n",
         mode.name, (unsigned long long)total + 1, mode.seeds, (unsigned long long)merge_cuts,
         (unsigned long long)checked, (unsigned long long)differing_views);
  EXPECT_GT(merge_cuts, 3u);
  EXPECT_GT(differing_views, 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, SnapshotSweep,
                         ::testing::Values(SweepMode{"DropAll", 0.0, 1},
                                           SweepMode{"RandomSurvival", 0.5, 4},
                                           SweepMode{"WritebackDropAll", 0.0, 1, true},
                                           SweepMode{"WritebackRandomSurvival", 0.5, 4, true}),
                         [](const auto& info) { return std::string(info.param.name); });

// The merge's batches span metadata areas (512-byte chunks: 32 records per
// area; 100 exceptions in four areas; batches of 40 records rewrite up to
// three areas with one flush). A cut after every write of the merge, every
// unflushed write dropped or surviving at random: on reboot the store loads,
// the view is the origin as it was at snapshot time, and a restarted merge
// leaves the origin equal to it with no record left.
namespace {

// The merge sweeps' starting point: an origin of random bytes with one
// persistent snapshot of 512-byte chunks (32 records per metadata area)
// holding 100 exceptions scattered over four areas, everything flushed.
constexpr uint64_t kMC = 512, kMChunks = 160, kMLen = kMChunks * kMC;
struct MergeStart {
  std::vector<uint8_t> base;  // the origin at snapshot time (the merge's goal)
  std::vector<uint8_t> origin, cow;  // the durable images before the merge
};
void make_merge_start(uint64_t seed, MergeStart* out) {
  out->base = udm::test::random_bytes(kMLen, seed);
  auto od = std::make_shared<FaultDevice>(out->base);
  auto cd = std::make_shared<FaultDevice>(std::vector<uint8_t>(256 * kMC, 0));
  MapResolver r;
  r.devs["o"] = od;
  r.devs["c"] = cd;
  auto o = snapshot::test::make("snapshot-origin", {"o"}, kMLen, &r);
  auto s = snapshot::test::make("snapshot", {"o", "c", "P", "1"}, kMLen, &r);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  for (uint64_t i = 0; i < 100; i++) {  // 100 distinct chunks, scattered
    const uint64_t c = (i * 37) % kMChunks;
    ASSERT_TRUE((*o)->write(c * kMC, std::vector<uint8_t>(kMC, static_cast<uint8_t>(i + 1))).ok());
  }
  ASSERT_TRUE((*o)->flush().ok());
  ASSERT_TRUE((*s)->flush().ok());
  EXPECT_EQ((*s)->status().substr(0, 4), "105/");  // the header, 4 areas, 100 data chunks
  s->reset();
  o->reset();
  out->origin = od->durable_image();
  out->cow = cd->durable_image();
  ASSERT_NE(out->origin, out->base);
}

// A reboot on durable images after a cut during the merge: the store loads,
// the view is the origin at snapshot time, and a restarted merge leaves the
// origin equal to it with no record left.
void reboot_and_merge(const MergeStart& st, const std::vector<uint8_t>& oimg, const std::vector<uint8_t>& cimg) {
  MapResolver r;
  auto o2 = std::make_shared<MemoryDevice>(oimg);
  r.devs["o"] = o2;
  r.devs["c"] = std::make_shared<MemoryDevice>(cimg);
  auto m = snapshot::test::make("snapshot-merge", {"o", "c", "P", "1"}, kMLen, &r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  std::vector<uint8_t> view(kMLen);
  ASSERT_TRUE((*m)->read(0, view).ok());
  ASSERT_TRUE(view == st.base) << "the view after the cut is not the origin at snapshot time";
  auto* mt = static_cast<MergeTarget*>(m->get());
  ASSERT_TRUE(mt->run_merge().ok());
  ASSERT_TRUE(o2->contents() == st.base) << "the restarted merge did not restore the origin";
  EXPECT_EQ(mt->remaining(), 0u);
}

}  // namespace

TEST(SnapshotMergeSweep, BatchesAcrossAreasPowerCutAfterEveryWrite) {
  constexpr uint64_t kC = kMC, kLen = kMLen;
  MergeStart st;
  ASSERT_NO_FATAL_FAILURE(make_merge_start(5, &st));
  const std::vector<uint8_t>&base = st.base, &oimg0 = st.origin, &cimg0 = st.cow;
  auto run = [&](uint64_t limit, double survival, uint64_t seed, std::vector<uint8_t>* oimg,
                 std::vector<uint8_t>* cimg) {
    Power p;
    p.limit = limit;
    auto od = std::make_shared<FaultDevice>(oimg0);
    auto cd = std::make_shared<FaultDevice>(cimg0);
    if (survival > 0) {
      od->set_unflushed_survival(survival, seed * 2);
      cd->set_unflushed_survival(survival, seed * 2 + 1);
    }
    p.disks = {od.get(), cd.get()};
    MapResolver r;
    r.devs["o"] = std::make_shared<Counted>(od, &p);
    r.devs["c"] = std::make_shared<Counted>(cd, &p);
    auto m = snapshot::test::make("snapshot-merge", {"o", "c", "P", "1"}, kLen, &r);
    EXPECT_TRUE(m.ok()) << m.status().to_string();
    if (!m.ok()) return uint64_t{0};
    auto* mt = static_cast<MergeTarget*>(m->get());
    mt->set_max_batch_bytes(40 * kC);
    EXPECT_EQ(mt->remaining(), 100u);
    (void)mt->run_merge();
    *oimg = od->durable_image();
    *cimg = cd->durable_image();
    return static_cast<uint64_t>(p.ops);
  };
  std::vector<uint8_t> oimg, cimg;
  const uint64_t total = run(UINT64_MAX, 0, 0, &oimg, &cimg);
  ASSERT_EQ(oimg, base) << "the uncut merge did not restore the origin";
  ASSERT_GT(total, 20u);
  uint64_t partial = 0, runs = 0;
  for (uint64_t n = 0; n <= total; n++) {
    for (int k = 0; k < 3; k++) {
      SCOPED_TRACE("cut after write " + std::to_string(n) + ", run " + std::to_string(k));
      run(n, k == 0 ? 0.0 : 0.5, n * 10 + k, &oimg, &cimg);
      runs++;
      if (oimg != oimg0 && oimg != base) partial++;
      ASSERT_NO_FATAL_FAILURE(reboot_and_merge(st, oimg, cimg));
    }
  }
  printf("merge across areas: %llu writes, %llu runs, %llu with the origin partly merged\n",
         (unsigned long long)total, (unsigned long long)runs, (unsigned long long)partial);
  EXPECT_GT(partial, total / 2);
}

// The merge as the daemon runs it: the background thread, `throttle=auto`
// from the table, foreground reads while it runs, a pause half-way (nothing
// merged while paused, the view unchanged) and a resume; a cut after every
// write, unflushed writes dropped or surviving at random. After each cut the
// store loads, the view is the snapshot-time origin, and a restarted merge
// restores the origin.
TEST(SnapshotMergeSweep, ThrottledAndPausedMidwayEveryCut) {
  constexpr uint64_t kC = kMC, kLen = kMLen;
  MergeStart st;
  ASSERT_NO_FATAL_FAILURE(make_merge_start(6, &st));
  const std::vector<uint8_t>&base = st.base, &oimg0 = st.origin, &cimg0 = st.cow;
  uint64_t pauses = 0, reads = 0, cuts = 0;
  auto run = [&](std::optional<uint64_t> cut, bool survive, std::vector<uint8_t>& o_out, std::vector<uint8_t>& c_out) {
    auto disk = std::make_shared<FaultDisk>();
    auto od = std::make_shared<FaultDevice>(disk, oimg0);
    auto cd = std::make_shared<FaultDevice>(disk, cimg0);
    if (survive) disk->set_unflushed_survival(0.5, cut.value_or(0) + 1);
    MapResolver r;
    r.devs["o"] = od;
    r.devs["c"] = cd;
    auto m = snapshot::test::make("snapshot-merge", {"o", "c", "P", "1", "1", "throttle=auto"}, kLen, &r);
    EXPECT_TRUE(m.ok()) << m.status().to_string();
    if (!m.ok()) return uint64_t{0};
    auto* mt = static_cast<MergeTarget*>(m->get());
    mt->set_max_batch_bytes(10 * kC);  // ten batches
    const uint64_t total = mt->jobs().at(0).total;
    EXPECT_EQ(total, 100u);
    if (cut) disk->cut_after_writes(*cut);
    mt->resume();
    bool paused_once = false;
    std::vector<uint8_t> view(kLen);
    auto job = [&] { return mt->jobs().at(0); };
    for (int i = 0; i < 200000; i++) {
      JobInfo j = job();
      if (j.state == "done" || j.state == "failed") break;
      if (!paused_once && j.done >= total / 2) {
        paused_once = true;
        EXPECT_TRUE(mt->message({"pause"}).ok());
        // A batch under way may land; then the worker parks (or fails at
        // the cut, or ends) and nothing moves.
        const auto stopped = wait_job_stopped(job);
        EXPECT_TRUE(stopped) << "the merge did not stop within 10 s of the pause";
        const bool parked = stopped && stopped->parked;
        const uint64_t at = job().done;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        EXPECT_EQ(job().done, at) << "merged while paused";
        if (!disk->dead()) {
          EXPECT_TRUE(mt->read(0, view).ok());
          EXPECT_TRUE(view == base) << "the view while paused is not the snapshot";
        }
        EXPECT_TRUE(mt->message({"resume"}).ok());
        if (parked) pauses++;  // held by the pause (not stopped by the cut, not at its end)
      } else if (!disk->dead() && j.done < total / 2) {
        if (mt->read(0, view).ok()) {  // foreground reads: throttle=auto trickles
          EXPECT_TRUE(view == base) << "the view during the merge is not the snapshot";
          reads++;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
    mt->presuspend();
    if (cut && disk->dead()) cuts++;
    o_out = od->durable_image();
    c_out = cd->durable_image();
    return disk->write_ops();
  };
  std::vector<uint8_t> oimg, cimg;
  const uint64_t writes = run(std::nullopt, false, oimg, cimg);
  ASSERT_EQ(oimg, base) << "the uncut merge did not restore the origin";
  ASSERT_GT(writes, 20u);
  for (uint64_t n = 0; n < writes; n++) {
    for (bool survive : {false, true}) {
      SCOPED_TRACE("cut after write " + std::to_string(n) + (survive ? ", unflushed writes may survive" : ""));
      run(n, survive, oimg, cimg);
      ASSERT_NO_FATAL_FAILURE(reboot_and_merge(st, oimg, cimg));
    }
  }
  printf("throttled merge sweep: %llu writes, %llu cuts hit, %llu pauses, %llu foreground reads\n",
         (unsigned long long)writes, (unsigned long long)cuts, (unsigned long long)pauses, (unsigned long long)reads);
  EXPECT_EQ(cuts, 2 * writes);
  EXPECT_GT(pauses, writes / 2);  // runs cut before half-way never pause
  EXPECT_GT(reads, 0u);
}
