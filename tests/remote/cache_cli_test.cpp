// `udm cache ls|verify|evict` (src/remote/cache_admin.h) on a cache filled by
// real sources: nginx (a plain URL) and docker-registry (an OCI blob). What
// the verbs report is compared with what the sources cached; damage made by
// hand (a flipped byte in a blob, a punched block under a set bit) is found
// and dropped, and reads through the source are right afterwards; eviction
// leaves only blocks that read right with the server gone; a daemon that
// owns the directory makes verify/evict refuse, naming its PID, while ls
// still works.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>

#include "remote/cache_store.h"
#include "remote_util.h"

namespace udm::test {
namespace {

CmdResult cache(std::vector<std::string> args, const std::string& dir) {
  std::vector<std::string> argv{udm_bin(), "cache"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--cache-dir");
  argv.push_back(dir);
  return run(argv);
}

nlohmann::json ls(const std::string& dir) {
  auto r = cache({"ls", "--json"}, dir);
  EXPECT_TRUE(r.ok()) << r.describe();
  return nlohmann::json::parse(r.out, nullptr, false);
}

nlohmann::json find_obj(const nlohmann::json& l, const std::string& kind) {
  for (auto& o : l["objects"])
    if (o["kind"] == kind) return o;
  return nullptr;
}

// The sources: a 5 MiB + 3000 B file on nginx, a 2 MiB + 100 B blob in the registry.
struct Sources {
  TempDir www, t, cache;
  std::unique_ptr<Nginx> ngx;
  std::unique_ptr<Registry> reg;
  std::vector<uint8_t> file, blob;
  std::string hex, skip;
  Sources() {
    public_dir(www);
    file = random_bytes((5u << 20) + 3000, 31);
    write_file(www.file("disk.img"), file);
    ::chmod(www.file("disk.img").c_str(), 0644);
    ngx = Nginx::start(www.path(), &skip);
    if (!ngx) return;
    reg = Registry::start(false, 0, &skip);
    if (!reg) return;
    blob = random_bytes((2u << 20) + 100, 32);
    write_file(t.file("blob"), blob);
    hex = reg->push_blob("test/img", t.file("blob"));
  }
  std::string url() const { return ngx->url("disk.img"); }
  std::string spec() const { return "oci://" + reg->authority() + "/test/img@sha256:" + hex; }
};

// Reads [off, off+len) of a source opened now (its cache store released on return).
Status read_range(const std::string& spec, uint64_t off, std::vector<uint8_t>& out) {
  auto d = remote::open_remote(spec, false);
  if (!d.ok()) return d.status();
  return (*d)->read(off, out);
}

TEST(RemoteCacheCli, LsVerifyReportWhatTheSourcesCachedAndDropDamage) {
  Sources s;
  if (!s.reg) GTEST_SKIP() << s.skip;
  ASSERT_EQ(s.hex.size(), 64u);
  set_remote(s.cache.path());
  uint64_t url_blocks = 0;  // HttpDevice::bytes_cached() counts whole blocks
  const uint64_t bs = remote::RemoteConfig{}.block_size;  // the cache's blocks
  const uint64_t last_len = s.file.size() % bs;  // 3000: the URL's last block is short
  {
    auto u = remote::open_remote(s.url(), false);
    ASSERT_TRUE(u.ok()) << u.status().message();
    std::vector<uint8_t> head(1u << 20), tail(1000);
    ASSERT_TRUE((*u)->read(0, head).ok());
    ASSERT_TRUE((*u)->read(s.file.size() - 1000, tail).ok());
    url_blocks = as_http(*u)->bytes_cached() / bs;
    auto b = remote::open_remote(s.spec(), false);
    ASSERT_TRUE(b.ok()) << b.status().message();
    std::vector<uint8_t> all(s.blob.size());
    ASSERT_TRUE((*b)->read(0, all).ok());
    ASSERT_NE(as_http(*b)->stats_json().find("\"verified\":true"), std::string::npos);
  }  // sources closed: the directory's lock is free
  ASSERT_GT(url_blocks, 1u);
  ASSERT_LT(url_blocks, s.file.size() / bs);
  const uint64_t url_cached = url_blocks * bs - (bs - last_len);  // the short last block was read

  auto l = ls(s.cache.path());
  ASSERT_FALSE(l.is_discarded());
  EXPECT_TRUE(l["owner"].is_null()) << l.dump(2);
  ASSERT_EQ(l["objects"].size(), 2u) << l.dump(2);
  EXPECT_TRUE(l["damaged"].empty()) << l.dump(2);
  auto bo = find_obj(l, "blob"), uo = find_obj(l, "url");
  ASSERT_FALSE(bo.is_null());
  ASSERT_FALSE(uo.is_null());
  EXPECT_EQ(bo["digest"], "sha256:" + s.hex);
  EXPECT_EQ(bo["size"].get<uint64_t>(), s.blob.size());
  EXPECT_EQ(bo["bytes_cached"].get<uint64_t>(), s.blob.size());
  EXPECT_EQ(bo["blocks_cached"], bo["blocks"]);
  EXPECT_EQ(bo["blocks"].get<uint64_t>(), (s.blob.size() + bs - 1) / bs);
  EXPECT_EQ(bo["verified"], true);
  EXPECT_EQ(bo["pinned_blocks"], 0);
  EXPECT_EQ(uo["url"], s.url());
  EXPECT_EQ(uo["validator"].get<std::string>().rfind("etag ", 0), 0u) << uo.dump();
  EXPECT_EQ(uo["size"].get<uint64_t>(), s.file.size());
  EXPECT_EQ(uo["bytes_cached"].get<uint64_t>(), url_cached);
  EXPECT_EQ(uo["verified"], false);
  EXPECT_EQ(uo["blocks_cached"].get<uint64_t>(), url_blocks);
  EXPECT_EQ(l["total_bytes_cached"].get<uint64_t>(), s.blob.size() + url_cached);
  EXPECT_LE(std::llabs(int64_t(::time(nullptr)) - bo["last_use_unix"].get<int64_t>()), 600);
  EXPECT_GE(bo["disk_bytes"].get<uint64_t>(), s.blob.size());  // the data is really there
  // The text listing names both.
  auto txt = cache({"ls"}, s.cache.path());
  ASSERT_TRUE(txt.ok()) << txt.describe();
  EXPECT_NE(txt.out.find("sha256:" + s.hex), std::string::npos) << txt.out;
  EXPECT_NE(txt.out.find(s.url()), std::string::npos) << txt.out;
  EXPECT_NE(txt.out.find(bo["id"].get<std::string>().substr(0, 12)), std::string::npos) << txt.out;

  // A clean cache verifies: the blob against its digest, the URL's blocks against the data file.
  auto v = cache({"verify", "--json"}, s.cache.path());
  ASSERT_TRUE(v.ok()) << v.describe();
  auto vj = nlohmann::json::parse(v.out);
  EXPECT_EQ(vj["bad"], 0);
  for (auto& o : vj["objects"]) EXPECT_EQ(o["status"], o["key"] == "sha256:" + s.hex ? "ok" : "partial") << o.dump();

  // One flipped byte in the cached blob: verify fails, drops the copy, and the
  // source then reads the right bytes (fetched again), never the flipped one.
  std::string bdata = s.cache.file(bo["id"].get<std::string>() + ".data");
  {
    int fd = ::open(bdata.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    uint8_t x = uint8_t(s.blob[1234567] ^ 0x5a);
    ASSERT_EQ(::pwrite(fd, &x, 1, 1234567), 1);
    ::close(fd);
  }
  v = cache({"verify", "sha256:" + s.hex}, s.cache.path());
  EXPECT_EQ(v.exit_code, 1) << v.describe();
  EXPECT_NE(v.out.find("does not match its digest"), std::string::npos) << v.describe();
  EXPECT_NE(v.err.find("bad data"), std::string::npos) << v.describe();
  l = ls(s.cache.path());
  bo = find_obj(l, "blob");
  EXPECT_EQ(bo["blocks_cached"], 0) << bo.dump();
  EXPECT_EQ(bo["verified"], false) << bo.dump();
  EXPECT_EQ(find_obj(l, "url")["bytes_cached"].get<uint64_t>(), url_cached) << "verify of one object touched another";
  std::vector<uint8_t> b(4096);
  ASSERT_TRUE(read_range(s.spec(), 1234567 - 100, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), s.blob.begin() + 1234567 - 100));

  // A block whose bit is set but whose bytes were punched out: dropped by
  // verify (its id given as the prefix ls shows), then fetched again.
  std::string udata = s.cache.file(uo["id"].get<std::string>() + ".data");
  {
    int fd = ::open(udata.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(bs), off_t(bs)), 0);  // block 1
    ::close(fd);
  }
  v = cache({"verify", uo["id"].get<std::string>().substr(0, 12)}, s.cache.path());
  EXPECT_EQ(v.exit_code, 1) << v.describe();
  EXPECT_NE(v.out.find("had no data"), std::string::npos) << v.describe();
  l = ls(s.cache.path());
  EXPECT_EQ(find_obj(l, "url")["blocks_cached"].get<uint64_t>(), url_blocks - 1) << l.dump(2);
  EXPECT_EQ(find_obj(l, "url")["bytes_cached"].get<uint64_t>(), url_cached - bs) << l.dump(2);
  b.assign(bs, 0);
  ASSERT_TRUE(read_range(s.url(), bs, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), s.file.begin() + long(bs)));
  // Now clean again.
  v = cache({"verify"}, s.cache.path());
  EXPECT_TRUE(v.ok()) << v.describe();

