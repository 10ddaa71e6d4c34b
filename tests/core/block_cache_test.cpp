#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "io/block_cache.h"

using namespace udm;

namespace {
std::vector<uint8_t> block_of(uint8_t v, size_t n = 4096) { return std::vector<uint8_t>(n, v); }
}  // namespace

TEST(BlockCache, DecodesOnceForConcurrentReaders) {
  BlockCache c(1 << 20);
  std::atomic<int> loads{0};
  std::vector<std::thread> th;
  std::vector<BlockCache::Block> got(8);
  for (int i = 0; i < 8; i++)
    th.emplace_back([&, i] {
      auto b = c.get(1, 42, [&]() -> Result<std::vector<uint8_t>> {
        loads++;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        return block_of(7);
      });
      ASSERT_TRUE(b.ok());
      got[i] = *b;
    });
  for (auto& t : th) t.join();
  EXPECT_EQ(loads.load(), 1);
  for (auto& g : got) {
    ASSERT_TRUE(g);
    EXPECT_EQ(*g, block_of(7));
    EXPECT_EQ(g.get(), got[0].get()) << "readers share one decoded copy";
  }
  auto st = c.stats();
  EXPECT_EQ(st.misses, 1u);
  EXPECT_EQ(st.hits + st.waits, 7u);
}

TEST(BlockCache, FailedLoadReachesWaitersAndIsRetried) {
  BlockCache c(1 << 20);
  std::atomic<int> loads{0};
  std::vector<std::thread> th;
  std::atomic<int> errors{0};
  for (int i = 0; i < 4; i++)
    th.emplace_back([&] {
      auto b = c.get(1, 1, [&]() -> Result<std::vector<uint8_t>> {
        loads++;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        return IoError("bad chunk");
      });
      if (!b.ok() && b.status().code() == EIO) errors++;
    });
  for (auto& t : th) t.join();
  EXPECT_EQ(errors.load(), 4);
  EXPECT_LE(loads.load(), 4);
  auto b = c.get(1, 1, [&]() -> Result<std::vector<uint8_t>> { return block_of(1); });
  ASSERT_TRUE(b.ok()) << "an error is not cached";
  EXPECT_EQ(**b, block_of(1));
}

TEST(BlockCache, BoundedLruOwnersAndDrop) {
  BlockCache c(16 * 4096 * 16);  // 16 blocks of 4 KiB per shard, 16 shards
  for (uint64_t i = 0; i < 2000; i++)
    ASSERT_TRUE(c.get(1, i, [&]() -> Result<std::vector<uint8_t>> { return block_of(uint8_t(i)); }).ok());
  auto st = c.stats();
  EXPECT_LE(st.bytes, c.capacity());
  EXPECT_GT(st.evictions, 0u);
  // Recently used blocks stay; other owners do not collide.
  EXPECT_TRUE(c.peek(1, 1999));
  EXPECT_FALSE(c.peek(2, 1999));
  c.put(2, 1999, std::make_shared<const std::vector<uint8_t>>(block_of(9)));
  EXPECT_EQ(*c.peek(2, 1999), block_of(9));
  EXPECT_EQ(*c.peek(1, 1999), block_of(uint8_t(1999)));
  c.drop_owner(1);
  EXPECT_FALSE(c.peek(1, 1999));
  EXPECT_TRUE(c.peek(2, 1999));
}
