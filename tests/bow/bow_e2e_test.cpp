// The bow scenario end to end, the way Android uses dm-bow: a daemon exports
// the bow device through FUSE; ext4 (4 KiB and 1 KiB blocks) is made and
// mounted over loop on it; files are written; fstrim reports the free space;
// `udm message NAME 0 state 1` takes the checkpoint while mounted; files are
// modified, deleted and added; then either the device is removed and
// `udm bow-restore` rolls the image back (e2fsck clean, every file as at the
// checkpoint), or `state 2` commits (e2fsck clean, the changes kept).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>

#include "common/sys_util.h"

using namespace udm::test;

namespace {

std::string ok(const CmdResult& r) { return r.ok() ? std::string() : r.describe(); }

std::map<std::string, std::string> sums_of(const std::string& mnt, const std::vector<std::string>& names) {
  std::map<std::string, std::string> m;
  for (const auto& n : names) {
    struct stat st;
    if (::stat((mnt + "/" + n).c_str(), &st) == 0) m[n] = sha256_file(mnt + "/" + n);
  }
  return m;
}

const std::vector<std::string> kNames = {"keep1", "keep2", "rewrite", "delete", "dir/deep",
                                         "dir/rewrite2", "added", "dir/added2"};

void scenario(int fs_block, bool commit) {
  if (!is_root() || !have_tool("mkfs.ext4") || !have_tool("losetup") || !have_tool("fstrim"))
    GTEST_SKIP() << "needs root, mkfs.ext4, losetup, fstrim";
  TempDir t;
  const uint64_t kSize = 64ull << 20;
  std::string disk = t.file("disk.img");
  make_sparse_file(disk, kSize);
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  std::string table = "0 " + std::to_string(kSize / 512) + " bow " + disk;
  ASSERT_EQ(ok(d->udm({"create", "bowdev", "--table", table})), "");
  ASSERT_TRUE(wait_for_file(d->fuse_path("bowdev")));
  std::string mnt = t.file("mnt");
  ::mkdir(mnt.c_str(), 0755);
  std::map<std::string, std::string> at_checkpoint, after_changes;
  {
    LoopDevice loop(d->fuse_path("bowdev"));
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    ASSERT_EQ(ok(run({"mkfs.ext4", "-q", "-F", "-b", std::to_string(fs_block), loop.device()})), "");
    Mount m(loop.device(), mnt);
    ASSERT_TRUE(m.ok()) << m.error();
    ::mkdir((mnt + "/dir").c_str(), 0755);
    int i = 0;
    for (const char* n : {"keep1", "keep2", "rewrite", "delete", "dir/deep", "dir/rewrite2"})
      write_file(mnt + "/" + n, random_bytes(200000 + 77777 * i, 10 + i)), i++;
    ASSERT_EQ(ok(sh("sync && fstrim -v " + mnt)), "");
    auto st = d->udm({"status", "bowdev"});
    ASSERT_NE(st.out.find("state=0"), std::string::npos) << st.out;
    at_checkpoint = sums_of(mnt, kNames);
    // Checkpoint while mounted, as vold does. With the filesystem frozen
    // around it, not one byte of the device may read differently after it
    // (the live block 0 and the saved original go into trimmed blocks, which
    // must keep reading as zeroes; the FUSE file is direct I/O).
    const bool freeze = have_tool("fsfreeze");
    if (freeze) {
      ASSERT_EQ(ok(run({"fsfreeze", "-f", mnt})), "");
    }
    std::string before_cp = sha256_file(d->fuse_path("bowdev"));
    auto cp = d->udm({"message", "bowdev", "0", "state", "1"});
    std::string after_cp = sha256_file(d->fuse_path("bowdev"));
    if (freeze) {
      ASSERT_EQ(ok(run({"fsfreeze", "-u", mnt})), "");
    }
    ASSERT_EQ(ok(cp), "");
    EXPECT_EQ(before_cp, after_cp) << "state 1 changed what the device reads";
    st = d->udm({"status", "bowdev"});
    ASSERT_NE(st.out.find("state=1"), std::string::npos) << st.out;
    // Change things: rewrite in place, delete, add (also into freed space).
    write_file(mnt + "/rewrite", random_bytes(300000, 99));
    ASSERT_EQ(ok(sh("dd if=/dev/urandom of=" + mnt + "/dir/rewrite2 bs=1k seek=3 count=5 "
                    "conv=notrunc status=none")), "");
    ASSERT_EQ(ok(run({"rm", mnt + "/delete"})), "");
    ASSERT_EQ(ok(sh("sync")), "");
    write_file(mnt + "/added", random_bytes(1 << 20, 98));
    write_file(mnt + "/dir/added2", random_bytes(5000, 97));
    ASSERT_EQ(ok(sh("sync")), "");
    after_changes = sums_of(mnt, kNames);
    ASSERT_TRUE(m.unmount());
    st = d->udm({"status", "bowdev"});
    EXPECT_EQ(st.out.find("backed_up=0 "), std::string::npos) << st.out;  // something was saved
    std::cout << "status after changes: " << st.out;
    if (commit) {
      // The commit changes no read either (unmounted: nothing else writes),
      // and afterwards the raw image is exactly what the device read.
      std::string before_commit = sha256_file(d->fuse_path("bowdev"));
      ASSERT_EQ(ok(d->udm({"message", "bowdev", "0", "state", "2"})), "");
      st = d->udm({"status", "bowdev"});
      EXPECT_NE(st.out.find("state=2"), std::string::npos) << st.out;
      EXPECT_EQ(sha256_file(d->fuse_path("bowdev")), before_commit);
      EXPECT_EQ(sha256_file(disk), before_commit);
    }
  }
  ASSERT_EQ(ok(d->udm({"remove", "bowdev"})), "");
  EXPECT_EQ(d->stop(), 0);
  if (!commit) {
    // Dry run first: lists entries, writes nothing.
    std::string before = sha256_file(disk);
    auto dry = run({udm_bin(), "bow-restore", disk, "--dry-run"});
    ASSERT_TRUE(dry.ok()) << dry.describe();
    EXPECT_NE(dry.out.find("entry 0:0: restore"), std::string::npos) << dry.out;
    EXPECT_NE(dry.out.find("nothing written"), std::string::npos) << dry.out;
    EXPECT_EQ(sha256_file(disk), before);
    auto r = run({udm_bin(), "bow-restore", disk});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_NE(r.out.find("back at its checkpoint"), std::string::npos) << r.out;
    // Run again: nothing to do, a clear error, nothing changed.
    std::string restored = sha256_file(disk);
    auto again = run({udm_bin(), "bow-restore", disk});
    EXPECT_EQ(again.exit_code, 1);
    EXPECT_NE(again.err.find("no bow log"), std::string::npos) << again.describe();
    EXPECT_EQ(sha256_file(disk), restored);
  }
  auto fsck = run({"e2fsck", "-fn", disk});
  ASSERT_TRUE(fsck.ok()) << fsck.describe();
  {
    // The checkpoint was taken while mounted, like a crash: mounting replays
    // ext4's journal (so the loop device is writable).
    LoopDevice loop(disk);
    ASSERT_FALSE(loop.device().empty()) << loop.error();
    Mount m(loop.device(), mnt);
    ASSERT_TRUE(m.ok()) << m.error();
    auto now = sums_of(mnt, kNames);
    if (commit) {
      EXPECT_EQ(now, after_changes);
    } else {
      EXPECT_EQ(now, at_checkpoint);
    }
    EXPECT_NE(at_checkpoint, after_changes);
    ASSERT_TRUE(m.unmount());
    fsck = run({"e2fsck", "-fn", loop.device()});
    EXPECT_TRUE(fsck.ok()) << "after journal replay: " << fsck.describe();
  }
}

}  // namespace

