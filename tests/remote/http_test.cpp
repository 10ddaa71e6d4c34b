// http:// sources against nginx and the fault server: every byte checked
// against the file, requests counted from the servers' own logs.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "remote_util.h"

namespace udm::test {
namespace {

struct NginxFixture {
  TempDir www, cache;
  std::unique_ptr<Nginx> ngx;
  std::vector<uint8_t> data;
  std::string skip;
  explicit NginxFixture(size_t size, uint64_t seed = 1) {
    public_dir(www);
    data = random_bytes(size, seed);
    write_file(www.file("disk.img"), data);
    ::chmod(www.file("disk.img").c_str(), 0644);
    ngx = Nginx::start(www.path(), &skip);
  }
};

Result<DevicePtr> open_url(const std::string& u) { return remote::open_remote(u, false); }

TEST(RemoteHttp, RandomRangesMatchTheFile) {
  NginxFixture f((5u << 20) + 12345);
  if (!f.ngx) GTEST_SKIP() << f.skip;
  set_remote(f.cache.path());
  auto d = open_url(f.ngx->url("disk.img"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ((*d)->size(), f.data.size());
  EXPECT_TRUE((*d)->caps().read_only);
  std::mt19937_64 rng(7);
  std::vector<std::pair<uint64_t, uint64_t>> cases = {{0, 1}, {f.data.size() - 1, 1}, {0, f.data.size()},
                                                      {(128u << 10) - 1, 2}, {f.data.size() - 5000, 5000}};
  for (int i = 0; i < 300; i++) {
    uint64_t len = 1 + rng() % (i % 3 == 0 ? 600000 : 9000);
    uint64_t off = rng() % (f.data.size() - len + 1);
    cases.push_back({off, len});
  }
  for (auto [off, len] : cases) {
    std::vector<uint8_t> buf(len);
    ASSERT_TRUE((*d)->read(off, buf).ok()) << off << "+" << len;
    ASSERT_TRUE(std::equal(buf.begin(), buf.end(), f.data.begin() + long(off))) << "bytes differ at " << off << "+" << len;
  }
  std::vector<uint8_t> past(1);
  EXPECT_EQ((*d)->read(f.data.size(), past).code(), EINVAL);
  EXPECT_EQ((*d)->write(0, past).code(), EROFS);
  // Every request was one exact range inside the object, answered 206.
  auto log = f.ngx->log();
  ASSERT_FALSE(log.empty());
  for (auto& h : log) {
    EXPECT_EQ(h.status, 206) << h.range;
    uint64_t a = 0, b = 0;
    ASSERT_EQ(sscanf(h.range.c_str(), "bytes=%lu-%lu", &a, &b), 2) << h.range;
    EXPECT_LT(b, f.data.size()) << h.range;
    EXPECT_EQ(h.bytes, b - a + 1) << h.range;
  }
  auto s = as_http(*d);
  EXPECT_EQ(s->bytes_cached(), f.data.size());
  EXPECT_LE(s->stats().bytes_fetched.load(), f.data.size() + 1);  // each byte fetched once (+ the 1-byte probe)
}

TEST(RemoteHttp, ReopenFetchesNothingAgain) {
  NginxFixture f(3u << 20, 2);
  if (!f.ngx) GTEST_SKIP() << f.skip;
  // Cached with 128 KiB blocks (an earlier udm's default), reopened with the
  // default: the copy keeps its block size and is used as it is.
  auto cfg = set_remote(f.cache.path());
  cfg.block_size = 128u << 10;
  remote::set_config(cfg);
  {
    auto d = open_url(f.ngx->url("disk.img"));
    ASSERT_TRUE(d.ok()) << d.status().message();
    std::vector<uint8_t> all(f.data.size());
    ASSERT_TRUE((*d)->read(0, all).ok());
    expect_same(all, f.data, "first pass");
  }
  f.ngx->clear_log();
  set_remote(f.cache.path());
  ASSERT_NE(remote::config().block_size, 128u << 10);
  auto d = open_url(f.ngx->url("disk.img"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(as_http(*d)->bytes_cached(), f.data.size());
  std::vector<uint8_t> all(f.data.size());
  ASSERT_TRUE((*d)->read(0, all).ok());
  expect_same(all, f.data, "after reopen");
  auto log = f.ngx->log();
  ASSERT_EQ(log.size(), 1u);  // only the open's validation probe
  EXPECT_EQ(log[0].range, "bytes=0-0");
  EXPECT_EQ(log[0].bytes, 1u);
  EXPECT_EQ(as_http(*d)->stats().bytes_fetched.load(), 1u);
  // A changed object (new ETag and size) is a different cache entry: fetched afresh, never the old bytes.
  auto changed = random_bytes(f.data.size() + 4096, 3);
  write_file(f.www.file("disk.img"), changed);
  auto d2 = open_url(f.ngx->url("disk.img"));
  ASSERT_TRUE(d2.ok());
  std::vector<uint8_t> all2(changed.size());
  ASSERT_TRUE((*d2)->read(0, all2).ok());
  expect_same(all2, changed, "changed object");
  // The first device still expects the old object: its next miss is refused, not mixed.
}

TEST(RemoteHttp, SingleFlightCoalescingAndReadahead) {
  TempDir www, cache;
  auto data = random_bytes(8u << 20, 4);
  write_file(www.file("img"), data);
  write_file(www.file("img2"), data);
  std::string err;
  auto fs = FaultServer::start(www.path(), &err);
  if (!fs) GTEST_SKIP() << err;
  set_remote(cache.path());
  fs->get("/_set?delay_ms=300");
  auto d = open_url(fs->url("slow", "img"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  fs->get("/_reset");
  // 8 readers of the same block at once: one request.
  std::vector<std::thread> th;
  std::atomic<int> bad{0};
  for (int i = 0; i < 8; i++)
    th.emplace_back([&, i] {
      std::vector<uint8_t> b(4096);
      if (!(*d)->read(1000000 + i * 16, b).ok() ||
          !std::equal(b.begin(), b.end(), data.begin() + 1000000 + i * 16))
        bad++;
    });
  for (auto& t : th) t.join();
  EXPECT_EQ(bad.load(), 0);
  auto st = nlohmann::json::parse(fs->get("/_stats"));
  EXPECT_EQ(st["requests"]["slow"].get<int>(), 1) << st.dump();
  // One read over 8 missing blocks: one request.
  fs->get("/_reset");
  fs->get("/_set?delay_ms=0");
  std::vector<uint8_t> big(1u << 20);
  ASSERT_TRUE((*d)->read(2u << 20, big).ok());
  EXPECT_TRUE(std::equal(big.begin(), big.end(), data.begin() + (2u << 20)));
  st = nlohmann::json::parse(fs->get("/_stats"));
  EXPECT_EQ(st["requests"]["slow"].get<int>(), 1) << st.dump();
  // Sequential 64 KiB reads over 4 MiB: readahead makes far fewer requests than blocks (32).
  fs->get("/_reset");
  for (uint64_t off = 4u << 20; off < (8u << 20); off += 65536) {
    std::vector<uint8_t> b(65536);
    ASSERT_TRUE((*d)->read(off, b).ok());
    ASSERT_TRUE(std::equal(b.begin(), b.end(), data.begin() + long(off)));
  }
  st = nlohmann::json::parse(fs->get("/_stats"));
  EXPECT_LE(st["requests"]["slow"].get<int>(), 8) << st.dump();
  EXPECT_EQ(st["data_bytes"].get<uint64_t>(), 4u << 20) << st.dump();
  // Sequential 256 KiB reads (a reader that reads ahead itself, as the
  // kernel's page cache does): no readahead, not a byte past what was read.
  auto d2 = open_url(fs->url("slow", "img2"));
  ASSERT_TRUE(d2.ok()) << d2.status().message();
  fs->get("/_reset");
  for (uint64_t off = 0; off < (2u << 20); off += 256u << 10) {
    std::vector<uint8_t> b(256u << 10);
    ASSERT_TRUE((*d2)->read(off, b).ok());
    ASSERT_TRUE(std::equal(b.begin(), b.end(), data.begin() + long(off)));
  }
  st = nlohmann::json::parse(fs->get("/_stats"));
  EXPECT_EQ(st["requests"]["slow"].get<int>(), 8) << st.dump();
  EXPECT_EQ(st["data_bytes"].get<uint64_t>(), 2u << 20) << st.dump();
}

TEST(RemoteHttp, CacheCapRespected) {
  NginxFixture f(6u << 20, 5);
  if (!f.ngx) GTEST_SKIP() << f.skip;
  const uint64_t cap = 1u << 20;
  set_remote(f.cache.path(), cap);
  auto d = open_url(f.ngx->url("disk.img"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::vector<uint8_t> all(f.data.size());
  for (uint64_t off = 0; off < all.size(); off += 256 << 10)
    ASSERT_TRUE((*d)->read(off, std::span(all).subspan(off, 256 << 10)).ok());
  expect_same(all, f.data, "read through a 1 MiB cache");
  EXPECT_LE(as_http(*d)->bytes_cached(), cap);
  auto du = run({"du", "-s", "-B1", f.cache.path()});
  ASSERT_TRUE(du.ok());
  uint64_t used = std::stoull(du.out);
  EXPECT_LE(used, cap + (256u << 10)) << "cache directory holds " << used << " bytes";
  // Evicted blocks come back correct.
  std::vector<uint8_t> again(f.data.size());
  ASSERT_TRUE((*d)->read(0, again).ok());
  expect_same(again, f.data, "re-read after eviction");
}

// ------------------------------------------------------------ faults

struct FaultFixture {
  TempDir www, cache;
  std::vector<uint8_t> data;
  std::unique_ptr<FaultServer> fs;
  std::string skip;
  FaultFixture() {
    data = random_bytes(1u << 20, 6);
    write_file(www.file("img"), data);
    fs = FaultServer::start(www.path(), &skip);
  }
  // Opens MODE/img and reads [off, off+len): the status; the bytes are never wrong on OK.
  Status read(const std::string& mode, uint64_t off, uint64_t len, std::string* url = nullptr) {
    std::string u = fs->url(mode, "img");
    if (url) *url = u;
    auto d = open_url(u);
    if (!d.ok()) return d.status();
    std::vector<uint8_t> b(len);
    Status st = (*d)->read(off, b);
    if (st.ok()) {
      EXPECT_TRUE(std::equal(b.begin(), b.end(), data.begin() + long(off))) << mode << ": wrong bytes";
    }
    return st;
  }
};

TEST(RemoteFault, RetriedFaultsRecover) {
  FaultFixture f;
  if (!f.fs) GTEST_SKIP() << f.skip;
  set_remote(f.cache.path());
  // Connection dropped mid-body twice, then served.
  EXPECT_TRUE(f.read("drop", 300000, 200000).ok());
  auto st = nlohmann::json::parse(f.fs->get("/_stats"));
  EXPECT_EQ(st["drop_done"].get<int>(), 2);
  // 503 + Retry-After: 1, twice: the retry waits at least the second.
  f.fs->get("/_reset");
  EXPECT_TRUE(f.read("busy", 0, 4096).ok());
  st = nlohmann::json::parse(f.fs->get("/_stats"));
  auto& log = st["log"];
  ASSERT_GE(log.size(), 3u) << st.dump();
  EXPECT_EQ(log[0][2].get<int>(), 503);
  EXPECT_GE(log[1][3].get<double>() - log[0][3].get<double>(), 0.95) << "Retry-After not honoured";
  // A redirect to an expiring URL: after expiry (403) the origin is asked again.
  f.fs->get("/_reset");
  f.fs->get("/_set?ttl=1");
  auto d = open_url(f.fs->url("redirect", "img"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::vector<uint8_t> b(4096);
  ASSERT_TRUE((*d)->read(200000, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), f.data.begin() + 200000));
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  ASSERT_TRUE((*d)->read(700000, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), f.data.begin() + 700000));
  st = nlohmann::json::parse(f.fs->get("/_stats"));
  EXPECT_GE(st["requests"]["redirect"].get<int>(), 2) << st.dump();
  bool saw403 = false;
  for (auto& e : st["log"]) saw403 |= e[2].get<int>() == 403;
  EXPECT_TRUE(saw403) << st.dump();
}

TEST(RemoteFault, BadRepliesAreErrorsNamingTheUrl) {
  FaultFixture f;
  if (!f.fs) GTEST_SKIP() << f.skip;
  set_remote(f.cache.path(), 1ull << 30, 1);
  struct Case {
    const char* mode;
    const char* says;
  } cases[] = {{"full200", "ignores Range"},
               {"full200data", "answered 200"},
               {"badrange", "Content-Range"},
               {"short", "truncated"},
               {"etag", "ETag changed"},
               {"stall", "gave up"}};
  for (auto& c : cases) {
    std::string url;
    Status st = f.read(c.mode, 100000, 50000, &url);
    EXPECT_FALSE(st.ok()) << c.mode;
    EXPECT_NE(st.message().find(url), std::string::npos) << c.mode << ": " << st.message();
    EXPECT_NE(st.message().find(c.says), std::string::npos) << c.mode << ": " << st.message();
  }
  Status nf = remote::open_remote(f.fs->url("ok", "missing"), false).status();
  EXPECT_EQ(nf.code(), ENOENT) << nf.message();
  // Nothing wrong was cached: a correct server later serves the same object afresh.
  EXPECT_TRUE(f.read("ok", 100000, 50000).ok());
}

TEST(RemoteFault, OnErrorFailAndQueue) {
  FaultFixture f;
  if (!f.fs) GTEST_SKIP() << f.skip;
  set_remote(f.cache.path(), 1ull << 30, 2);
  auto d = open_url(f.fs->url("down", "img"));
  ASSERT_TRUE(d.ok());
  f.fs->get("/_set?down=1");
  std::vector<uint8_t> b(4096);
  Status st = (*d)->read(0, b);
  EXPECT_EQ(st.code(), EIO);
  EXPECT_NE(st.message().find("gave up after 2 retries"), std::string::npos) << st.message();
  EXPECT_EQ(as_http(*d)->stats().retries.load(), 2u);
  // queue: the read waits, the state says so, and it completes once the server is back.
  auto c = set_remote(f.cache.path(), 1ull << 30, 1);
  c.on_error = remote::OnError::kQueue;
  remote::set_config(c);
  f.fs->get("/_set?down=0");
  auto q = open_url(f.fs->url("down", "img"));
  ASSERT_TRUE(q.ok());
  f.fs->get("/_set?down=1");
  std::atomic<bool> done{false};
  Status qst;
  std::thread t([&] {
    qst = (*q)->read(500000, b);
    done = true;
  });
  auto http = as_http(*q);
  for (int i = 0; i < 200 && http->stats().waiting.load() == 0; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_EQ(http->stats().waiting.load(), 1);
  EXPECT_NE(http->stats_json().find("\"state\":\"waiting\""), std::string::npos) << http->stats_json();
  EXPECT_FALSE(done.load());
  f.fs->get("/_set?down=0");
  t.join();
  EXPECT_TRUE(qst.ok()) << qst.message();
  EXPECT_TRUE(std::equal(b.begin(), b.end(), f.data.begin() + 500000));
  EXPECT_NE(http->stats_json().find("\"state\":\"ok\""), std::string::npos) << http->stats_json();
}

// The operator's messages to a source whose server stopped answering
// (`udm message NAME SECTOR source ...`, HttpDevice::source_message):
// retry skips the queue's wait, release fails the waiting fetch with EIO,
// on-error switches the policy (fail releases what waits). Never wrong bytes.
TEST(RemoteFault, QueuedFetchRetryReleaseAndPolicyMessages) {
  using Clock = std::chrono::steady_clock;
  FaultFixture f;
  if (!f.fs) GTEST_SKIP() << f.skip;
  auto c = set_remote(f.cache.path(), 1ull << 30, 1);
  c.on_error = remote::OnError::kQueue;
  c.retry_max_ms = 20000;  // the queue's wait: far longer than any step below
  remote::set_config(c);
  const std::string url = f.fs->url("down", "img");
  auto q = open_url(url);
  ASSERT_TRUE(q.ok()) << q.status().message();
  auto http = as_http(*q);
  auto json = [&] { return nlohmann::json::parse(http->stats_json()); };
  EXPECT_EQ(json()["on_error"], "queue");
  // Starts a read of 4 KiB at off with the server down; returns once the fetch waits.
  struct Reader {
    std::thread t;
    Status st;
    std::vector<uint8_t> buf = std::vector<uint8_t>(4096);
    std::atomic<bool> done{false};
  };
  auto start_read = [&](Reader& r, uint64_t off) {
    r.t = std::thread([&r, &q, off] {
      r.st = (*q)->read(off, r.buf);
      r.done = true;
    });
    auto limit = Clock::now() + std::chrono::seconds(10);
    while (http->stats().waiting.load() == 0 && Clock::now() < limit)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  };
  f.fs->get("/_set?down=1");

  // retry: the waiting fetch asks again at once (not after the 20 s wait) and completes.
  {
    Reader r;
    start_read(r, 300000);
    ASSERT_EQ(http->stats().waiting.load(), 1);
    auto j = json();
    EXPECT_EQ(j["state"], "waiting");
    EXPECT_EQ(j["waiting"], 1);
    EXPECT_NE(j["last_error"].get<std::string>().find("503"), std::string::npos) << j.dump();
    f.fs->get("/_set?down=0");
    auto t0 = Clock::now();
    auto m = remote::source_message(url, {"retry"});
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_NE(m->find("1 fetch(es) (1 waiting)"), std::string::npos) << *m;
    r.t.join();
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5)) << "retry did not skip the queue's wait";
    ASSERT_TRUE(r.st.ok()) << r.st.message();
    EXPECT_TRUE(std::equal(r.buf.begin(), r.buf.end(), f.data.begin() + 300000));
    EXPECT_EQ(json()["state"], "ok");
    EXPECT_EQ(json()["retrying"], 0);
  }
  // retry while the server is still down: the fetch goes back to waiting.
  // release: it fails with EIO naming the URL and range; the bytes read later are right.
  {
    f.fs->get("/_set?down=1");
    Reader r;
    start_read(r, 600000);
    ASSERT_EQ(http->stats().waiting.load(), 1);
    uint64_t req = http->stats().requests.load();
    ASSERT_TRUE(remote::source_message(url, {"retry"}).ok());
    auto limit = Clock::now() + std::chrono::seconds(5);
    while (http->stats().requests.load() == req && Clock::now() < limit)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_GT(http->stats().requests.load(), req) << "retry sent no request";
    EXPECT_FALSE(r.done.load());
    auto m = remote::source_message(url, {"release"});
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_NE(m->find("released: 1 fetch(es)"), std::string::npos) << *m;
    r.t.join();
    EXPECT_EQ(r.st.code(), EIO) << r.st.message();
    EXPECT_NE(r.st.message().find(f.fs->url("down", "img") + ": bytes"), std::string::npos) << r.st.message();
    EXPECT_NE(r.st.message().find("released by the operator"), std::string::npos) << r.st.message();
    auto j = json();
    EXPECT_EQ(j["state"], "ok");
    EXPECT_EQ(j["released"], 1);
    EXPECT_EQ(j["on_error"], "queue");
    f.fs->get("/_set?down=0");
    std::vector<uint8_t> b(4096);
    ASSERT_TRUE((*q)->read(600000, b).ok());
    EXPECT_TRUE(std::equal(b.begin(), b.end(), f.data.begin() + 600000));
  }
  // on-error fail: the waiting fetch fails at once; new fetches give up after the retries.
  // on-error queue: they wait again.
  {
    f.fs->get("/_set?down=1");
    Reader r;
    start_read(r, 800000);
    ASSERT_EQ(http->stats().waiting.load(), 1);
    auto m = remote::source_message(url, {"on-error", "fail"});
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_NE(m->find("1 waiting fetch(es) released"), std::string::npos) << *m;
    r.t.join();
    EXPECT_EQ(r.st.code(), EIO);
    EXPECT_NE(r.st.message().find("on-error switched to fail"), std::string::npos) << r.st.message();
    EXPECT_EQ(json()["on_error"], "fail");
    std::vector<uint8_t> b(4096);
    Status st = (*q)->read(900000, b);
    EXPECT_EQ(st.code(), EIO);
    EXPECT_NE(st.message().find("gave up after 1 retries"), std::string::npos) << st.message();
    ASSERT_TRUE(remote::source_message(url, {"on-error", "queue"}).ok());
    Reader r2;
    start_read(r2, 900000);
    EXPECT_EQ(http->stats().waiting.load(), 1);
    f.fs->get("/_set?down=0");
    ASSERT_TRUE(remote::source_message(url, {"retry"}).ok());
    r2.t.join();
    ASSERT_TRUE(r2.st.ok()) << r2.st.message();
    EXPECT_TRUE(std::equal(r2.buf.begin(), r2.buf.end(), f.data.begin() + 900000));
  }
  // Bad words: EINVAL naming them; nothing changes.
  for (const std::vector<std::string>& bad : std::vector<std::vector<std::string>>{
           {}, {"bogus"}, {"retry", "now"}, {"release", "x"}, {"on-error"}, {"on-error", "maybe"}, {"on-error", "fail", "x"}}) {
    auto m = http->source_message(bad);
    EXPECT_EQ(m.status().code(), EINVAL) << (bad.empty() ? "(none)" : bad[0]);
    EXPECT_NE(m.status().message().find(url), std::string::npos) << m.status().message();
  }
  EXPECT_NE(http->source_message({"bogus"}).status().message().find("unknown message 'bogus'"), std::string::npos);
  EXPECT_NE(http->source_message({"on-error", "maybe"}).status().message().find("maybe"), std::string::npos);
  EXPECT_EQ(json()["on_error"], "queue");
  EXPECT_EQ(remote::source_message(f.fs->url("down", "other"), {"retry"}).status().code(), ENOENT);
}

}  // namespace
}  // namespace udm::test