  // Damaged files: a state file with a bad header and a data file without
  // its state file are listed by ls, removed by verify (exit 1).
  // Files the store did not name are not its business: listed nowhere, never removed.
  write_file(s.cache.file("notes.data"), std::vector<uint8_t>(10, 2));
  write_file(s.cache.file("mine.state"), std::vector<uint8_t>(10, 3));
  std::string junk(64, 'a');
  write_file(s.cache.file(junk + ".state"), std::vector<uint8_t>(5000, 7));
  write_file(s.cache.file(std::string(64, 'b') + ".data"), std::vector<uint8_t>(10, 1));
  // ... and a valid object under a name that is not its key's hash (misfiled).
  std::string misfiled(64, 'c');
  write_file(s.cache.file(misfiled + ".state"), read_file(s.cache.file(uo["id"].get<std::string>() + ".state")));
  write_file(s.cache.file(misfiled + ".data"), read_file(udata));
  l = ls(s.cache.path());
  EXPECT_EQ(l["damaged"].size(), 3u) << l.dump(2);
  EXPECT_NE(l.dump().find("misfiled"), std::string::npos) << l.dump(2);
  EXPECT_EQ(l["objects"].size(), 2u) << l.dump(2);
  v = cache({"verify"}, s.cache.path());
  EXPECT_EQ(v.exit_code, 1) << v.describe();
  EXPECT_NE(v.out.find("removed"), std::string::npos) << v.describe();
  EXPECT_TRUE(ls(s.cache.path())["damaged"].empty());
  EXPECT_NE(::access(s.cache.file(junk + ".state").c_str(), F_OK), 0);
  EXPECT_EQ(::access(s.cache.file("notes.data").c_str(), F_OK), 0) << "verify removed a file it did not make";
  EXPECT_EQ(::access(s.cache.file("mine.state").c_str(), F_OK), 0) << "verify removed a file it did not make";
  EXPECT_NE(::access(s.cache.file(misfiled + ".state").c_str(), F_OK), 0);
  EXPECT_NE(::access(s.cache.file(misfiled + ".data").c_str(), F_OK), 0);
  EXPECT_EQ(ls(s.cache.path())["objects"].size(), 2u);
}

TEST(RemoteCacheCli, EvictObjectsAllAndDownToASize) {
  Sources s;
  if (!s.reg) GTEST_SKIP() << s.skip;
  ASSERT_EQ(s.hex.size(), 64u);
  set_remote(s.cache.path());
  {
    auto u = remote::open_remote(s.url(), false);
    ASSERT_TRUE(u.ok()) << u.status().message();
    std::vector<uint8_t> all(s.file.size());
    ASSERT_TRUE((*u)->read(0, all).ok());
    auto b = remote::open_remote(s.spec(), false);
    ASSERT_TRUE(b.ok()) << b.status().message();
    std::vector<uint8_t> ball(s.blob.size());
    ASSERT_TRUE((*b)->read(0, ball).ok());
  }
  const uint64_t bs = remote::RemoteConfig{}.block_size;  // the cache's blocks
  const uint64_t file_blocks = (s.file.size() + bs - 1) / bs, blob_blocks = (s.blob.size() + bs - 1) / bs;
  auto l = ls(s.cache.path());
  ASSERT_EQ(l["total_bytes_cached"].get<uint64_t>(), s.file.size() + s.blob.size()) << l.dump(2);
  // The blob was used last: touch the URL's state file into the past so the order is certain.
  std::string uid = find_obj(l, "url")["id"], bid = find_obj(l, "blob")["id"];
  {
    struct timespec ts[2] = {{::time(nullptr) - 3600, 0}, {::time(nullptr) - 3600, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, s.cache.file(uid + ".state").c_str(), ts, 0), 0);
  }

  // Bad arguments: a clear error, nothing changed.
  auto bad = cache({"evict"}, s.cache.path());
  EXPECT_EQ(bad.exit_code, 2) << bad.describe();
  EXPECT_NE(bad.err.find("exactly one of"), std::string::npos) << bad.describe();
  bad = cache({"evict", "--all", "--to", "1M"}, s.cache.path());
  EXPECT_EQ(bad.exit_code, 2) << bad.describe();
  bad = cache({"evict", "--to", "lots"}, s.cache.path());
  EXPECT_EQ(bad.exit_code, 2) << bad.describe();
  EXPECT_NE(bad.err.find("--to"), std::string::npos) << bad.describe();
  bad = cache({"evict", "sha256:" + std::string(64, '0'), "sha256:" + s.hex}, s.cache.path());
  EXPECT_EQ(bad.exit_code, 1) << bad.describe();
  EXPECT_NE(bad.err.find("no such object"), std::string::npos) << bad.describe();
  bad = cache({"evict", "not-a-key"}, s.cache.path());
  EXPECT_NE(bad.exit_code, 0) << bad.describe();
  EXPECT_NE(bad.err.find("not a cached object's key"), std::string::npos) << bad.describe();
  bad = cache({"ls"}, s.cache.file("nowhere"));
  EXPECT_EQ(bad.exit_code, 1) << bad.describe();
  EXPECT_NE(bad.err.find(s.cache.file("nowhere")), std::string::npos) << bad.describe();
  {  // a directory no cache ever used (no DIR/lock): refused, untouched
    TempDir other;
    write_file(other.file(std::string(64, 'd') + ".data"), std::vector<uint8_t>(10, 1));
    for (auto verb : {std::vector<std::string>{"ls"}, std::vector<std::string>{"verify"},
                      std::vector<std::string>{"evict", "--all"}}) {
      bad = cache(verb, other.path());
      EXPECT_EQ(bad.exit_code, 1) << bad.describe();
      EXPECT_NE(bad.err.find("not a udm cache directory"), std::string::npos) << bad.describe();
    }
    EXPECT_EQ(::access(other.file(std::string(64, 'd') + ".data").c_str(), F_OK), 0);
    EXPECT_NE(::access(other.file("lock").c_str(), F_OK), 0) << "a refused verb created DIR/lock";
  }
  EXPECT_EQ(ls(s.cache.path())["total_bytes_cached"].get<uint64_t>(), s.file.size() + s.blob.size())
      << "a refused evict changed the cache";

  // Down to a size: the least recently used object (the URL) loses blocks
  // from its middle first; the blob is kept whole.
  uint64_t target = blob_blocks * bs + 10 * bs;
  auto e = cache({"evict", "--to", std::to_string(target), "--json"}, s.cache.path());
  ASSERT_TRUE(e.ok()) << e.describe();
  auto ej = nlohmann::json::parse(e.out);
  EXPECT_LE(ej["bytes_cached_after"].get<uint64_t>(), target) << e.out;
  EXPECT_GT(ej["bytes_cached_after"].get<uint64_t>(), target - bs) << "evicted more than needed: " << e.out;
  l = ls(s.cache.path());
  auto uo = find_obj(l, "url"), bo = find_obj(l, "blob");
  EXPECT_EQ(bo["blocks_cached"].get<uint64_t>(), blob_blocks) << l.dump(2);
  EXPECT_EQ(bo["verified"], true);
  EXPECT_EQ(uo["blocks_cached"].get<uint64_t>(), 10u) << l.dump(2);
  EXPECT_LE(l["total_bytes_cached"].get<uint64_t>(), target);
  const std::string url = s.url();
  // Every block still marked cached holds the right bytes (checked in the
  // files themselves), the ends of the URL object were kept, and the blob
  // reads whole from the cache with the registry gone.
  {
    auto state = read_file(s.cache.file(uid + ".state"));
    auto data = read_file(s.cache.file(uid + ".data"));
    ASSERT_EQ(data.size(), s.file.size());
    ASSERT_GE(state.size(), 4096 + (file_blocks + 7) / 8);
    uint64_t set = 0;
    for (uint64_t blk = 0; blk < file_blocks; blk++) {
      if (!((state[4096 + blk / 8] >> (blk % 8)) & 1)) continue;
      set++;
      uint64_t off = blk * bs, n = std::min<uint64_t>(bs, s.file.size() - off);
      EXPECT_TRUE(std::equal(data.begin() + long(off), data.begin() + long(off + n), s.file.begin() + long(off)))
          << "block " << blk << " is marked cached but holds other bytes";
    }
    EXPECT_EQ(set, 10u);
    EXPECT_TRUE(state[4096] & 1) << "block 0 (where headers live) evicted before the middle";
    EXPECT_TRUE((state[4096 + (file_blocks - 1) / 8] >> ((file_blocks - 1) % 8)) & 1) << "the last block evicted before the middle";
  }
  const std::string spec = s.spec();
  s.reg.reset();
  {
    std::vector<uint8_t> all(s.blob.size());
    ASSERT_TRUE(read_range(spec, 0, all).ok());
    expect_same(all, s.blob, "blob from the cache after evict --to");
  }

  // One object by its id prefix, then everything: files gone, ls empty.
  e = cache({"evict", bid.substr(0, 10)}, s.cache.path());
  ASSERT_TRUE(e.ok()) << e.describe();
  EXPECT_NE(e.out.find("sha256:" + s.hex), std::string::npos) << e.out;
  EXPECT_NE(::access(s.cache.file(bid + ".data").c_str(), F_OK), 0);
  EXPECT_NE(::access(s.cache.file(bid + ".state").c_str(), F_OK), 0);
  l = ls(s.cache.path());
  ASSERT_EQ(l["objects"].size(), 1u) << l.dump(2);
  EXPECT_EQ(l["objects"][0]["kind"], "url");
  write_file(s.cache.file("README"), std::vector<uint8_t>(10, 4));
  e = cache({"evict", "--all"}, s.cache.path());
  ASSERT_TRUE(e.ok()) << e.describe();
  EXPECT_EQ(::access(s.cache.file("README").c_str(), F_OK), 0) << "evict --all removed a file it did not make";
  l = ls(s.cache.path());
  EXPECT_TRUE(l["objects"].empty()) << l.dump(2);
  EXPECT_EQ(l["total_bytes_cached"], 0);
  EXPECT_NE(::access(s.cache.file(uid + ".data").c_str(), F_OK), 0);
  // Nothing left to evict by name: a clear error.
  bad = cache({"evict", url}, s.cache.path());
  EXPECT_EQ(bad.exit_code, 1) << bad.describe();
  EXPECT_NE(bad.err.find("no such object"), std::string::npos) << bad.describe();
}

TEST(RemoteCacheCli, VerifyAndEvictRefuseWhileADaemonOwnsTheCache) {
  Sources s;
  if (!s.ngx) GTEST_SKIP() << s.skip;
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(false, false, {"--cache-dir", s.cache.path(), "--cache-size", "1G"});
  } catch (const std::exception& ex) {
    GTEST_SKIP() << "daemon not available: " << ex.what();
  }
  uint64_t sectors = s.file.size() / 512;
  auto c = d->udm({"create", "r", "--readonly", "--table", "0 " + std::to_string(sectors) + " linear " + s.url() + " 0"});
  ASSERT_TRUE(c.ok()) << c.describe();  // the daemon's first remote source: it owns the directory now
  // Some data cached through the daemon (its control socket has no read verb: read the device with dd? no FUSE here;
  // the open's probe and the object's creation are enough for ls).
  auto l = ls(s.cache.path());
  ASSERT_FALSE(l["owner"].is_null()) << l.dump(2);
  EXPECT_EQ(l["owner"]["pid"].get<int>(), d->pid) << l.dump(2);
  EXPECT_NE(l["owner"]["command"].get<std::string>().find("daemon"), std::string::npos) << l.dump(2);
  ASSERT_EQ(l["objects"].size(), 1u) << l.dump(2);
  EXPECT_TRUE(l["objects"][0]["pinned_blocks"].is_null()) << "pins live in the daemon's memory: unknown here";
  EXPECT_EQ(l["objects"][0]["url"], s.url());
  auto txt = cache({"ls"}, s.cache.path());
  EXPECT_NE(txt.out.find("in use by pid " + std::to_string(d->pid)), std::string::npos) << txt.describe();
  for (auto verb : {std::vector<std::string>{"evict", "--all"}, std::vector<std::string>{"verify"},
                    std::vector<std::string>{"evict", "--to", "0"}}) {
    auto r = cache(verb, s.cache.path());
    EXPECT_EQ(r.exit_code, 1) << verb[0] << ": " << r.describe();
    EXPECT_NE(r.err.find("in use by pid " + std::to_string(d->pid)), std::string::npos) << r.describe();
  }
  EXPECT_EQ(ls(s.cache.path())["objects"].size(), 1u) << "a refused verb changed the cache";
  // The daemon still works from its cache after the refusals (it kept the lock).
  auto info = d->udm({"info", "r", "--json"});
  ASSERT_TRUE(info.ok()) << info.describe();
  EXPECT_NE(info.out.find("\"persistent\": true"), std::string::npos) << info.out;
  // Once the daemon is gone the directory is free: evict works.
  EXPECT_EQ(d->stop(), 0);
  d.reset();
  l = ls(s.cache.path());
  EXPECT_TRUE(l["owner"].is_null()) << l.dump(2);
  EXPECT_EQ(l["objects"][0]["pinned_blocks"], 0);
  auto e = cache({"evict", "--all"}, s.cache.path());
  EXPECT_TRUE(e.ok()) << e.describe();
  EXPECT_TRUE(ls(s.cache.path())["objects"].empty());
}

}  // namespace
}  // namespace udm::test