TEST(BowE2E, Ext4With4KiBBlocksRestore) { scenario(4096, false); }
TEST(BowE2E, Ext4With4KiBBlocksCommit) { scenario(4096, true); }
TEST(BowE2E, Ext4With1KiBBlocksRestore) { scenario(1024, false); }
TEST(BowE2E, Ext4With1KiBBlocksCommit) { scenario(1024, true); }

// The user's report, through the daemon's FUSE file without a filesystem:
// fallocate PUNCH_HOLE (what loop sends for discard and write-zeroes) reads
// back as zeroes in states 0, 1 and 2; state changes change no byte; the
// blocks bow fills (backups, the live block 0, the intent) never show; a
// punch of in-use data in state 1 is still rolled back by bow-restore.
void punch_scenario(bool commit) {
  if (!is_root() || !have_tool("fallocate"))
    GTEST_SKIP() << "needs root and fallocate";
  TempDir t;
  const uint64_t kSize = 8ull << 20, kB = 4096;
  std::string disk = t.file("disk.img");
  auto orig = random_bytes(kSize, 1234);
  write_file(disk, orig);
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  ASSERT_EQ(ok(d->udm({"create", "b", "--table", "0 " + std::to_string(kSize / 512) + " bow " + disk})), "");
  std::string f = d->fuse_path("b");
  ASSERT_TRUE(wait_for_file(f));
  std::vector<uint8_t> model = orig;
  auto punch = [&](uint64_t off, uint64_t len) {
    auto r = run({"fallocate", "-p", "-o", std::to_string(off), "-l", std::to_string(len), f});
    ASSERT_TRUE(r.ok()) << r.describe();
    std::fill(model.begin() + off, model.begin() + off + len, 0);
  };
  auto write_at = [&](uint64_t off, const std::vector<uint8_t>& data) {
    std::string tmp = t.file("chunk");
    write_file(tmp, data);
    auto r = run({"dd", "if=" + tmp, "of=" + f, "bs=512", "seek=" + std::to_string(off / 512),
                  "conv=notrunc", "status=none"});
    ASSERT_TRUE(r.ok()) << r.describe();
    std::copy(data.begin(), data.end(), model.begin() + off);
  };
  auto reads_as_model = [&] { return read_file(f) == model; };
  // State 0: the upper half punched (learnt as free space), plus a punch
  // with partial blocks at both ends.
  punch(kSize / 2, kSize / 2);
  punch(100 * kB + 512, 3 * kB);
  ASSERT_TRUE(reads_as_model()) << "state 0";
  ASSERT_EQ(ok(d->udm({"message", "b", "0", "state", "1"})), "");
  ASSERT_TRUE(reads_as_model()) << "right after state 1";
  // State 1: overwrite in-use blocks (backups into the punched half), the
  // first block (the live block 0 moves), write into free space, punch
  // in-use data (saved first) and free space.
  for (int i = 1; i < 40; i++) write_at(i * 7 * kB, random_bytes(kB, 50 + i));
  write_at(1024, random_bytes(1024, 49));
  write_at(kSize / 2 + 10 * kB + 512, random_bytes(3000 / 512 * 512, 48));
  punch(300 * kB, 16 * kB);
  punch(kSize / 2 + 64 * kB, 64 * kB);
  ASSERT_TRUE(reads_as_model()) << "state 1";
  auto st = d->udm({"status", "b"});
  EXPECT_EQ(st.out.find("backed_up=4096 "), std::string::npos) << st.out;  // things were saved
  if (commit) {
    ASSERT_EQ(ok(d->udm({"message", "b", "0", "state", "2"})), "");
    ASSERT_TRUE(reads_as_model()) << "right after state 2";
    punch(500 * kB, 8 * kB);
    ASSERT_TRUE(reads_as_model()) << "state 2";
  }
  ASSERT_EQ(ok(d->udm({"remove", "b"})), "");
  EXPECT_EQ(d->stop(), 0);
  if (commit) {
    EXPECT_TRUE(read_file(disk) == model) << "the committed image differs from what the device read";
    return;
  }
  auto r = run({udm_bin(), "bow-restore", disk});
  ASSERT_TRUE(r.ok()) << r.describe();
  // Every block in use at the checkpoint (the lower half, less the partial
  // punch's whole block) is back, the punched in-use range included.
  auto back = read_file(disk);
  std::vector<uint8_t> cp = orig;
  std::fill(cp.begin() + 100 * kB + 512, cp.begin() + 103 * kB + 512, 0);
  for (uint64_t b = 0; b < kSize / 2 / kB; b++) {
    if (b == 101 || b == 102) continue;  // freed by the partial punch
    ASSERT_TRUE(std::equal(back.begin() + b * kB, back.begin() + (b + 1) * kB, cp.begin() + b * kB))
        << "block " << b << " not restored";
  }
}

TEST(BowE2E, FusePunchHoleReadsZeroInEveryStateThenRestore) { punch_scenario(false); }
TEST(BowE2E, FusePunchHoleReadsZeroInEveryStateThenCommit) { punch_scenario(true); }

TEST(BowCli, RestoreRefusesBadInputClearly) {
  TempDir t;
  std::string f = t.file("plain.img");
  write_file(f, random_bytes(1 << 20, 3));
  std::string before = sha256_file(f);
  auto r = run({udm_bin(), "bow-restore", f});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no bow log in block 0"), std::string::npos) << r.describe();
  r = run({udm_bin(), "bow-restore", f, "--force", "x:y"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("SEQ:IDX"), std::string::npos) << r.describe();
  r = run({udm_bin(), "bow-restore", t.file("missing.img")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("missing.img"), std::string::npos) << r.describe();
  EXPECT_EQ(sha256_file(f), before);
}
