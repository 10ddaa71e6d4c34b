// Through the udm binary: the dmsetup-style snapshot/merge scenario with ext4
// over the daemon's FUSE export; fiemap on a real preallocated file on ext4;
// cow-size.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <map>
#include <sstream>
#include <thread>

#include "common/sys_util.h"

using namespace udm::test;

namespace {

// "0 131072 snapshot-merge 40/131072 16" -> {40, 16}; {0, 0} if not parsable.
std::pair<uint64_t, uint64_t> merge_progress(const std::string& status_line) {
  std::istringstream in(status_line);
  std::string start, len, type, usage;
  uint64_t meta = 0;
  in >> start >> len >> type >> usage >> meta;
  auto slash = usage.find('/');
  if (type != "snapshot-merge" || slash == std::string::npos || !in) return {0, 0};
  return {std::stoull(usage.substr(0, slash)), meta};
}

// sha256 of every regular file under `root`, keyed by relative path.
std::map<std::string, std::string> tree_sums(const std::string& root) {
  std::map<std::string, std::string> m;
  auto r = sh("cd " + root + " && find . -type f ! -path './lost+found/*' | sort");
  std::istringstream in(r.out);
  std::string f;
  while (std::getline(in, f)) m[f.substr(2)] = sha256_file(root + "/" + f.substr(2));
  return m;
}

}  // namespace

// Reads all of `path`.
std::vector<uint8_t> read_all_of(const std::string& path) { return read_file(path); }

// fallocate(mode) on the FUSE file of a device, then fsync.
std::string zero_via_fuse(const std::string& path, int mode, uint64_t off, uint64_t len) {
  int fd = ::open(path.c_str(), O_RDWR);
  if (fd < 0) return "open " + path + ": " + strerror(errno);
  std::string err;
  if (::fallocate(fd, mode, off_t(off), off_t(len)) != 0) err = std::string("fallocate: ") + strerror(errno);
  if (err.empty() && ::fsync(fd) != 0) err = std::string("fsync: ") + strerror(errno);
  ::close(fd);
  return err;
}

