// ZFile reads through io/block_cache.h: concurrent readers of the same
// blocks decode each one once (single flight), sequential small reads are
// served by read-ahead, and closing an image drops its blocks.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "obd_test_util.h"
#include "overlaybd/writer.h"

namespace udm::obd::test {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes compress(const Bytes& in, ZAlgo a, uint32_t bs) {
  auto out = std::make_shared<MemGrowFile>();
  ZFileWriteOptions o;
  o.algo = a;
  o.block_size = bs;
  auto sink = zfile_sink(out, o);
  EXPECT_TRUE(sink->write(in).ok());
  EXPECT_TRUE(sink->finish().ok());
  return out->contents();
}

// Compressible but not trivial: random bytes with runs of zeros.
Bytes content(size_t n, uint64_t seed) {
  Bytes b = udm::test::random_bytes(n, seed);
  for (size_t i = 0; i < n; i += 4096) std::memset(b.data() + i, 0, 2048);
  return b;
}

// Eight threads read 512-byte slices of every block, in the same order, at
// the same time: each block is decompressed exactly once, by a read or by
// read-ahead (BlockCache's misses count loads; a reader that finds a block
// in flight waits for it).
TEST(ZFileCache, ConcurrentReadersDecodeEachBlockOnce) {
  const uint32_t bs = 64 << 10;
  const Bytes raw = content(4 << 20, 7);
  auto cache = std::make_shared<BlockCache>(64 << 20);
  auto z = ZFileDevice::open(mem(compress(raw, ZAlgo::kZstd, bs)), cache);
  ASSERT_TRUE(z.ok()) << z.status().to_string();
  const uint64_t nblocks = raw.size() / bs;
  std::atomic<int> bad{0};
  std::vector<std::thread> th;
  for (int t = 0; t < 8; t++) {
    th.emplace_back([&, t] {
      Bytes got(512);
      for (uint64_t b = 0; b < nblocks; b++) {
        uint64_t off = b * bs + 512 * ((b + t) % (bs / 512));
        if (!(*z)->read(off, got).ok() || std::memcmp(got.data(), raw.data() + off, 512) != 0) bad++;
      }
    });
  }
  for (auto& x : th) x.join();
  EXPECT_EQ(bad.load(), 0);
  auto st = cache->stats();
  EXPECT_EQ(st.misses, nblocks) << "hits " << st.hits << " waits " << st.waits;
  // The image's own counts: every read found its block or decoded it; some
  // were decoded by read-ahead (which the image does not count as misses).
  EXPECT_EQ((*z)->cache_hits() + (*z)->cache_misses(), 8 * nblocks);
  EXPECT_LE((*z)->cache_misses(), nblocks);
}

// Sequential 4 KiB reads of a 4 KiB-block ZFile: after the first two reads
// every block has been decompressed ahead into the cache.
TEST(ZFileCache, SequentialSmallReadsAreServedByReadAhead) {
  const Bytes raw = content(2 << 20, 8);
  auto cache = std::make_shared<BlockCache>(64 << 20);
  auto z = ZFileDevice::open(mem(compress(raw, ZAlgo::kLz4, 4096)), cache);
  ASSERT_TRUE(z.ok()) << z.status().to_string();
  Bytes got(4096);
  const uint64_t reads = raw.size() / 4096;
  for (uint64_t i = 0; i < reads; i++) {
    ASSERT_TRUE((*z)->read(i * 4096, got).ok());
    ASSERT_EQ(0, std::memcmp(got.data(), raw.data() + i * 4096, 4096)) << "read " << i;
  }
  EXPECT_EQ((*z)->cache_hits() + (*z)->cache_misses(), reads);
  EXPECT_EQ((*z)->cache_misses(), 2u);
  // Random whole-block reads do not read ahead and never touch the cache.
  auto before = cache->stats();
  for (uint64_t i = 0; i < 64; i++) {
    uint64_t b = (i * 37) % reads;
    ASSERT_TRUE((*z)->read(b * 4096, got).ok());
    ASSERT_EQ(0, std::memcmp(got.data(), raw.data() + b * 4096, 4096));
  }
  auto after = cache->stats();
  EXPECT_EQ(after.hits, before.hits);
  EXPECT_EQ(after.misses, before.misses);
}

// An image's blocks leave the cache when it is closed; another image's stay.
TEST(ZFileCache, ClosingAnImageDropsItsBlocks) {
  const Bytes raw = content(1 << 20, 9);
  const Bytes zbytes = compress(raw, ZAlgo::kLz4, 16 << 10);
  auto cache = std::make_shared<BlockCache>(64 << 20);
  auto a = ZFileDevice::open(mem(zbytes), cache);
  auto b = ZFileDevice::open(mem(zbytes), cache);
  ASSERT_TRUE(a.ok() && b.ok());
  Bytes got(100);
  for (uint64_t off = 0; off < raw.size(); off += 16 << 10) {
    ASSERT_TRUE((*a)->read(off + 1, got).ok());
    ASSERT_TRUE((*b)->read(off + 1, got).ok());
    ASSERT_EQ(0, std::memcmp(got.data(), raw.data() + off + 1, got.size()));
  }
  // Two owners: the same blocks cached twice, not shared between images.
  EXPECT_EQ(cache->stats().bytes, 2 * raw.size());
  a->reset();
  EXPECT_EQ(cache->stats().bytes, raw.size());
  b->reset();
  EXPECT_EQ(cache->stats().bytes, 0u);
}

}  // namespace
}  // namespace udm::obd::test
