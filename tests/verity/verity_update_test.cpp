// An OTA image that carries its tree (veritysetup's same-device layout:
// data | superblock + tree at --hash-offset, stable salt and UUID) for the old
// and the new version of ../shared/data/ota-small (the rebuilt pair: most
// changed blocks are moves whose source the same update overwrites), diffed by
// `udm update-diff`; `verity` stacked over the `update` device (data and hash
// device = that device, opened by name) must verify the new image from its
// first read: every block read through verity while the copy-back is held at
// its first write, again while it is held half way, and after it finished;
// then the system file must be the new image, byte for byte.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "common/sys_util.h"
#include "device/mapped_device.h"
#include "device/table.h"
#include "io/resolver.h"

using namespace udm;
using namespace udm::test;

namespace {

const std::string kSalt = "5a1e5a1e00112233445566778899aabbccddeeff00112233445566778899aabb";
const std::string kUuid = "0b5f1e2a-0000-4000-8000-0000000000aa";

// Passes everything to a file device; flushes wait while the gate is closed
// (`allow(n)`: n more flushes pass before it closes again). The update
// target's copy-back flushes the system device before each checkpoint, with
// no lock held (its writes hold the lock readers take, so writes are not
// where to hold it): a closed gate parks the copy-back between two blocks
// while reads go on.
class GatedDevice : public BlockDevice {
 public:
  explicit GatedDevice(DevicePtr d) : d_(std::move(d)) {}
  uint64_t size() const override { return d_->size(); }
  DeviceCaps caps() const override { return d_->caps(); }
  void allow(uint64_t n) {
    std::lock_guard l(mu_);
    allowed_ = n;
    cv_.notify_all();
  }
  // Waits until `passed` flushes in all went through and another one is parked at the closed gate.
  bool wait_parked(uint64_t passed) {
    std::unique_lock l(mu_);
    return cv_.wait_for(l, std::chrono::seconds(120), [&] { return passed_ >= passed && parked_ > 0 && allowed_ == 0; });
  }

 protected:
  Status do_read(uint64_t o, std::span<uint8_t> b) override { return d_->read(o, b); }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override { return d_->write(o, b, fua); }
  Status do_flush() override {
    {
      std::unique_lock l(mu_);
      parked_++;
      cv_.notify_all();
      cv_.wait(l, [&] { return allowed_ > 0; });
      parked_--;
      if (allowed_ != UINT64_MAX) allowed_--;
      passed_++;
    }
    return d_->flush();
  }

