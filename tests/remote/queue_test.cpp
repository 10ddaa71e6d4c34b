// `udm message NAME SECTOR source ...` through the daemon: a linear device
// over the fault server's "down" mode, the daemon run with
// --remote-on-error queue. A read through the FUSE file (direct_io: each
// pread reaches the device once) waits while the server answers 503; `udm
// info --json` says so per source; `source retry` (server back) completes it
// at once, `source release` fails it with EIO, `source on-error fail`
// releases it too and makes later fetches fail; bad words and a segment
// without a remote source are clear errors. Every byte read is the file's.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "remote_util.h"
#include "servers.h"

namespace udm::test {
namespace {

using Clock = std::chrono::steady_clock;

// A pread of 4 KiB on its own thread; the errno on failure.
struct FuseRead {
  std::thread t;
  ssize_t n = -2;
  int err = 0;
  std::vector<uint8_t> buf = std::vector<uint8_t>(4096);
  std::atomic<bool> done{false};
  void start(const std::string& path, uint64_t off) {
    t = std::thread([this, path, off] {
      int fd = ::open(path.c_str(), O_RDONLY);
      if (fd < 0) {
        err = errno;
      } else {
        n = ::pread(fd, buf.data(), buf.size(), off_t(off));
        if (n < 0) err = errno;
        ::close(fd);
      }
      done = true;
    });
  }
  ~FuseRead() {
    if (t.joinable()) t.join();
  }
};

TEST(RemoteQueue, MessagesRetryReleaseAndSwitchPolicyThroughTheDaemon) {
  if (!is_root()) GTEST_SKIP() << "needs root (FUSE)";
  TempDir www, cache;
  const std::vector<uint8_t> data = [] {
    std::vector<uint8_t> v(2u << 20);
    uint64_t x = 88172645463325252ull;
    for (auto& b : v) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      b = uint8_t(x);
    }
    return v;
  }();
  write_file(www.file("img"), data);
  std::string err;
  auto fs = FaultServer::start(www.path(), &err);
  if (!fs) GTEST_SKIP() << err;
  const std::string url = fs->url("down", "img");
  std::unique_ptr<TestDaemon> d;
  try {
    d = TestDaemon::start(true, false,
                          {"--cache-dir", cache.path(), "--remote-on-error", "queue", "--remote-retries", "1"});
  } catch (const std::exception& e) {
    GTEST_SKIP() << "daemon with FUSE export not available: " << e.what();
  }
  const std::string sectors = std::to_string(data.size() / 512);
  ASSERT_TRUE(d->udm({"create", "r", "--table", "0 " + sectors + " linear " + url + " 0"}).ok());
  ASSERT_TRUE(d->udm({"create", "z", "--table", "0 8 zero"}).ok());
  ASSERT_TRUE(wait_for_file(d->fuse_path("r")));
  auto source = [&] {
    auto r = d->udm({"info", "r", "--json"});
    EXPECT_TRUE(r.ok()) << r.describe();
    auto j = nlohmann::json::parse(r.out);
    return j["sources"][0];
  };
  auto wait_waiting = [&] {
    auto limit = Clock::now() + std::chrono::seconds(15);
    nlohmann::json s;
    while (Clock::now() < limit) {
      s = source();
      if (s["state"] == "waiting") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return s;
  };
  auto message = [&](std::vector<std::string> words) {
    std::vector<std::string> a = {"message", "r", "0", "source"};
    a.insert(a.end(), words.begin(), words.end());
    return d->udm(a);
  };
  EXPECT_EQ(source()["on_error"], "queue");
  fs->get("/_set?down=1");

  // 1. Waiting, visible per source; server back + retry: done at once (the
  // queue retries only every 5 s), with the file's bytes.
  {
    FuseRead r;
    r.start(d->fuse_path("r"), 300000);
    auto s = wait_waiting();
    ASSERT_EQ(s["state"], "waiting") << s.dump();
    EXPECT_GE(s["waiting"].get<int>(), 1) << s.dump();
    EXPECT_NE(s["last_error"].get<std::string>().find("503"), std::string::npos) << s.dump();
    EXPECT_FALSE(r.done.load());
    fs->get("/_set?down=0");
    auto t0 = Clock::now();
    auto m = message({"retry"});
    ASSERT_TRUE(m.ok()) << m.describe();
    EXPECT_NE(m.out.find(url + ": retrying now: "), std::string::npos) << m.out;
    r.t.join();
    EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(3000)) << "retry did not skip the 5 s wait";
    ASSERT_EQ(r.n, 4096) << strerror(r.err);
    EXPECT_TRUE(std::equal(r.buf.begin(), r.buf.end(), data.begin() + 300000));
    EXPECT_EQ(source()["state"], "ok");
  }
  // 2. release (naming the URI): the read fails with EIO; later, with the
  // server back, the same bytes read right.
  {
    fs->get("/_set?down=1");
    FuseRead r;
    r.start(d->fuse_path("r"), 700000);
    ASSERT_EQ(wait_waiting()["state"], "waiting");
    auto m = message({"release", url});
    ASSERT_TRUE(m.ok()) << m.describe();
    EXPECT_NE(m.out.find("released: "), std::string::npos) << m.out;
    r.t.join();
    EXPECT_EQ(r.n, -1);
    EXPECT_EQ(r.err, EIO);
    auto s = source();
    EXPECT_EQ(s["state"], "ok") << s.dump();
    EXPECT_GE(s["released"].get<int>(), 1) << s.dump();
    fs->get("/_set?down=0");
    FuseRead again;
    again.start(d->fuse_path("r"), 700000);
    again.t.join();
    ASSERT_EQ(again.n, 4096) << strerror(again.err);
    EXPECT_TRUE(std::equal(again.buf.begin(), again.buf.end(), data.begin() + 700000));
  }
  // 3. on-error fail: the waiting read fails; a new one fails after its
  // retries instead of waiting; on-error queue: it waits again.
  {
    fs->get("/_set?down=1");
    FuseRead r;
    r.start(d->fuse_path("r"), 1100000);
    ASSERT_EQ(wait_waiting()["state"], "waiting");
    auto m = message({"on-error", "fail"});
    ASSERT_TRUE(m.ok()) << m.describe();
    r.t.join();
    EXPECT_EQ(r.err, EIO);
    EXPECT_EQ(source()["on_error"], "fail");
    FuseRead f2;
    f2.start(d->fuse_path("r"), 1500000);
    f2.t.join();
    EXPECT_EQ(f2.err, EIO);
    ASSERT_TRUE(message({"on-error", "queue"}).ok());
    FuseRead q;
    q.start(d->fuse_path("r"), 1500000);
    ASSERT_EQ(wait_waiting()["state"], "waiting");
    fs->get("/_set?down=0");
    ASSERT_TRUE(message({"retry"}).ok());
    q.t.join();
    ASSERT_EQ(q.n, 4096) << strerror(q.err);
    EXPECT_TRUE(std::equal(q.buf.begin(), q.buf.end(), data.begin() + 1500000));
  }
  // 4. Clear errors, naming what is wrong.
  auto bad = message({"bogus"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("unknown message 'bogus'"), std::string::npos) << bad.describe();
  bad = message({"on-error", "sometimes"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("sometimes"), std::string::npos) << bad.describe();
  bad = message({"retry", "now"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("retry takes no arguments"), std::string::npos) << bad.describe();
  bad = message({"retry", "http://127.0.0.1:1/other"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("is not a backing source"), std::string::npos) << bad.describe();
  bad = d->udm({"message", "r", "99999", "source", "retry"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("beyond the end"), std::string::npos) << bad.describe();
  bad = d->udm({"message", "z", "0", "source", "retry"});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.err.find("has no backing source that takes messages"), std::string::npos) << bad.describe();
  EXPECT_EQ(source()["on_error"], "queue");

  ASSERT_TRUE(d->udm({"remove", "r"}).ok());
  ASSERT_TRUE(d->udm({"remove", "z"}).ok());
  EXPECT_EQ(d->stop(), 0);
}

}  // namespace
}  // namespace udm::test
