// `udm prefetch NAME`: a background job (device/background_job.h) that fills
// the persistent cache of a device's remote sources, so it can go offline.
// Against nginx on 127.0.0.1: start throttled, pause holds, resume at full
// speed, `udm wait` returns 0, the job and the source's counters agree, then
// nginx is stopped and every byte still reads right through the FUSE file.
// Refusals: no remote source, a bad throttle, a cache capped below the blob.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "remote_util.h"
#include "servers.h"

namespace udm::test {
namespace {

nlohmann::json prefetch_job(const TestDaemon& d, const std::string& name, nlohmann::json* info_out = nullptr) {
  auto r = d.udm({"info", name, "--json"});
  EXPECT_TRUE(r.ok()) << r.describe();
  auto info = nlohmann::json::parse(r.out);
  if (info_out) *info_out = info;
  for (auto& j : info["jobs"])
    if (j["kind"] == "remote-prefetch") return j;
  return nullptr;
}

TEST(RemotePrefetch, FillsTheCacheThenServesWithTheServerGone) {
  if (!is_root()) GTEST_SKIP() << "needs root (FUSE)";
  TempDir t;
  const std::string pub = public_dir(t);
  // 6 MiB + 9 sectors: the last cache block is partial.
  const size_t size = (6u << 20) + 9 * 512;
  std::vector<uint8_t> data(size);
  std::mt19937_64 rng(7);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  { std::ofstream(pub + "/disk.img", std::ios::binary).write(reinterpret_cast<const char*>(data.data()), long(size)); }
  ::chmod((pub + "/disk.img").c_str(), 0644);
  std::string err;
  auto ngx = Nginx::start(pub, &err);
  if (!ngx) GTEST_SKIP() << err;
  const std::string url = ngx->url("disk.img");
  TempDir cache;
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false, {"--cache-dir", cache.path(), "--cache-size", "1G"});
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  ASSERT_TRUE(d->udm({"create", "r", "--table", "0 " + std::to_string(size / 512) + " linear " + url + " 0"}).ok());
  ASSERT_TRUE(d->udm({"create", "plain", "--table", "0 8 zero"}).ok());

  // Refusals, each naming what is wrong; nothing starts.
  auto bad = d->udm({"prefetch", "plain"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("no remote source"), std::string::npos) << bad.describe();
  bad = d->udm({"prefetch", "r", "--throttle", "fast"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("throttle"), std::string::npos) << bad.describe();
  bad = d->udm({"prefetch", "r", "--pause"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("no prefetch was started"), std::string::npos) << bad.describe();
  EXPECT_TRUE(prefetch_job(*d, "r").is_null());

  // Throttled to 1 MiB/s: running, and well short of done after a moment.
  auto st = d->udm({"prefetch", "r", "--throttle", "1"});
  ASSERT_TRUE(st.ok()) << st.describe();
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  auto j = prefetch_job(*d, "r");
  ASSERT_FALSE(j.is_null());
  EXPECT_EQ(j["source"], url);
  EXPECT_EQ(j["unit"], "blocks");
  EXPECT_EQ(j["throttle"], "1");
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), size);
  EXPECT_TRUE(j["state"] == "running" || j["state"] == "throttled") << j.dump();
  EXPECT_LT(j["done_bytes"].get<uint64_t>(), size) << j.dump();
  // udm wait with a short timeout: 2 (not done yet).
  EXPECT_EQ(d->udm({"wait", "r", "--timeout", "0.2"}).exit_code, 2);

  // Pause holds.
  ASSERT_TRUE(d->udm({"prefetch", "r", "--pause"}).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto p1 = prefetch_job(*d, "r");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto p2 = prefetch_job(*d, "r");
  EXPECT_EQ(p2["state"], "paused") << p2.dump();
  EXPECT_TRUE(p2["paused"].get<bool>());
  EXPECT_EQ(p1["done"], p2["done"]) << "a paused prefetch moved";

  // Resume (still throttled), then stop: the run ends where it is, the job stays listed.
  ASSERT_TRUE(d->udm({"prefetch", "r", "--resume"}).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto rs = prefetch_job(*d, "r");
  EXPECT_NE(rs["state"], "paused") << rs.dump();
  ASSERT_TRUE(d->udm({"prefetch", "r", "--stop"}).ok());
  auto s1 = prefetch_job(*d, "r");
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  auto s2 = prefetch_job(*d, "r");
  EXPECT_EQ(s1["done"], s2["done"]) << "a stopped prefetch moved";
  EXPECT_LT(s2["done_bytes"].get<uint64_t>(), size);
  EXPECT_EQ(d->udm({"wait", "r", "--timeout", "0.2"}).exit_code, 2);

  // Start again at full speed; udm wait returns 0 when it is done.
  ASSERT_TRUE(d->udm({"prefetch", "r", "--throttle", "off"}).ok());
  auto w = d->udm({"wait", "r", "--timeout", "60"});
  EXPECT_EQ(w.exit_code, 0) << w.describe();
  nlohmann::json info;
  j = prefetch_job(*d, "r", &info);
  EXPECT_EQ(j["state"], "done") << j.dump();
  EXPECT_EQ(j["done_bytes"], j["total_bytes"]);
  EXPECT_EQ(j["done"], j["total"]);
  ASSERT_EQ(info["sources"].size(), 1u) << info.dump();
  EXPECT_EQ(info["sources"][0]["bytes_cached"].get<uint64_t>(), size) << info.dump();
  EXPECT_EQ(info["sources"][0]["bytes_fetched"].get<uint64_t>(), size + 1) << "fetched more than once (probe: 1 byte)";
  // A second start has nothing to fetch and finishes at once.
  ASSERT_TRUE(d->udm({"prefetch", "r"}).ok());
  EXPECT_EQ(d->udm({"wait", "r", "--timeout", "10"}).exit_code, 0);

  // The server goes away: every byte still reads right.
  ngx.reset();
  ASSERT_TRUE(wait_for_file(d->fuse_path("r")));
  std::vector<uint8_t> back(size);
  {
    std::ifstream in(d->fuse_path("r"), std::ios::binary);
    in.read(reinterpret_cast<char*>(back.data()), long(size));
    ASSERT_EQ(size_t(in.gcount()), size);
  }
  expect_same(back, data, "device read with the server stopped");
  ASSERT_TRUE(d->udm({"remove", "r"}).ok());
  EXPECT_EQ(d->stop(), 0);
}

TEST(RemotePrefetch, RefusedWhenTheCacheCannotHoldTheSource) {
  TempDir t;
  const std::string pub = public_dir(t);
  std::vector<uint8_t> data(2u << 20, 0x5a);
  { std::ofstream(pub + "/big.img", std::ios::binary).write(reinterpret_cast<const char*>(data.data()), long(data.size())); }
  ::chmod((pub + "/big.img").c_str(), 0644);
  std::string err;
  auto ngx = Nginx::start(pub, &err);
  if (!ngx) GTEST_SKIP() << err;
  TempDir cache;
  auto d = TestDaemon::start(false, false, {"--cache-dir", cache.path(), "--cache-size", "1M"});
  ASSERT_TRUE(d->udm({"create", "r", "--table", "0 4096 linear " + ngx->url("big.img") + " 0"}).ok());
  auto r = d->udm({"prefetch", "r"});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("larger than the cache's cap"), std::string::npos) << r.describe();
  EXPECT_TRUE(prefetch_job(*d, "r").is_null());
  EXPECT_EQ(d->stop(), 0);
}

}  // namespace
}  // namespace udm::test