// The seed's rollback story the dmsetup/LVM way, through the daemon and its
// FUSE export: ext4 on a linear device "vol"; snapshot it (vol-real takes the
// linear table, vol becomes snapshot-origin over it, "snap" is the snapshot
// with a persistent COW); change files through vol; the snapshot still shows
// the old tree; roll back by loading snapshot-merge into vol; after the merge
// the filesystem is clean and every file is back to its snapshot-time bytes.
TEST(SnapshotE2E, Ext4SnapshotModifyAndMergeBackThroughFuse) {
  if (!is_root() || !have_tool("mkfs.ext4") || !have_tool("losetup") || !have_tool("e2fsck"))
    GTEST_SKIP() << "needs root, mkfs.ext4, losetup, e2fsck";
  TempDir t;
  const uint64_t kSize = 96ull << 20, kSectors = kSize / 512;
  const std::string sect = std::to_string(kSectors);
  std::string base = t.file("base.img"), cow = t.file("cow.img");
  make_sparse_file(base, kSize);
  make_sparse_file(cow, kSize);
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  auto udm = [&](std::vector<std::string> args) {
    auto r = d->udm(std::move(args));
    return r.ok() ? std::string() : r.describe();
  };
  // FUSE releases arrive asynchronously after a loop device lets go of a
  // file: a remove right after may still see an opener.
  auto remove = [&](const std::string& name) {
    CmdResult r;
    for (int i = 0; i < 200; i++) {
      r = d->udm({"remove", name});
      if (r.ok() || r.err.find("in use") == std::string::npos) break;
      usleep(50000);
    }
    return r.ok() ? std::string() : r.describe();
  };
  const std::string linear = "0 " + sect + " linear " + base + " 0";
  ASSERT_EQ(udm({"create", "vol", "--table", linear}), "");
  ASSERT_TRUE(wait_for_file(d->fuse_path("vol"), 10));
  std::string mnt = t.file("mnt");
  ASSERT_EQ(::mkdir(mnt.c_str(), 0755), 0);

  // 1. ext4 with a few files on the plain linear device.
  std::map<std::string, std::string> snap_sums;
  {
    LoopDevice loop(d->fuse_path("vol"));
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    auto r = run({"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop.device()});
    ASSERT_TRUE(r.ok()) << r.describe();
    Mount m(loop.device(), mnt);
    ASSERT_TRUE(m.ok()) << m.error();
    ASSERT_EQ(::mkdir((mnt + "/dir").c_str(), 0755), 0);
    for (int i = 0; i < 8; i++)
      write_file(mnt + "/dir/f" + std::to_string(i), random_bytes((i + 1) * 300000 + i * 17, 10 + i));
    write_file(mnt + "/big.bin", random_bytes(12 << 20, 99));
    write_file(mnt + "/note.txt", {'v', '1', '\n'});
    ASSERT_TRUE(sh("sync").ok());
    snap_sums = tree_sums(mnt);
    ASSERT_TRUE(m.unmount());
  }
  ASSERT_EQ(snap_sums.size(), 10u);
  const std::string snap_time_sha = sha256_file(base);

  // 2. Take the snapshot the way LVM drives dmsetup.
  ASSERT_EQ(udm({"create", "vol-real", "--table", linear}), "");
  ASSERT_EQ(udm({"suspend", "vol"}), "");
  ASSERT_EQ(udm({"reload", "vol", "--table", "0 " + sect + " snapshot-origin vol-real"}), "");
  ASSERT_EQ(udm({"create", "snap", "--table", "0 " + sect + " snapshot vol-real " + cow + " P 8"}), "");
  ASSERT_EQ(udm({"resume", "vol"}), "");
  EXPECT_EQ(d->udm({"table", "vol"}).out, "0 " + sect + " snapshot-origin vol-real\n");
  EXPECT_EQ(d->udm({"status", "snap"}).out, "0 " + sect + " snapshot 16/" + sect + " 16\n");
  ASSERT_TRUE(wait_for_file(d->fuse_path("snap"), 10));
  auto inspect = run({udm_bin(), "inspect", cow});
  EXPECT_NE(inspect.out.find("exceptions:          0"), std::string::npos) << inspect.describe();

  // 3. Change the tree through the origin: rewrite part of a file, delete
  // files, add files, append.
  std::map<std::string, std::string> changed_sums;
  {
    LoopDevice loop(d->fuse_path("vol"));
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    Mount m(loop.device(), mnt);
    ASSERT_TRUE(m.ok()) << m.error();
    ASSERT_TRUE(sh("dd if=/dev/urandom of=" + mnt + "/big.bin bs=64K seek=17 count=40 conv=notrunc,fsync status=none").ok());
    ASSERT_EQ(::unlink((mnt + "/dir/f2").c_str()), 0);
    ASSERT_EQ(::unlink((mnt + "/dir/f5").c_str()), 0);
    write_file(mnt + "/dir/new", random_bytes(3 << 20, 77));
    ASSERT_TRUE(sh("echo v2 >> " + mnt + "/note.txt && cp " + mnt + "/dir/f7 " + mnt + "/f7.copy && sync").ok());
    changed_sums = tree_sums(mnt);
    ASSERT_TRUE(m.unmount());
  }
  EXPECT_NE(changed_sums, snap_sums);
  EXPECT_EQ(changed_sums.count("dir/f2"), 0u);
  EXPECT_NE(changed_sums["big.bin"], snap_sums["big.bin"]);
  EXPECT_NE(sha256_file(base), snap_time_sha);
  inspect = run({udm_bin(), "inspect", cow});
  ASSERT_TRUE(inspect.ok()) << inspect.describe();
  EXPECT_EQ(inspect.out.find("exceptions:          0\n"), std::string::npos) << inspect.out;
  // The snapshot shows the old tree: the device hashes as the origin did at
  // snapshot time, fsck clean, same files.
  EXPECT_EQ(sha256_file(d->fuse_path("snap")), snap_time_sha);
  {
    LoopDevice loop(d->fuse_path("snap"), true);
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    auto fsck = run({"e2fsck", "-fn", loop.device()});
    EXPECT_TRUE(fsck.ok()) << fsck.describe();
    Mount m(loop.device(), mnt, "ro,noload");
    ASSERT_TRUE(m.ok()) << m.error();
    EXPECT_EQ(tree_sums(mnt), snap_sums);
    ASSERT_TRUE(m.unmount());
  }

  // 4. Roll back: drop the snapshot device, load snapshot-merge into vol.
  ASSERT_EQ(remove("snap"), "");
  ASSERT_EQ(udm({"reload", "vol", "--table", "0 " + sect + " snapshot-merge vol-real " + cow + " P 8"}), "");
  ASSERT_EQ(udm({"suspend", "vol"}), "");
  ASSERT_EQ(udm({"resume", "vol"}), "");
  // The merged view is the snapshot from the first moment on.
  EXPECT_EQ(sha256_file(d->fuse_path("vol")), snap_time_sha);
  std::pair<uint64_t, uint64_t> prog{0, 0};
  std::string last;
  for (int i = 0; i < 2400; i++) {  // a generous limit (4 min), not a speed check
    auto st = d->udm({"status", "vol"});
    ASSERT_TRUE(st.ok()) << st.describe();
    last = st.out;
    ASSERT_EQ(last.find("failed"), std::string::npos) << last;
    ASSERT_EQ(last.find("Invalid"), std::string::npos) << last;
    prog = merge_progress(last);
    ASSERT_NE(prog.second, 0u) << "unexpected status: " << last;
    if (prog.first == prog.second) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(prog.first, prog.second) << "merge did not finish: " << last;
  EXPECT_EQ(last, "0 " + sect + " snapshot-merge 16/" + sect + " 16\n");
  inspect = run({udm_bin(), "inspect", cow});
  EXPECT_NE(inspect.out.find("exceptions:          0\n"), std::string::npos) << inspect.describe();
  // The origin's own bytes are the snapshot's again.
  EXPECT_EQ(sha256_file(base), snap_time_sha);

  // 5. fsck clean and every file back (deleted ones restored, new ones gone).
  {
    LoopDevice loop(d->fuse_path("vol"));
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    auto fsck = run({"e2fsck", "-fn", loop.device()});
    EXPECT_TRUE(fsck.ok()) << fsck.describe();
    Mount m(loop.device(), mnt);
    ASSERT_TRUE(m.ok()) << m.error();
    EXPECT_EQ(tree_sums(mnt), snap_sums);
    ASSERT_TRUE(m.unmount());
  }
  // Commit the rollback: vol back to plain linear, vol-real gone; the same
  // bytes (the mount above changed the superblock) through either table.
  const std::string rolled_back = sha256_file(d->fuse_path("vol"));
  EXPECT_EQ(sha256_file(base), rolled_back);
  ASSERT_EQ(udm({"reload", "vol", "--table", linear}), "");
  ASSERT_EQ(udm({"suspend", "vol"}), "");
  ASSERT_EQ(udm({"resume", "vol"}), "");
  ASSERT_EQ(remove("vol-real"), "");
  EXPECT_EQ(sha256_file(d->fuse_path("vol")), rolled_back);
  ASSERT_EQ(remove("vol"), "");
  EXPECT_EQ(d->stop(), 0);
}

TEST(SnapshotE2E, FiemapOnExt4) {
  TempDir t;
  ASSERT_TRUE(sh("truncate -s 64M " + t.file("fs.img") + " && mkfs.ext4 -q " + t.file("fs.img")).ok());
  LoopDevice loop(t.file("fs.img"));
  ASSERT_FALSE(loop.device().empty()) << loop.error();
  ASSERT_TRUE(sh("mkdir -p " + t.file("mnt")).ok());
  Mount m(loop.device(), t.file("mnt"));
  ASSERT_TRUE(m.error().empty()) << m.error();
  std::string f = t.file("mnt") + "/cow.img";
  ASSERT_TRUE(sh("fallocate -l 4M " + f).ok());
  auto r = run({udm_bin(), "fiemap", f});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("unwritten"), std::string::npos) << r.describe();
  ASSERT_TRUE(sh("dd if=/dev/urandom of=" + f + " bs=1M count=4 conv=notrunc status=none").ok());
  r = run({udm_bin(), "fiemap", f});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  // The table maps the file: reading the device ranges gives the file's bytes.
  uint64_t total = 0;
  std::istringstream in(r.out);
  std::string line;
  std::string cat;
  while (std::getline(in, line)) {
    std::istringstream l(line);
    uint64_t start, len, phys;
    std::string type, dev;
    l >> start >> len >> type >> dev >> phys;
    EXPECT_EQ(type, "linear");
    EXPECT_EQ(start, total);
    total += len;
    cat += "dd if=" + dev + " bs=512 skip=" + std::to_string(phys) + " count=" + std::to_string(len) +
           " status=none; ";
  }
  EXPECT_EQ(total, 8192u);
  auto a = sh("(" + cat + ") | sha256sum | cut -d' ' -f1");
  auto b = sh("sha256sum " + f + " | cut -d' ' -f1");
  EXPECT_EQ(a.out, b.out);
}

TEST(SnapshotE2E, CowSizeAndInspect) {
  auto r = run({udm_bin(), "cow-size", "--chunk-size", "4096", "--changed-chunks", "256"});
  EXPECT_EQ(r.out, std::to_string(259 * 4096) + "\n") << r.describe();
  r = run({udm_bin(), "cow-size", "--chunk-size", "4K", "--changed-bytes", "4097"});
  EXPECT_EQ(r.out, std::to_string(4 * 4096) + "\n") << r.describe();
}

// The user's report (issue 11): punch-hole through the FUSE export on a
// snapshot-origin and on a snapshot succeeded but the old bytes stayed.
// Punch-hole and zero-range on the FUSE files, and blkdiscard / blkdiscard -z
// through a loop device on them (what the loop driver turns into those
// fallocate calls): every range reads zero afterwards, the other device's
// view is unchanged, and a merge afterwards (with a punch-hole on vol while
// it runs) leaves the origin exactly the snapshot's zeroed view.
TEST(SnapshotE2E, PunchHoleAndZeroRangeThroughFuse) {
  if (!is_root()) GTEST_SKIP() << "needs root";
  TempDir t;
  const uint64_t kSize = 16ull << 20, kSectors = kSize / 512;
  const std::string sect = std::to_string(kSectors);
  std::string base = t.file("base.img"), cow = t.file("cow.img");
  std::vector<uint8_t> orig = random_bytes(kSize, 5);
  write_file(base, orig);
  make_sparse_file(cow, kSize + (1 << 20));
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  auto udm = [&](std::vector<std::string> args) {
    auto r = d->udm(std::move(args));
    return r.ok() ? std::string() : r.describe();
  };
  auto remove = [&](const std::string& name) {
    CmdResult r;
    for (int i = 0; i < 200; i++) {
      r = d->udm({"remove", name});
      if (r.ok() || r.err.find("in use") == std::string::npos) break;
      usleep(50000);
    }
    return r.ok() ? std::string() : r.describe();
  };
  ASSERT_EQ(udm({"create", "vol-real", "--table", "0 " + sect + " linear " + base + " 0"}), "");
  ASSERT_EQ(udm({"create", "vol", "--table", "0 " + sect + " snapshot-origin vol-real"}), "");
  ASSERT_EQ(udm({"create", "snap", "--table", "0 " + sect + " snapshot vol-real " + cow + " P 8"}), "");
  ASSERT_TRUE(wait_for_file(d->fuse_path("vol"), 10) && wait_for_file(d->fuse_path("snap"), 10));
  const std::string vol = d->fuse_path("vol"), snap = d->fuse_path("snap");
  std::vector<uint8_t> vol_model = orig, snap_model = orig;
  auto zero = [](std::vector<uint8_t>& m, uint64_t off, uint64_t len) { memset(m.data() + off, 0, len); };
  // On the origin: punch-hole (unaligned) and zero-range.
  ASSERT_EQ(zero_via_fuse(vol, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100000, 300000), "");
  zero(vol_model, 100000, 300000);
  ASSERT_EQ(zero_via_fuse(vol, FALLOC_FL_ZERO_RANGE, 1 << 20, 1 << 20), "");
  zero(vol_model, 1 << 20, 1 << 20);
  EXPECT_TRUE(read_all_of(vol) == vol_model) << "origin does not read zero after punch-hole/zero-range";
  EXPECT_TRUE(read_all_of(snap) == snap_model) << "the snapshot changed with the origin";
  // On the snapshot: over chunks the origin saved, chunks it did not, and
  // partial chunks.
  ASSERT_EQ(zero_via_fuse(snap, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 200000, 2 << 20), "");
  zero(snap_model, 200000, 2 << 20);
  ASSERT_EQ(zero_via_fuse(snap, FALLOC_FL_ZERO_RANGE, (6 << 20) + 7, 70000), "");
  zero(snap_model, (6 << 20) + 7, 70000);
  EXPECT_TRUE(read_all_of(snap) == snap_model) << "snapshot does not read zero after punch-hole/zero-range";
  EXPECT_TRUE(read_all_of(vol) == vol_model) << "the origin changed with the snapshot";
  // Through loop devices: discard and zero-out as the block layer sends them.
  if (have_tool("blkdiscard") && have_tool("losetup")) {
    {
      LoopDevice lv(vol);
      ASSERT_FALSE(lv.device().empty()) << lv.error();
      auto r = run({"blkdiscard", "-o", std::to_string(8 << 20), "-l", std::to_string(1 << 20), lv.device()});
      ASSERT_TRUE(r.ok()) << r.describe();
      zero(vol_model, 8 << 20, 1 << 20);
    }
    {
      LoopDevice ls(snap);
      ASSERT_FALSE(ls.device().empty()) << ls.error();
      auto r = run({"blkdiscard", "-z", "-o", std::to_string(10 << 20), "-l", std::to_string(1 << 20), ls.device()});
      ASSERT_TRUE(r.ok()) << r.describe();
      zero(snap_model, 10 << 20, 1 << 20);
      r = run({"blkdiscard", "-o", std::to_string(12 << 20), "-l", std::to_string(512 << 10), ls.device()});
      ASSERT_TRUE(r.ok()) << r.describe();
      zero(snap_model, 12 << 20, 512 << 10);
    }
    EXPECT_TRUE(read_all_of(vol) == vol_model) << "origin after blkdiscard through loop";
    EXPECT_TRUE(read_all_of(snap) == snap_model) << "snapshot after blkdiscard through loop";
  }
  // Merge the snapshot back into vol; punch a hole through vol right away
  // (the merge may be running).
  ASSERT_EQ(remove("snap"), "");
  ASSERT_EQ(udm({"reload", "vol", "--table", "0 " + sect + " snapshot-merge vol-real " + cow + " P 8"}), "");
  ASSERT_EQ(udm({"suspend", "vol"}), "");
  ASSERT_EQ(udm({"resume", "vol"}), "");
  ASSERT_EQ(zero_via_fuse(vol, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (3 << 20) + 5, 100000), "");
  zero(snap_model, (3 << 20) + 5, 100000);
  EXPECT_TRUE(read_all_of(vol) == snap_model) << "snapshot-merge view";
  std::string last;
  for (int i = 0; i < 600; i++) {
    last = d->udm({"status", "vol"}).out;
    if (last == "0 " + sect + " snapshot-merge 16/" + std::to_string((kSize + (1 << 20)) / 512) + " 16\n") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(last, "0 " + sect + " snapshot-merge 16/" + std::to_string((kSize + (1 << 20)) / 512) + " 16\n");
  ASSERT_EQ(zero_via_fuse(vol, FALLOC_FL_ZERO_RANGE, 15 << 20, 4096), "");
  zero(snap_model, 15 << 20, 4096);
  EXPECT_TRUE(read_all_of(base) == snap_model) << "origin file after the merge";
  ASSERT_EQ(remove("vol"), "");
  ASSERT_EQ(remove("vol-real"), "");
  EXPECT_EQ(d->stop(), 0);
}
