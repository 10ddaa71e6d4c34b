// Power-cut sweep: create a snapshot, write the origin, merge; cut power
// after every write-type operation N (unflushed writes dropped), reboot on the
// durable images and check: the origin's chunks each hold one state of their
// write history, the snapshot (seen through snapshot-merge) reads exactly as
// the origin did at snapshot time, and a restarted merge ends with the origin
// equal to it.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>

#include "common/sys_util.h"
#include "io/fault_device.h"
#include "io/memory_device.h"
#include "snapshot/snapshot.h"

using namespace udm;
using namespace udm::snapshot;

namespace {

constexpr uint64_t kCB = 4096, kOrigin = 48 * kCB, kCow = 96 * kCB;

class MapResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool) override {
    auto it = devs.find(spec);
    if (it == devs.end()) return Invalid("no device " + spec);
    return it->second;
  }
};

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
  Status do_flush() override { return d_->flush(); }

 private:
  std::shared_ptr<FaultDevice> d_;
  Power* p_;
};

Result<TargetPtr> make(const std::string& type, std::vector<std::string> args, DeviceResolver* r) {
  TargetParams p;
  p.type = type;
  p.args = std::move(args);
  p.length = kOrigin;
  p.resolver = r;
  if (type == "snapshot") return make_snapshot_target(p);
  if (type == "snapshot-origin") return make_origin_target(p);
  return make_merge_target(p);
}

struct Write {
  uint64_t off;
  size_t len;
  uint8_t seed;
};
const std::vector<Write> kWrites = {{0, 4096, 1},     {5000, 100, 2},  {4096 * 7, 9000, 3},
                                    {512, 512, 4},    {4096 * 30, 4096, 5}, {4096 * 47 + 100, 200, 6},
                                    {4096 * 7, 512, 7}, {4096 * 20, 16384, 8}, {70000, 3000, 9}};

struct Outcome {
  bool merge_started = false;
};

// Runs the workload; returns false if it was cut short.
int g_iter = 0;
void workload(Power& power, std::shared_ptr<FaultDevice> od, std::shared_ptr<FaultDevice> cd,
              Outcome* out) {
  MapResolver r;
  std::string on = "o" + std::to_string(g_iter), cn = "c" + std::to_string(g_iter);
  g_iter++;
  r.devs[on] = std::make_shared<Counted>(od, &power);
  r.devs[cn] = std::make_shared<Counted>(cd, &power);
  auto o = make("snapshot-origin", {on}, &r);
  auto s = make("snapshot", {on, cn, "P", "8"}, &r);
  if (!o.ok() || !s.ok()) return;
  (*o)->resume();
  (*s)->resume();
  for (auto& w : kWrites) {
    std::vector<uint8_t> buf(w.len, w.seed);
    if (!(*o)->write(w.off, buf).ok()) return;
  }
  if (!(*o)->flush().ok()) return;
  s->reset();
  out->merge_started = true;
  auto m = make("snapshot-merge", {on, cn, "P", "8"}, &r);
  if (!m.ok()) return;
  auto* mt = static_cast<MergeTarget*>(m->get());
  (void)mt->run_merge();
}

}  // namespace

TEST(SnapshotSweep, PowerCutAfterEveryWrite) {
  std::vector<uint8_t> base = test::random_bytes(kOrigin, 42);
  // History of each origin chunk: every state the workload may leave.
  std::vector<std::vector<std::vector<uint8_t>>> hist(kOrigin / kCB);
  std::vector<uint8_t> img = base;
  for (uint64_t c = 0; c < kOrigin / kCB; c++)
    hist[c].push_back(std::vector<uint8_t>(img.begin() + c * kCB, img.begin() + (c + 1) * kCB));
  for (auto& w : kWrites) {
    memset(img.data() + w.off, w.seed, w.len);
    for (uint64_t c = w.off / kCB; c * kCB < w.off + w.len; c++)
      hist[c].push_back(std::vector<uint8_t>(img.begin() + c * kCB, img.begin() + (c + 1) * kCB));
  }
  uint64_t total;
  {
    Power p;
    auto od = std::make_shared<FaultDevice>(base);
    auto cd = std::make_shared<FaultDevice>(kCow);
    p.disks = {od.get(), cd.get()};
    Outcome out;
    workload(p, od, cd, &out);
    ASSERT_TRUE(out.merge_started);
    EXPECT_TRUE(od->current_image() == base);
    total = p.ops;
  }
  ASSERT_GT(total, 10u);
  uint64_t merge_cuts = 0, checked = 0;
  for (uint64_t n = 0; n <= total; n++) {
    SCOPED_TRACE("cut after write " + std::to_string(n));
    Power p;
    p.limit = n;
    auto od = std::make_shared<FaultDevice>(base);
    auto cd = std::make_shared<FaultDevice>(kCow);
    p.disks = {od.get(), cd.get()};
    Outcome out;
    workload(p, od, cd, &out);
    auto oimg = od->durable_image();
    auto cimg = cd->durable_image();
    if (out.merge_started) merge_cuts++;
    if (!out.merge_started) {
      for (uint64_t c = 0; c < kOrigin / kCB; c++) {
        std::vector<uint8_t> got(oimg.begin() + c * kCB, oimg.begin() + (c + 1) * kCB);
        bool any = false;
        for (auto& h : hist[c]) any = any || h == got;
        EXPECT_TRUE(any) << "origin chunk " << c << " holds no state of its history";
      }
    }
    // Reboot: merge from the durable images.
    MapResolver r;
    std::string on = "ro" + std::to_string(n), cn = "rc" + std::to_string(n);
    auto o2 = std::make_shared<MemoryDevice>(oimg);
    r.devs[on] = o2;
    r.devs[cn] = std::make_shared<MemoryDevice>(cimg);
    if (cimg[0] == 0 && cimg[1] == 0 && cimg[2] == 0 && cimg[3] == 0) {
      // The COW was never formatted: the origin must not have been written.
      EXPECT_TRUE(oimg == base);
      continue;
    }
    auto m = make("snapshot-merge", {on, cn, "P", "8"}, &r);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    std::vector<uint8_t> view(kOrigin);
    ASSERT_TRUE((*m)->read(0, view).ok());
    EXPECT_TRUE(view == base) << "snapshot view differs from the origin at snapshot time";
    ASSERT_TRUE(static_cast<MergeTarget*>(m->get())->run_merge().ok());
    EXPECT_TRUE(o2->contents() == base) << "merge did not restore the origin";
    checked++;
  }
  printf("sweep: %llu cut points, %llu cuts during merge, %llu rebooted and merged\n",
         (unsigned long long)total + 1, (unsigned long long)merge_cuts, (unsigned long long)checked);
  EXPECT_GT(merge_cuts, 3u);
}
