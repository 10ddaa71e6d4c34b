// End to end: an ext4 image as a ZFile-compressed LSMT layer, served by nginx, used as
// `lsmt http://...` (zfile-compressed layer) by the daemon, mounted through the FUSE export and a
// loop device; every file compared. Then the daemon restarts on the same
// cache directory and the files are read again with no data fetched
// (nginx's log), and `udm info --json` shows the source's counters.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "remote_util.h"

namespace udm::test {
namespace {

TEST(RemoteE2E, Ext4OnZfileOverHttpThroughFuse) {
  if (!is_root() || !have_tool("mkfs.ext4") || !have_tool("losetup")) GTEST_SKIP() << "needs root, mkfs.ext4, losetup";
  TempDir t, www, cache;
  public_dir(www);
  // A tree of files, an ext4 image made from it, compressed to ZFile.
  std::map<std::string, std::string> sums;
  ::mkdir(t.file("tree").c_str(), 0755);
  ::mkdir(t.file("tree/d").c_str(), 0755);
  for (int i = 0; i < 24; i++) {
    std::string name = (i % 2 ? "d/f" : "f") + std::to_string(i);
    write_file(t.file("tree/" + name), random_bytes(size_t(i) * 23456 + 100, 50 + i));
    sums[name] = sha256_file(t.file("tree/" + name));
  }
  const uint64_t kSize = 64ull << 20;
  make_sparse_file(t.file("fs.raw"), kSize);
  auto r = run({"mkfs.ext4", "-q", "-F", "-d", t.file("tree"), t.file("fs.raw")});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = run({udm_bin(), "overlaybd", "from-raw", t.file("fs.raw"), www.file("fs.zfile"), "-z"});
  ASSERT_TRUE(r.ok()) << r.describe();
  ::chmod(www.file("fs.zfile").c_str(), 0644);
  std::string err;
  auto ngx = Nginx::start(www.path(), &err);
  if (!ngx) GTEST_SKIP() << err;
  std::string table = "0 " + std::to_string(kSize / 512) + " lsmt " + ngx->url("fs.zfile");
  uint64_t zsize = read_file(www.file("fs.zfile")).size();
  uint64_t first_fetch = 0;
  for (int pass = 0; pass < 2; pass++) {
    ngx->clear_log();
    std::unique_ptr<TestDaemon> d;
    try {
      d = TestDaemon::start(true, false, {"--cache-dir", cache.path(), "--cache-size", "1G"});
    } catch (const std::exception& e) {
      GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
    }
    auto c = d->udm({"create", "rfs", "--readonly", "--table", table});
    ASSERT_TRUE(c.ok()) << c.describe();
    ASSERT_TRUE(wait_for_file(d->fuse_path("rfs")));
    {
      LoopDevice loop(d->fuse_path("rfs"), true);
      ASSERT_FALSE(loop.device().empty()) << loop.error();
      std::string mnt = t.file("mnt");
      ::mkdir(mnt.c_str(), 0755);
      Mount m(loop.device(), mnt, "ro,noload");
      ASSERT_TRUE(m.ok()) << m.error();
      for (auto& [name, sum] : sums) EXPECT_EQ(sha256_file(mnt + "/" + name), sum) << name;
    }
    auto info = d->udm({"info", "rfs", "--json"});
    ASSERT_TRUE(info.ok()) << info.describe();
    auto j = nlohmann::json::parse(info.out);
    ASSERT_TRUE(j.contains("sources")) << info.out;
    auto& s = j["sources"][0];
    EXPECT_EQ(s["url"], ngx->url("fs.zfile"));
    EXPECT_EQ(s["state"], "ok");
    EXPECT_EQ(s["errors"], 0);
    uint64_t data_bytes = 0;
    for (auto& h : ngx->log())
      if (h.range != "bytes=0-0") data_bytes += h.bytes;
    if (pass == 0) {
      first_fetch = data_bytes;
      EXPECT_GT(data_bytes, 0u);
      EXPECT_LE(data_bytes, zsize);
      EXPECT_EQ(s["bytes_fetched"].get<uint64_t>(), data_bytes + 1) << info.out;
    } else {
      EXPECT_EQ(data_bytes, 0u) << "refetched after a daemon restart (first run fetched " << first_fetch << ")";
      EXPECT_EQ(s["bytes_fetched"].get<uint64_t>(), 1u) << info.out;
      EXPECT_GT(s["cache_hits"].get<uint64_t>(), 0u) << info.out;
    }
    ASSERT_TRUE(d->udm({"remove", "rfs"}).ok());
    EXPECT_EQ(d->stop(), 0);
  }
  // Bad specs: clear errors naming the URL.
  auto d = TestDaemon::start(false, false, {"--cache-dir", cache.path()});
  auto c = d->udm({"create", "bad", "--table", "0 8 linear " + ngx->url("missing.img") + " 0"});
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.err.find(ngx->url("missing.img")), std::string::npos) << c.describe();
  c = d->udm({"create", "bad2", "--table", "0 8 linear http://127.0.0.1:" + std::to_string(free_port()) + "/x 0"});
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(d->stop(), 0);
}

// The daemon's --remote-ca: a device over https:// (nginx with TLS + HTTP/2 and
// a throwaway CA) read whole through the FUSE export and compared; `udm info
// --json` says HTTP/2. A daemon without --remote-ca refuses the same table,
// naming the URL and the certificate.
TEST(RemoteE2E, HttpsWithRemoteCaThroughTheDaemon) {
  TempDir www, cache;
  public_dir(www);
  const uint64_t kSize = 2ull << 20;
  auto data = random_bytes(kSize, 77);
  write_file(www.file("disk.img"), data);
  ::chmod(www.file("disk.img").c_str(), 0644);
  std::string err;
  auto ca = TestCa::make(&err);
  if (!ca) GTEST_SKIP() << err;
  auto ngx = Nginx::start(www.path(), &err, ca.get());
  if (!ngx) GTEST_SKIP() << err;
  std::string url = ngx->url("disk.img");
  std::string table = "0 " + std::to_string(kSize / 512) + " linear " + url + " 0";
  {
    std::unique_ptr<TestDaemon> d;
    try {
      d = TestDaemon::start(true, false, {"--cache-dir", cache.path(), "--remote-ca", ca->ca_pem()});
    } catch (const std::exception& e) {
      GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
    }
    auto c = d->udm({"create", "tls", "--readonly", "--table", table});
    ASSERT_TRUE(c.ok()) << c.describe();
    ASSERT_TRUE(wait_for_file(d->fuse_path("tls")));
    auto got = read_file(d->fuse_path("tls"));
    expect_same(got, data, "https device through FUSE");
    auto info = d->udm({"info", "tls", "--json"});
    ASSERT_TRUE(info.ok()) << info.describe();
    auto j = nlohmann::json::parse(info.out);
    ASSERT_TRUE(j.contains("sources")) << info.out;
    auto& s = j["sources"][0];
    EXPECT_EQ(s["url"], url);
    EXPECT_EQ(s["http_version"], "2") << info.out;
    EXPECT_EQ(s["errors"], 0) << info.out;
    auto log = ngx->log();
    ASSERT_FALSE(log.empty());
    for (auto& h : log) EXPECT_EQ(h.protocol, "HTTP/2.0") << h.range;
    ASSERT_TRUE(d->udm({"remove", "tls"}).ok());
    EXPECT_EQ(d->stop(), 0);
  }
  ngx->clear_log();
  TempDir cache2;  // nothing cached: the daemon must ask the server
  auto d = TestDaemon::start(false, false, {"--cache-dir", cache2.path()});
  auto c = d->udm({"create", "tls2", "--readonly", "--table", table});
  EXPECT_FALSE(c.ok()) << "an https server signed by an unknown CA was accepted";
  EXPECT_NE(c.err.find(url), std::string::npos) << c.describe();
  EXPECT_NE(c.err.find("TLS certificate not accepted"), std::string::npos) << c.describe();
  EXPECT_TRUE(ngx->log().empty());
  EXPECT_EQ(d->stop(), 0);
}

// oci:// over https through the daemon: docker-registry serving TLS itself
// with a test CA's certificate for registry.udm.test, which the daemon's
// --remote-resolve points at 127.0.0.1 and its --remote-ca trusts. The blob
// read whole through FUSE, verified against its digest; `udm cache ls` on
// the daemon's directory while it runs, `udm cache verify` after. A daemon
// without --remote-ca refuses the same table.
TEST(RemoteE2E, OciOverHttpsRegistryThroughTheDaemon) {
  std::string err;
  auto ca = TestCa::make(&err, "registry.udm.test");
  if (!ca) GTEST_SKIP() << err;
  auto reg = Registry::start(false, 0, &err, ca.get());
  if (!reg) GTEST_SKIP() << err;
  TempDir t, cache;
  const uint64_t kSize = (3ull << 20) + 512 * 7;
  auto data = random_bytes(kSize, 78);
  write_file(t.file("blob"), data);
  std::string hex = reg->push_blob("os/layer", t.file("blob"));
  ASSERT_EQ(hex.size(), 64u);
  std::string name = "registry.udm.test:" + std::to_string(reg->port);
  std::string spec = "oci://" + name + "/os/layer@sha256:" + hex;
  std::string table = "0 " + std::to_string(kSize / 512) + " linear " + spec + " 0";
  std::string resolve = name + ":127.0.0.1";
  {
    std::unique_ptr<TestDaemon> d;
    try {
      d = TestDaemon::start(true, false, {"--cache-dir", cache.path(), "--remote-ca", ca->ca_pem(),
                                          "--remote-resolve", resolve});
    } catch (const std::exception& e) {
      GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
    }
    auto c = d->udm({"create", "layer", "--readonly", "--table", table});
    ASSERT_TRUE(c.ok()) << c.describe();
    ASSERT_TRUE(wait_for_file(d->fuse_path("layer")));
    expect_same(read_file(d->fuse_path("layer")), data, "oci:// blob over https through FUSE");
    auto info = d->udm({"info", "layer", "--json"});
    ASSERT_TRUE(info.ok()) << info.describe();
    auto j = nlohmann::json::parse(info.out);
    auto& s = j["sources"][0];
    EXPECT_EQ(s["url"], spec);
    EXPECT_EQ(s["http_version"], "2") << info.out;
    EXPECT_EQ(s["verified"], true) << info.out;
    EXPECT_EQ(s["errors"], 0) << info.out;
    EXPECT_NE(reg->log().find("\"GET /v2/os/layer/blobs/sha256:" + hex + " HTTP/2.0\" 206"), std::string::npos) << reg->log();
    // The daemon owns its cache: ls shows the blob (and the owner), verify is refused.
    auto ls = run({udm_bin(), "cache", "ls", "--json", "--cache-dir", cache.path()});
    ASSERT_TRUE(ls.ok()) << ls.describe();
    auto lj = nlohmann::json::parse(ls.out);
    EXPECT_EQ(lj["owner"]["pid"], d->pid) << ls.out;
    ASSERT_EQ(lj["objects"].size(), 1u) << ls.out;
    EXPECT_EQ(lj["objects"][0]["digest"], "sha256:" + hex);
    EXPECT_EQ(lj["objects"][0]["bytes_cached"].get<uint64_t>(), kSize);
    EXPECT_EQ(lj["objects"][0]["verified"], true);
    auto v = run({udm_bin(), "cache", "verify", "--cache-dir", cache.path()});
    EXPECT_EQ(v.exit_code, 1) << v.describe();
    EXPECT_NE(v.err.find("in use by pid " + std::to_string(d->pid)), std::string::npos) << v.describe();
    ASSERT_TRUE(d->udm({"remove", "layer"}).ok());
    EXPECT_EQ(d->stop(), 0);
  }
  auto v = run({udm_bin(), "cache", "verify", "--cache-dir", cache.path()});
  EXPECT_TRUE(v.ok()) << v.describe();
  EXPECT_NE(v.out.find("content matches its digest"), std::string::npos) << v.describe();
  // Without --remote-ca (and an empty cache, so the daemon must ask): refused, naming the URL.
  TempDir cache2;
  auto d = TestDaemon::start(false, false, {"--cache-dir", cache2.path(), "--remote-resolve", resolve});
  auto c = d->udm({"create", "layer2", "--readonly", "--table", table});
  EXPECT_FALSE(c.ok()) << "a registry signed by an unknown CA was accepted";
  EXPECT_NE(c.err.find("https://" + name + "/v2/os/layer/blobs/sha256:" + hex), std::string::npos) << c.describe();
  EXPECT_NE(c.err.find("TLS certificate not accepted"), std::string::npos) << c.describe();
  EXPECT_EQ(d->stop(), 0);
}

// udm push of a ZFile layer → udm pull → --create → mount: every file, on
// registry 2.8.2 anonymous and with token auth (credentials from a docker
// config.json; the second push is chunked).
TEST(RemoteE2E, PushPullCreateMountOnRegistry) {
  if (!is_root() || !have_tool("mkfs.ext4") || !have_tool("losetup")) GTEST_SKIP() << "needs root, mkfs.ext4, losetup";
  TempDir t;
  std::map<std::string, std::string> sums;
  ::mkdir(t.file("tree").c_str(), 0755);
  for (int i = 0; i < 10; i++) {
    std::string name = "g" + std::to_string(i);
    write_file(t.file("tree/" + name), random_bytes(size_t(i) * 51234 + 7, 80 + i));
    sums[name] = sha256_file(t.file("tree/" + name));
  }
  const uint64_t kSize = 32ull << 20;
  make_sparse_file(t.file("fs.raw"), kSize);
  auto r = run({"mkfs.ext4", "-q", "-F", "-d", t.file("tree"), t.file("fs.raw")});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = run({udm_bin(), "overlaybd", "from-raw", t.file("fs.raw"), t.file("fs.zfile"), "-z"});
  ASSERT_TRUE(r.ok()) << r.describe();
  for (bool token : {false, true}) {
    SCOPED_TRACE(token ? "token auth" : "anonymous");
    std::string err;
    auto reg = Registry::start(token, 300, &err);
    if (!reg) GTEST_SKIP() << err;
    std::ofstream(t.file("auth.json")) << R"({"auths":{")" << reg->authority() << R"(":{"username":"udm","password":"secret"}}})";
    std::string ref = reg->authority() + "/test/img:v1";
    std::vector<std::string> extra = {"--cache-dir", "none"};
    if (token) extra = {"--cache-dir", "none", "--registry-auth", t.file("auth.json"), "--chunk-size", "1M"};
    std::vector<std::string> push = {udm_bin(), "push", ref, t.file("fs.zfile")};
    push.insert(push.end(), extra.begin(), extra.end());
    if (token) {
      // Without credentials the token server grants pull only: the push is refused, clearly.
      auto no = run({udm_bin(), "push", ref, t.file("fs.zfile"), "--cache-dir", "none"});
      EXPECT_FALSE(no.ok());
      EXPECT_NE(no.err.find("401"), std::string::npos) << no.describe();
    }
    r = run(push);
    ASSERT_TRUE(r.ok()) << r.describe();
    std::string digest = r.out.substr(0, r.out.find('\n'));
    EXPECT_EQ(digest.rfind("sha256:", 0), 0u) << r.out;
    EXPECT_NE(r.err.find("pushed sha256:" + sha256_file(t.file("fs.zfile"))), std::string::npos) << r.err;
    r = run(push);  // again: the blob is already there
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_NE(r.err.find("exists sha256:"), std::string::npos) << r.err;
    EXPECT_EQ(r.out.substr(0, r.out.find('\n')), digest);
    std::unique_ptr<TestDaemon> d;
    TempDir cache;
    std::vector<std::string> dargs = {"--cache-dir", cache.path()};
    if (token) dargs = {"--cache-dir", cache.path(), "--registry-auth", t.file("auth.json")};
    try {
      d = TestDaemon::start(true, false, dargs);
    } catch (const std::exception& e) {
      GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
    }
    std::vector<std::string> pull = {udm_bin(), "pull", reg->authority() + "/test/img@" + digest, "--create", "img",
                                     "--socket", d->socket, "--cache-dir", "none"};
    if (token) pull.insert(pull.end(), {"--registry-auth", t.file("auth.json")});
    r = run(pull);
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_NE(r.out.find("0 " + std::to_string(kSize / 512) + " lsmt oci://" + reg->authority() + "/test/img@sha256:"),
              std::string::npos) << r.out;
    ASSERT_TRUE(wait_for_file(d->fuse_path("img")));
    {
      LoopDevice loop(d->fuse_path("img"), true);
      ASSERT_FALSE(loop.device().empty()) << loop.error();
      std::string mnt = t.file("mnt");
      ::mkdir(mnt.c_str(), 0755);
      Mount m(loop.device(), mnt, "ro,noload");
      ASSERT_TRUE(m.ok()) << m.error();
      for (auto& [name, sum] : sums) EXPECT_EQ(sha256_file(mnt + "/" + name), sum) << name;
    }
    ASSERT_TRUE(d->udm({"remove", "img"}).ok());
    EXPECT_EQ(d->stop(), 0);
    // An unknown tag: a clear error naming the manifest URL.
    r = run({udm_bin(), "pull", reg->authority() + "/test/img:nope", "--cache-dir", "none"});
    EXPECT_FALSE(r.ok());
    EXPECT_NE(r.err.find("/v2/test/img/manifests/nope"), std::string::npos) << r.describe();
  }
}

// The update target over a diff on a web server: the device reads as the new
// image at once (blocks fetched as read); `udm update-info URL` works too.
// (The background copy-back over a remote diff: update_copyback_test.cpp.)
TEST(RemoteE2E, UpdateOverHttpDiff) {
  if (!is_root() || !have_tool("mkfs.ext4")) GTEST_SKIP() << "needs root, mkfs.ext4";
  TempDir t, www, cache;
  public_dir(www);
  std::string tree = t.file("tree");
  ASSERT_TRUE(sh("mkdir -p " + tree + " && head -c 3000000 /dev/urandom > " + tree + "/app && seq 1 100000 > " + tree +
                 "/list").ok());
  auto mk = [&](const std::string& img) {
    return run({"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-U",
                "0b5f1e2a-0000-4000-8000-000000000001", "-d", tree, img, "32M"});
  };
  ASSERT_TRUE(mk(t.file("old.img")).ok());
  ASSERT_TRUE(sh("cd " + tree + " && head -c 2000000 /dev/urandom > new-app && dd if=/dev/urandom of=app bs=4096 "
                 "count=10 conv=notrunc status=none").ok());
  ASSERT_TRUE(mk(t.file("new.img")).ok());
  auto r = run({udm_bin(), "update-diff", t.file("old.img"), t.file("new.img"), "-o", www.file("diff.img"), "-a", "zstd"});
  ASSERT_TRUE(r.ok()) << r.describe();
  ::chmod(www.file("diff.img").c_str(), 0644);
  std::string err;
  auto ngx = Nginx::start(www.path(), &err);
  if (!ngx) GTEST_SKIP() << err;
  r = sh("UDM_CACHE_DIR=none " + udm_bin() + " update-info " + ngx->url("diff.img"));
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("zstd"), std::string::npos) << r.out;
  ASSERT_TRUE(sh("cp " + t.file("old.img") + " " + t.file("sys.img")).ok());
  auto d = TestDaemon::start(true, false, {"--cache-dir", cache.path()});
  std::string sectors = std::to_string((32 << 20) / 512);
  r = d->udm({"create", "system", "--table",
              "0 " + sectors + " update " + t.file("sys.img") + " " + ngx->url("diff.img") + " 1 no_bg_update"});
  ASSERT_TRUE(r.ok()) << r.describe();
  ASSERT_TRUE(wait_for_file(d->fuse_path("system")));
  EXPECT_TRUE(run({"cmp", d->fuse_path("system"), t.file("new.img")}).ok()) << "the device does not read as the new image";
  auto info = d->udm({"info", "system", "--json"});
  ASSERT_TRUE(info.ok());
  auto j = nlohmann::json::parse(info.out);
  ASSERT_TRUE(j.contains("sources")) << info.out;
  uint64_t fetched = j["sources"][0]["bytes_fetched"].get<uint64_t>();
  EXPECT_GT(fetched, 0u);
  EXPECT_LE(fetched, read_file(www.file("diff.img")).size() + 1);
  ASSERT_TRUE(d->udm({"remove", "system"}).ok());
  EXPECT_EQ(d->stop(), 0);
  EXPECT_EQ(sha256_file(t.file("sys.img")), sha256_file(t.file("old.img")));  // no_bg_update: nothing copied
}

}  // namespace
}  // namespace udm::test
