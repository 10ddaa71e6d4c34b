// The update target's background copy-back over a remote diff (issue 13,
// "Streaming update"; docs/remote.md). The diff is served by nginx (or a
// registry); the bytes the copy-back writes into its diff (v1: header sector
// and stash block, v0: the first sector) live in a state file in the daemon's
// cache directory (DIR/ID.overlay, io/region_overlay.h), keyed by the
// object's identity. Through the daemon: the copy-back runs to the new image
// byte for byte; a daemon SIGKILLed (v1) or stopped (v0) mid-way resumes
// from the record in that file; a state file of an earlier version of the
// object is not used; `--cache-dir none` is refused naming no_bg_update;
// `udm cache ls` lists the state file and `udm cache evict` keeps it unless
// told --state.
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "remote/cache_store.h"
#include "remote_util.h"
#include "servers.h"
#include "update/format_v0.h"
#include "update/format_v1.h"
#include "update/update_util.h"

namespace udm::test {
namespace {

// Kills the daemon without letting it clean up (its stale FUSE mount detached).
void kill9(TestDaemon& d) {
  ASSERT_GT(d.pid, 0);
  ::kill(d.pid, SIGKILL);
  int st = 0;
  ::waitpid(d.pid, &st, 0);
  d.pid = -1;
  if (!d.fuse_dir.empty()) run({"umount", "-l", d.fuse_dir});
}

// "<done> <total>" of the device's status line.
std::pair<uint64_t, uint64_t> progress(const TestDaemon& d, const std::string& name) {
  auto r = d.udm({"status", name});
  EXPECT_TRUE(r.ok()) << r.describe();
  std::istringstream s(r.out);
  std::string start, len, type;
  uint64_t a = 0, b = 0;
  s >> start >> len >> type >> a >> b;
  return {a, b};
}

// The state files (ID.overlay) in a cache directory.
std::vector<std::string> state_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 8 && n.substr(n.size() - 8) == ".overlay") out.push_back(dir + "/" + n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// The copy-back's record as the state file holds it: the diff's first bytes
// start at byte 4096 of the file (io/region_overlay.h).
uint64_t recorded(const std::string& state_file, bool v1) {
  auto b = read_file(state_file);
  if (b.size() < 4096 + 512) return 0;
  std::span<const uint8_t> diff_head(b.data() + 4096, 512);
  if (v1) {
    auto h = update::decode_v1_header(diff_head);
    return h.ok() && h->ckpt_state >= 1 ? h->ckpt_done : 0;
  }
  auto sb = update::decode_superblock(diff_head.first(update::kSuperblockSize));
  if (!sb.ok() || (sb->pad2 >> 32) != update::kProgressTag) return 0;
  return sb->pad2 & 0xffffffffu;
}

struct Served {
  TempDir t, www;
  std::vector<uint8_t> old_img, new_img;
  std::unique_ptr<Nginx> ngx;
  std::string url, sectors;
};

// An 8 MiB pair where 90-100 % of the blocks change (moves, cycles, edits,
// novel blocks), diffed by `udm update-diff` (v1, or v0) and served by nginx.
// Null (skip message in *skip) without nginx.
std::unique_ptr<Served> serve_pair(bool v1, std::string* skip) {
  auto s = std::make_unique<Served>();
  public_dir(s->www);
  auto churn = make_churn_pair(2048, 2048, 4096, 4);
  s->old_img = std::move(churn.old_img);
  s->new_img = std::move(churn.new_img);
  write_file(s->t.file("old.img"), s->old_img);
  write_file(s->t.file("new.img"), s->new_img);
  std::vector<std::string> cmd = {udm_bin(), "update-diff", s->t.file("old.img"), s->t.file("new.img"), "-o",
                                  s->www.file("diff.img")};
  if (!v1) cmd.insert(cmd.end(), {"--format", "v0"});
  auto r = run(cmd);
  EXPECT_TRUE(r.ok()) << r.describe();
  if (!r.ok()) return nullptr;
  ::chmod(s->www.file("diff.img").c_str(), 0644);
  s->ngx = Nginx::start(s->www.path(), skip);
  if (!s->ngx) return nullptr;
  s->url = s->ngx->url("diff.img");
  s->sectors = std::to_string(s->new_img.size() / 512);
  EXPECT_TRUE(run({"cp", s->t.file("old.img"), s->t.file("sys.img")}).ok());
  return s;
}

std::unique_ptr<TestDaemon> start_daemon(const std::string& cache_dir) {
  return TestDaemon::start(true, false, {"--cache-dir", cache_dir, "--cache-size", "1G"});
}

// v1: a daemon SIGKILLed while a throttled copy-back runs; the next daemon,
// same table and cache dir, starts from the record the state file holds
// (past 0) and finishes: the system file is the new image.
TEST(RemoteUpdateCopyBack, V1ResumesFromTheCacheDirRecordAfterSigkill) {
  if (!is_root()) GTEST_SKIP() << "needs root (FUSE)";
  std::string skip;
  auto s = serve_pair(true, &skip);
  if (!s) GTEST_SKIP() << skip;
  TempDir cache;
  const std::string table = "0 " + s->sectors + " update " + s->t.file("sys.img") + " " + s->url + " 2 paused throttle=2";
  uint64_t killed_at = 0;
  {
    auto d = start_daemon(cache.path());
    auto r = d->udm({"create", "upd", "--table", table});
    ASSERT_TRUE(r.ok()) << r.describe();
    auto [done, total] = progress(*d, "upd");
    EXPECT_EQ(done, 0u);
    ASSERT_GT(total, 1000u);
    auto files = state_files(cache.path());
    ASSERT_EQ(files.size(), 1u) << "one state file for the diff";
    // Named by the cache's id of the object (the same stem as its .state and .data).
    const std::string id = files[0].substr(cache.path().size() + 1, 64);
    EXPECT_EQ(::access((cache.path() + "/" + id + ".state").c_str(), F_OK), 0) << files[0];
    EXPECT_EQ(recorded(files[0], true), 0u);
    EXPECT_TRUE(read_file(d->fuse_path("upd")) == s->new_img) << "the device reads as the new image";
    ASSERT_TRUE(d->udm({"message", "upd", "0", "resume"}).ok());
    // 2 MiB/s: about four seconds for the whole copy-back. The record is
    // written at least once a second while the copy moves.
    uint64_t rec = 0;
    for (int i = 0; i < 3000 && rec < total / 5; i++) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      rec = recorded(files[0], true);
    }
    ASSERT_GE(rec, total / 5) << "the running copy-back never recorded its progress in the state file";
    EXPECT_LT(progress(*d, "upd").first, total) << "finished before the kill: the test proves nothing";
    kill9(*d);
    killed_at = recorded(files[0], true);
    EXPECT_NE(read_file(s->t.file("sys.img")), s->new_img);
  }
  {
    auto d = start_daemon(cache.path());
    auto r = d->udm({"create", "upd", "--table", table});
    ASSERT_TRUE(r.ok()) << r.describe();
    auto [done, total] = progress(*d, "upd");
    // Created paused, the status is the record the killed daemon left (or the
    // end of the logged batch it recorded, which the target finishes first).
    EXPECT_GE(done, killed_at) << "not resumed from the record the killed daemon left";
    EXPECT_GT(done, 0u) << "resumed from the start: the record was not kept";
    std::cerr << "v1: killed with the record at " << killed_at << " of " << total << "; the new daemon starts at "
              << done << "\n";
    EXPECT_TRUE(read_file(d->fuse_path("upd")) == s->new_img) << "the device reads as the new image after the restart";
    ASSERT_TRUE(d->udm({"message", "upd", "0", "throttle", "off"}).ok());
    ASSERT_TRUE(d->udm({"message", "upd", "0", "resume"}).ok());
    r = d->udm({"wait", "upd", "--timeout", "120"});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(progress(*d, "upd").first, total);
    EXPECT_EQ(recorded(state_files(cache.path())[0], true), total) << "the record says every operation is done";
    ASSERT_TRUE(d->udm({"remove", "upd"}).ok());
    EXPECT_EQ(d->stop(), 0);
  }
  EXPECT_TRUE(read_file(s->t.file("sys.img")) == s->new_img) << "the system file is not the new image";
  EXPECT_EQ(sha256_file(s->t.file("sys.img")), sha256_file(s->t.file("new.img")));
  EXPECT_EQ(state_files(cache.path()).size(), 1u);
  // Created again on the finished system file: the record says done, the
  // target checks the new image and copies nothing.
  auto d = start_daemon(cache.path());
  auto r = d->udm({"create", "upd", "--table", table});
  ASSERT_TRUE(r.ok()) << r.describe();
  auto [done, total] = progress(*d, "upd");
  EXPECT_EQ(done, total);
  EXPECT_TRUE(read_file(d->fuse_path("upd")) == s->new_img);
  ASSERT_TRUE(d->udm({"remove", "upd"}).ok());
  EXPECT_EQ(d->stop(), 0);
}

// v0: a daemon stopped while a throttled copy-back runs records its progress
// in the state file; the next one resumes there and finishes. Then `udm
// cache`: ls lists the state file, evict --all keeps it, evict --state
// removes it.
TEST(RemoteUpdateCopyBack, V0ResumesFromTheCacheDirRecordAndUdmCacheKeepsIt) {
  if (!is_root()) GTEST_SKIP() << "needs root (FUSE)";
  std::string skip;
  auto s = serve_pair(false, &skip);
  if (!s) GTEST_SKIP() << skip;
  TempDir cache;
  const std::string table = "0 " + s->sectors + " update " + s->t.file("sys.img") + " " + s->url + " 1 throttle=1";
  uint64_t stopped_at = 0, total = 0;
  {
    auto d = start_daemon(cache.path());
    auto r = d->udm({"create", "upd", "--table", table});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_TRUE(read_file(d->fuse_path("upd")) == s->new_img) << "the device reads as the new image";
    for (int i = 0; i < 3000 && progress(*d, "upd").first < 300; i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::tie(stopped_at, total) = progress(*d, "upd");
    ASSERT_GE(stopped_at, 300u) << "the copy-back did not move";
    ASSERT_LT(stopped_at, total) << "finished before the stop: the test proves nothing";
    EXPECT_EQ(d->stop(), 0);  // presuspend: the progress so far made durable
    auto files = state_files(cache.path());
    ASSERT_EQ(files.size(), 1u);
    stopped_at = recorded(files[0], false);
    EXPECT_GE(stopped_at, 300u);
  }
  {
    auto d = start_daemon(cache.path());
    auto r = d->udm({"create", "upd", "--table", "0 " + s->sectors + " update " + s->t.file("sys.img") + " " + s->url +
                                                     " 1 paused"});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(progress(*d, "upd").first, stopped_at) << "not resumed from the state file's record";
    std::cerr << "v0: stopped with the record at " << stopped_at << " of " << total << "\n";
    EXPECT_TRUE(read_file(d->fuse_path("upd")) == s->new_img);
    ASSERT_TRUE(d->udm({"message", "upd", "0", "resume"}).ok());
    r = d->udm({"wait", "upd", "--timeout", "120"});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(progress(*d, "upd").first, total);
    ASSERT_TRUE(d->udm({"remove", "upd"}).ok());
    EXPECT_EQ(d->stop(), 0);
  }
  EXPECT_TRUE(read_file(s->t.file("sys.img")) == s->new_img) << "the system file is not the new image";
  auto files = state_files(cache.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(recorded(files[0], false), total);

  // udm cache ls: the state file with its object's key and its one region.
  auto ls = run({udm_bin(), "cache", "ls", "--json", "--cache-dir", cache.path()});
  ASSERT_TRUE(ls.ok()) << ls.describe();
  auto j = nlohmann::json::parse(ls.out);
  ASSERT_EQ(j["states"].size(), 1u) << ls.out;
  auto st = j["states"][0];
  EXPECT_EQ(st["file"], files[0]);
  EXPECT_EQ(st["kind"], "url");
  EXPECT_EQ(st["url"], s->url);
  EXPECT_EQ(st["size"].get<uint64_t>(), read_file(s->www.file("diff.img")).size());
  EXPECT_EQ(st["bytes"].get<uint64_t>(), 512u);
  EXPECT_EQ(st["object_cached"], true);
  ASSERT_EQ(j["objects"].size(), 1u);
  EXPECT_EQ(j["objects"][0]["id"], st["id"]);
  EXPECT_TRUE(j["damaged"].empty()) << ls.out;
  // evict --all removes the cached object, not the progress.
  auto ev = run({udm_bin(), "cache", "evict", "--all", "--json", "--cache-dir", cache.path()});
  ASSERT_TRUE(ev.ok()) << ev.describe();
  auto ej = nlohmann::json::parse(ev.out);
  ASSERT_EQ(ej["evicted"].size(), 1u);
  EXPECT_EQ(ej["evicted"][0]["state_kept"], files[0]);
  EXPECT_EQ(state_files(cache.path()), files);
  ls = run({udm_bin(), "cache", "ls", "--json", "--cache-dir", cache.path()});
  j = nlohmann::json::parse(ls.out);
  EXPECT_TRUE(j["objects"].empty());
  ASSERT_EQ(j["states"].size(), 1u);
  EXPECT_EQ(j["states"][0]["object_cached"], false);
  // evict --state: a selector that names none is refused, nothing removed; the URL removes it.
  auto bad = run({udm_bin(), "cache", "evict", "--state", s->url + "x", "--cache-dir", cache.path()});
  EXPECT_EQ(bad.exit_code, 1) << bad.describe();
  EXPECT_NE(bad.err.find("no such local state file"), std::string::npos) << bad.describe();
  bad = run({udm_bin(), "cache", "evict", "--state", "--to", "1M", "--cache-dir", cache.path()});
  EXPECT_EQ(bad.exit_code, 2) << bad.describe();
  EXPECT_EQ(state_files(cache.path()), files);
  ev = run({udm_bin(), "cache", "evict", "--state", s->url, "--cache-dir", cache.path()});
  ASSERT_TRUE(ev.ok()) << ev.describe();
  EXPECT_NE(ev.out.find("removed local state " + files[0]), std::string::npos) << ev.describe();
  EXPECT_TRUE(state_files(cache.path()).empty());
}

// A state file made for an earlier version of the object (another ETag) is
// not used: v0 would resume blindly from any record, so a used stale record
// would leave the blocks before it uncopied. The object at the URL changes
// (its mtime, hence nginx's ETag and Last-Modified), the system file is the
// old image again: the copy-back starts at 0, in a second state file, the old
// one untouched, and ends with the new image.
TEST(RemoteUpdateCopyBack, StaleStateOfAChangedObjectIsNotUsed) {
  if (!is_root()) GTEST_SKIP() << "needs root (FUSE)";
  std::string skip;
  auto s = serve_pair(false, &skip);
  if (!s) GTEST_SKIP() << skip;
  TempDir cache;
  const std::string paused = "0 " + s->sectors + " update " + s->t.file("sys.img") + " " + s->url + " 1 paused";
  std::string first;
  std::vector<uint8_t> first_bytes;
  {
    auto d = start_daemon(cache.path());
    ASSERT_TRUE(d->udm({"create", "upd", "--table", "0 " + s->sectors + " update " + s->t.file("sys.img") + " " +
                                                     s->url + " 1 throttle=1"}).ok());
    for (int i = 0; i < 3000 && progress(*d, "upd").first < 300; i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(d->stop(), 0);
    auto files = state_files(cache.path());
    ASSERT_EQ(files.size(), 1u);
    first = files[0];
    ASSERT_GE(recorded(first, false), 300u);
    first_bytes = read_file(first);
  }
  // Same path, same bytes, another version: a new ETag.
  ASSERT_TRUE(run({"touch", "-d", "2001-02-03 04:05:06", s->www.file("diff.img")}).ok());
  ASSERT_TRUE(run({"cp", s->t.file("old.img"), s->t.file("sys.img")}).ok());
  {
    auto d = start_daemon(cache.path());
    auto r = d->udm({"create", "upd", "--table", paused});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(progress(*d, "upd").first, 0u) << "a stale state file was used";
    auto files = state_files(cache.path());
    ASSERT_EQ(files.size(), 2u) << "a new state file for the new version";
    EXPECT_EQ(read_file(first), first_bytes) << "the old version's state file is left alone";
    ASSERT_TRUE(d->udm({"message", "upd", "0", "resume"}).ok());
    r = d->udm({"wait", "upd", "--timeout", "120"});
    ASSERT_TRUE(r.ok()) << r.describe();
    ASSERT_TRUE(d->udm({"remove", "upd"}).ok());
    EXPECT_EQ(d->stop(), 0);
  }
  EXPECT_TRUE(read_file(s->t.file("sys.img")) == s->new_img) << "the system file is not the new image";
  auto ls = run({udm_bin(), "cache", "ls", "--json", "--cache-dir", cache.path()});
  ASSERT_TRUE(ls.ok()) << ls.describe();
  auto j = nlohmann::json::parse(ls.out);
  ASSERT_EQ(j["states"].size(), 2u);
  EXPECT_NE(j["states"][0]["validator"], j["states"][1]["validator"]) << ls.out;
}

// --cache-dir none: nothing can persist, so the copy-back is refused, naming
// no_bg_update (v1 and v0); with no_bg_update the device serves the new
// image; the system file is never written. The same for a cache directory
// another process owns.
TEST(RemoteUpdateCopyBack, CacheDirNoneIsRefusedNamingNoBgUpdate) {
  if (!is_root()) GTEST_SKIP() << "needs root (FUSE)";
  for (bool v1 : {true, false}) {
    SCOPED_TRACE(v1 ? "v1" : "v0");
    std::string skip;
    auto s = serve_pair(v1, &skip);
    if (!s) GTEST_SKIP() << skip;
    auto d = start_daemon("none");
    auto r = d->udm({"create", "upd", "--table", "0 " + s->sectors + " update " + s->t.file("sys.img") + " " + s->url + " 0"});
    EXPECT_FALSE(r.ok()) << r.describe();
    std::cerr << r.err;
    EXPECT_NE(r.err.find("no_bg_update"), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find("--cache-dir is none"), std::string::npos) << r.describe();
    r = d->udm({"create", "upd", "--table",
                "0 " + s->sectors + " update " + s->t.file("sys.img") + " " + s->url + " 1 no_bg_update"});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_TRUE(read_file(d->fuse_path("upd")) == s->new_img);
    ASSERT_TRUE(d->udm({"remove", "upd"}).ok());
    EXPECT_EQ(d->stop(), 0);
    EXPECT_TRUE(read_file(s->t.file("sys.img")) == s->old_img) << "the system file was written";
    if (!v1) continue;
    // A cache directory another process owns (a daemon with a remote source
    // open holds its lock): this daemon keeps nothing there, so refused too,
    // naming the owner.
    TempDir cache;
    auto owner = start_daemon(cache.path());
    ASSERT_TRUE(owner->udm({"create", "lin", "--table", "0 8 linear " + s->url + " 0"}).ok());
    auto other = start_daemon(cache.path());
    r = other->udm({"create", "upd", "--table", "0 " + s->sectors + " update " + s->t.file("sys.img") + " " + s->url + " 0"});
    EXPECT_FALSE(r.ok()) << r.describe();
    EXPECT_NE(r.err.find("is owned by pid " + std::to_string(owner->pid)), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find("no_bg_update"), std::string::npos) << r.describe();
    EXPECT_TRUE(state_files(cache.path()).empty());
    EXPECT_EQ(other->stop(), 0);
    ASSERT_TRUE(owner->udm({"remove", "lin"}).ok());
    EXPECT_EQ(owner->stop(), 0);
    EXPECT_TRUE(read_file(s->t.file("sys.img")) == s->old_img) << "the system file was written";
  }
}

// oci://: the state file is keyed by the blob's digest (its cache id is the
// sha256 of "sha256:HEX"); the copy-back from a registry blob ends with the
// new image; `udm update-info` reads the same blob.
TEST(RemoteUpdateCopyBack, OciBlobDiffCopiesBackWithItsStateKeyedByDigest) {
  if (!is_root()) GTEST_SKIP() << "needs root (FUSE)";
  std::string skip;
  auto s = serve_pair(true, &skip);
  if (!s) GTEST_SKIP() << skip;
  auto reg = Registry::start(false, 0, &skip);
  if (!reg) GTEST_SKIP() << skip;
  const std::string hex = reg->push_blob("test/ota", s->www.file("diff.img"));
  ASSERT_EQ(hex.size(), 64u);
  const std::string spec = "oci://" + reg->authority() + "/test/ota@sha256:" + hex;
  auto info = sh("UDM_CACHE_DIR=none " + udm_bin() + " update-info " + spec);
  ASSERT_TRUE(info.ok()) << info.describe();
  TempDir cache;
  auto d = start_daemon(cache.path());
  auto r = d->udm({"create", "upd", "--table", "0 " + s->sectors + " update " + s->t.file("sys.img") + " " + spec + " 0"});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = d->udm({"wait", "upd", "--timeout", "120"});
  ASSERT_TRUE(r.ok()) << r.describe();
  auto [done, total] = progress(*d, "upd");
  EXPECT_EQ(done, total);
  ASSERT_TRUE(d->udm({"remove", "upd"}).ok());
  EXPECT_EQ(d->stop(), 0);
  EXPECT_TRUE(read_file(s->t.file("sys.img")) == s->new_img) << "the system file is not the new image";
  const std::string key = "sha256:" + hex;
  const std::string id = remote::sha256_hex(std::span(reinterpret_cast<const uint8_t*>(key.data()), key.size()));
  auto files = state_files(cache.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0], cache.path() + "/" + id + ".overlay");
  EXPECT_EQ(recorded(files[0], true), total);
}

}  // namespace
}  // namespace udm::test
