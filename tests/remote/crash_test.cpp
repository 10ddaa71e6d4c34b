// SIGKILL a reader in the middle of fetches (the slow fault server keeps
// several in flight), then reopen the same cache: every byte correct, and
// the blocks that were durable are not fetched again; `udm cache verify`'s
// check finds no set bit without its data.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "remote/cache_admin.h"
#include "remote_util.h"

namespace udm::test {
namespace {

TEST(RemoteCrash, SigkillDuringFetchesThenEveryByteCorrect) {
  TempDir www, cache;
  auto data = random_bytes(4u << 20, 8);
  write_file(www.file("img"), data);
  std::string err;
  auto fs = FaultServer::start(www.path(), &err);
  if (!fs) GTEST_SKIP() << err;
  fs->get("/_set?delay_ms=15");
  std::string url = fs->url("slow", "img");
  std::string reader = std::string(REMOTE_READER_BIN);
  for (int round = 0; round < 3; round++) {
    // Four readers on one cache would fight over its lock: one process at a time, killed at a random moment.
    TempDir out;
    Proc p({reader, url, cache.path(), std::to_string(round + 1)}, out.file("log"));
    for (int i = 0; i < 400; i++) {
      auto log = sh("grep -c read " + out.file("log") + " 2>/dev/null");
      if (log.ok() && std::stoi(log.out) >= 5 + round * 7) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(p.pid(), SIGKILL);
    p.stop();
  }
  // What the kills left passes `udm cache verify` (every set bit has its data; nothing dropped or removed).
  {
    auto v = remote::verify_cache(cache.path(), {});
    ASSERT_TRUE(v.ok()) << v.status().message();
    EXPECT_EQ((*v)["bad"], 0) << v->dump(2);
    ASSERT_EQ((*v)["objects"].size(), 1u) << v->dump(2);
    EXPECT_EQ((*v)["objects"][0]["blocks_dropped"], 0) << v->dump(2);
  }
  // The cache holds some blocks, all correct.
  remote::RemoteConfig c = set_remote(cache.path());
  c.block_size = 64u << 10;
  remote::set_config(c);
  // The server may still be answering the killed readers' last requests (15 ms each): let them finish before counting.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  fs->get("/_reset");
  auto d = remote::open_remote(url, false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  auto h = as_http(*d);
  uint64_t cached = h->bytes_cached();
  EXPECT_GT(cached, 0u);
  std::vector<uint8_t> all(data.size());
  ASSERT_TRUE((*d)->read(0, all).ok());
  expect_same(all, data, "after SIGKILLs");
  auto st = nlohmann::json::parse(fs->get("/_stats"));
  EXPECT_EQ(st["data_bytes"].get<uint64_t>(), data.size() - cached) << "refetched blocks that were cached";
}

}  // namespace
}  // namespace udm::test
