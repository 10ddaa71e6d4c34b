// SIGKILL of the daemon while the update copy-back runs (format v1, with and
// without a regenerated verity area): the daemon is killed at random points
// of a throttled copy-back, started again, the device created again from the
// same table; each time the device (read through the FUSE export) must be
// the new image, the copy-back must go on from its record, and at the end
// the system file must be the new image byte for byte. The power-cut sweeps
// (update_sweep_test) cut the disk; this kills the process.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include "common/sys_util.h"
#include "update/format_v1.h"
#include "update_util.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;

namespace {

// Kills the daemon without letting it clean up; its FUSE mount is left
// stale and detached here.
void kill9(TestDaemon& d) {
  ASSERT_GT(d.pid, 0);
  kill(d.pid, SIGKILL);
  int st = 0;
  waitpid(d.pid, &st, 0);
  d.pid = -1;
  if (!d.fuse_dir.empty()) run({"umount", "-l", d.fuse_dir});
}

// "<done> <total>" of the device's status line.
std::pair<uint64_t, uint64_t> progress(TestDaemon& d) {
  auto r = d.udm({"status", "upd"});
  std::istringstream s(r.out);
  std::string start, len, type;
  uint64_t a = 0, b = 0;
  s >> start >> len >> type >> a >> b;
  return {a, b};
}

void kill_during_copy_back(bool verity_area) {
  TempDir t;
  auto churn = make_churn_pair(2048, 2048, 4096, 4);  // 8 MiB, 90-100 % of the blocks change
  std::vector<uint8_t> old_img = std::move(churn.old_img), new_img = std::move(churn.new_img);
  uint64_t area = UINT64_MAX;
  if (verity_area) {
    auto vo = with_verity(old_img, random_bytes(32, 1));
    auto vn = with_verity(new_img, random_bytes(32, 2));
    old_img = std::move(vo.img);
    new_img = std::move(vn.img);
    area = vn.hash_offset;
  }
  write_file(t.file("sys"), old_img);
  DiffV1Options opt;
  opt.progress = false;
  opt.level = 3;
  opt.verity_hash_offset = area;
  auto st = make_v1_diff(t, old_img, new_img, opt);
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  const std::string table = "0 " + std::to_string(new_img.size() / 512) + " update " + t.file("sys") + " " +
                            t.file("diff") + " 2 paused throttle=2";
  std::mt19937_64 rng(7);  // extra time before each kill
  uint64_t prev_start = 0, kills = 0, advanced = 0;
  for (int round = 0; round < 4; round++) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto d = TestDaemon::start(true, false);
    auto r = d->udm({"create", "upd", "--table", table});
    ASSERT_TRUE(r.ok()) << r.describe();
    auto [done, total] = progress(*d);
    // Created paused: the status is the record. It only moves forward (it may
    // trail what the killed daemon had applied by up to a second's work).
    EXPECT_GE(done, prev_start) << "the copy-back went back behind an earlier record";
    if (done > prev_start) advanced++;
    prev_start = done;
    ASSERT_EQ(total, st->ops + st->verity_blocks);
    std::cerr << "round " << round << ": the record says " << done << " of " << total << "\n";
    // The device is the new image, whatever the copy-back had done.
    EXPECT_TRUE(read_file(d->fuse_path("upd")) == new_img) << "device != new image after restart";
    ASSERT_TRUE(d->udm({"message", "upd", "0", "resume"}).ok());
    if (round > 0 && round < 3) {
      EXPECT_LT(done, total) << "finished early: the kills test nothing";
    }
    if (round == 3) {
      ASSERT_TRUE(d->udm({"message", "upd", "0", "throttle", "off"}).ok());
      r = d->udm({"wait", "upd", "--timeout", "120"});
      ASSERT_TRUE(r.ok()) << r.describe();
      EXPECT_EQ(progress(*d).first, total);
      ASSERT_TRUE(d->udm({"remove", "upd"}).ok());
      EXPECT_EQ(d->stop(), 0);
      break;
    }
    // Let it run (2 MiB/s: the copy-back takes about four seconds) until the
    // record in the diff has moved past where this round began (it is written
    // at least once a second while the copy moves), a little more, then kill.
    bool moved = false;
    for (int i = 0; i < 6000 && !moved; i++) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      auto rec = load_v1_bytes(read_file(t.file("diff")));
      moved = rec.ok() && rec->recorded_done() > done;
    }
    ASSERT_TRUE(moved) << "the running copy-back never recorded its progress";
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 300));
    kill9(*d);
    kills++;
  }
  EXPECT_EQ(kills, 3u);
  EXPECT_GE(advanced, 2u) << "restarts did not find progress recorded by the killed daemons";
  EXPECT_TRUE(read_file(t.file("sys")) == new_img) << "the system file is not the new image";
}

}  // namespace

TEST(UpdateKill, SigkillDuringCopyBack) { kill_during_copy_back(false); }
TEST(UpdateKill, SigkillDuringCopyBackWithRegeneratedVerityArea) { kill_during_copy_back(true); }