 private:
  DevicePtr d_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t allowed_ = 0, parked_ = 0, passed_ = 0;
};

std::pair<uint64_t, uint64_t> update_progress(MappedDevice& d) {
  std::istringstream s(d.active_table()->segments()[0].target->status());
  uint64_t a = 0, b = 0;
  s >> a >> b;
  return {a, b};
}

// Reads every 4 KiB block through `v` (in a shuffled order, one block per
// request) and compares it with `want`; returns the number of wrong/failed blocks.
uint64_t read_every_block(MappedDevice& v, const std::vector<uint8_t>& want, uint64_t seed) {
  std::vector<uint64_t> order(v.size() / 4096);
  for (uint64_t i = 0; i < order.size(); i++) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  std::vector<uint8_t> b(4096);
  uint64_t bad = 0;
  for (uint64_t i : order) {
    Status st = v.read(i * 4096, b);
    if (!st.ok() || !std::equal(b.begin(), b.end(), want.begin() + i * 4096)) {
      if (bad++ < 5) ADD_FAILURE() << "block " << i << ": " << (st.ok() ? "wrong data" : st.message());
    }
  }
  return bad;
}


// regenerate = false: both images formatted with a stable salt and UUID, the
// tree carried by the diff as data. regenerate = true: veritysetup's random
// salt and UUID per image, `update-diff --verity-regenerate OFFSET
// --verity-root ROOT`: the diff leaves the tree out and the update device
// regenerates it (flag VERITY_TREE, docs/update-format.md).
void stacked_over_update(bool regenerate) {
  if (!run({"sh", "-c", "command -v veritysetup"}).ok()) GTEST_SKIP() << "veritysetup not installed";
  const std::string ota = shared_dir() + "/data/ota-small";
  if (access((ota + "/old.img.zst").c_str(), R_OK) != 0) GTEST_SKIP() << "no " << ota;
  TempDir t;
  const uint64_t img = 64u << 20, blocks = img / 4096;
  std::map<std::string, std::string> roots, salts;
  for (const char* v : {"old", "new"}) {
    std::string f = t.file(std::string(v) + ".img");
    std::string src = ota + (std::string(v) == "old" ? "/old.img.zst" : "/new-rebuilt.img.zst");
    ASSERT_TRUE(run({"zstd", "-qdf", src, "-o", f}).ok());
    std::vector<std::string> cmd = {"veritysetup", "format", "--data-blocks", std::to_string(blocks), "--hash-offset",
                                    std::to_string(img), f, f};
    if (!regenerate) cmd.insert(cmd.end() - 2, {"--salt", kSalt, "--uuid", kUuid});
    auto r = run(cmd);
    ASSERT_TRUE(r.ok()) << r.describe();
    roots[v] = r.field("Root hash:");
    salts[v] = r.field("Salt:");
    ASSERT_EQ(roots[v].size(), 64u) << r.out;
    ASSERT_EQ(salts[v].size(), 64u) << r.out;
  }
  ASSERT_NE(roots["old"], roots["new"]);
  if (regenerate) {
    ASSERT_NE(salts["old"], salts["new"]) << "veritysetup's salt is random per format";
  }
  std::vector<std::string> diff_cmd = {udm_bin(), "update-diff", t.file("old.img"), t.file("new.img"), "-o", t.file("diff")};
  if (regenerate)
    diff_cmd.insert(diff_cmd.end(), {"--verity-regenerate", std::to_string(img), "--verity-root", roots["new"]});
  auto r = run(diff_cmd);
  ASSERT_TRUE(r.ok()) << r.describe();
  if (regenerate) {
    EXPECT_NE(r.out.find("verity area of"), std::string::npos) << r.out;
    auto info = run({udm_bin(), "update-info", t.file("diff")});
    EXPECT_NE(info.out.find("regenerated on the device"), std::string::npos) << info.describe();
    EXPECT_NE(info.out.find("root " + roots["new"]), std::string::npos) << info.out;
  }
  const std::vector<uint8_t> want = read_file(t.file("new.img"));
  ASSERT_GT(want.size(), img);
  ASSERT_TRUE(run({"cp", t.file("old.img"), t.file("sys.img")}).ok());

  // Names resolve to the devices of this test: "sys" (gated writes), "system" (the update device).
  std::shared_ptr<GatedDevice> sys;
  std::shared_ptr<MappedDevice> upd;
  Resolver files;
  Resolver res([&](const std::string& name, bool) -> Result<DevicePtr> {
    if (name == "sys" && sys) return DevicePtr(sys);
    if (name == "system" && upd) return DevicePtr(upd);
    return Status::Error(ENXIO, "no device " + name);
  });
  auto sf = files.open(t.file("sys.img"), true);
  ASSERT_TRUE(sf.ok()) << sf.status().message();
  sys = std::make_shared<GatedDevice>(*sf);
  struct Release {  // the copy thread must never stay parked at the gate
    std::shared_ptr<GatedDevice>& g;
    ~Release() {
      if (g) g->allow(UINT64_MAX);
    }
  } release{sys};

  const uint64_t sectors = want.size() / 512;
  auto spec = parse_table(fmt::format("0 {} update sys {} 0", sectors, t.file("diff")));
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  auto ut = Table::build(*spec, res, TargetRegistry::builtin(), "system");
  ASSERT_TRUE(ut.ok()) << ut.status().message();
  upd = std::make_shared<MappedDevice>("system", *ut);
  // Building the device resumed its target: the copy-back thread has started (and stops at the gate).

  // The table veritysetup's layout implies: the superblock at the hash offset, the tree after it.
  auto vspec = parse_table(fmt::format("0 {} verity 1 system system 4096 4096 {} {} sha256 {} {}", img / 512, blocks,
                                       blocks + 1, roots["new"], salts["new"]));
  ASSERT_TRUE(vspec.ok()) << vspec.status().message();
  auto vt = Table::build(*vspec, res, TargetRegistry::builtin(), "vsys");
  ASSERT_TRUE(vt.ok()) << vt.status().message();
  auto ver = std::make_shared<MappedDevice>("vsys", *vt);
  auto vstatus = [&] { return ver->active_table()->segments()[0].target->status(); };

  // 1. Copy-back started and parked at its first checkpoint: the system file is (mostly) the old image.
  ASSERT_TRUE(sys->wait_parked(0));
  auto [c0, total] = update_progress(*upd);
  ASSERT_LT(c0, total) << "copy-back must be under way";
  EXPECT_EQ(read_every_block(*ver, want, 1), 0u);
  EXPECT_EQ(update_progress(*upd).first, c0) << "still parked";
  EXPECT_EQ(vstatus().substr(0, 4), "V - ") << vstatus();

  // 2. Further on: let three checkpoints through, park again, drop the verified tree and read everything again.
  sys->allow(3);
  ASSERT_TRUE(sys->wait_parked(3));
  auto [c1, total1] = update_progress(*upd);
  EXPECT_GT(c1, c0) << "each checkpoint is followed by a write";
  EXPECT_LT(c1, total1) << "still copying";
  ASSERT_TRUE(ver->active_table()->segments()[0].target->message({"drop-cache"}).ok());
  EXPECT_EQ(read_every_block(*ver, want, 2), 0u);

  // 3. Let it finish (bounded wait, not a timing assertion), then read everything once more.
  sys->allow(UINT64_MAX);
  for (int i = 0; i < 1200 && update_progress(*upd).first < total; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(update_progress(*upd).first, total) << "copy-back did not finish";
  ASSERT_TRUE(ver->active_table()->segments()[0].target->message({"drop-cache"}).ok());
  EXPECT_EQ(read_every_block(*ver, want, 3), 0u);
  EXPECT_EQ(vstatus().substr(0, 4), "V - ") << vstatus();
  EXPECT_NE(vstatus().find(fmt::format("verified={} corrupt=0", 3 * blocks)), std::string::npos) << vstatus();

  ver.reset();
  ASSERT_TRUE(upd->shutdown().ok());
  upd.reset();
  ASSERT_TRUE(sys->flush().ok());
  sys.reset();
  // The system file now is the new image, tree included: veritysetup verifies it in place with the
  // new root and refuses the old one.
  EXPECT_EQ(sha256_file(t.file("sys.img")).substr(0, 64), sha256_file(t.file("new.img")).substr(0, 64));
  r = run({"veritysetup", "verify", "--data-blocks", std::to_string(blocks), "--hash-offset", std::to_string(img),
           t.file("sys.img"), t.file("sys.img"), roots["new"]});
  EXPECT_TRUE(r.ok()) << r.describe();
  r = run({"veritysetup", "verify", "--data-blocks", std::to_string(blocks), "--hash-offset", std::to_string(img),
           t.file("sys.img"), t.file("sys.img"), roots["old"]});
  EXPECT_FALSE(r.ok()) << "the old root must not verify the new image";
}

}  // namespace

TEST(VerityUpdate, StackedOverUpdateVerifiesTheNewImageDuringAndAfterCopyBack) { stacked_over_update(false); }

// The same with the tree regenerated on the device from a diff that does not
// carry it (the images' random salts would otherwise put the whole tree in it).
TEST(VerityUpdate, TreeRegeneratedOnTheDeviceVerifiesFromTheFirstRead) { stacked_over_update(true); }
