// Pinning of format metadata in the persistent cache (BlockDevice::keep_cached,
// CacheObject::pin): pinned blocks survive heavy reads through a cache far
// smaller than the object, and a ZFile's header, trailer and jump table (and
// an LSMT layer's header, index and trailer inside it) stay cached so the
// layer opens again with the server gone.
#include <sys/stat.h>

#include <cstring>
#include <set>

#include "io/grow_file.h"
#include "io/memory_device.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/lsmt_format.h"
#include "overlaybd/writer.h"
#include "overlaybd/zfile_device.h"
#include "remote/cache_store.h"
#include "remote_util.h"

namespace udm::test {
namespace {

// The store alone: a pinned block is never a victim, and goes back to the LRU when unpinned.
TEST(RemotePin, StoreNeverEvictsPinnedBlocks) {
  TempDir cache;
  const uint32_t bs = 4096;
  auto s = remote::CacheStore::open(cache.path(), 3 * bs);  // room for 3 blocks
  ASSERT_TRUE(s.ok() && *s) << s.status().message();
  auto o = (*s)->object("pin-test", 40 * bs, bs);
  ASSERT_TRUE(o.ok()) << o.status().message();
  auto& obj = *o;
  obj->pin(0, 1);  // before it is cached
  std::vector<uint8_t> blk(bs);
  for (uint64_t b = 0; b < 40; b++) {
    std::memset(blk.data(), int(b + 1), bs);
    ASSERT_TRUE(obj->store(b, blk).ok());
    if (b == 20) obj->pin(20, 1);  // after it is cached
  }
  EXPECT_TRUE(obj->present(0));
  EXPECT_TRUE(obj->present(20));
  EXPECT_LE((*s)->used_bytes(), 3u * bs);
  uint64_t others = 0;
  for (uint64_t b = 1; b < 40; b++) others += b != 20 && obj->present(b);
  EXPECT_EQ(others, 1u);  // the cap leaves one block besides the two pinned
  std::vector<uint8_t> got(bs);
  auto r = obj->read_if_present(0, 0, got);
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(got[0], 1);
  EXPECT_EQ(got[bs - 1], 1);
  // Unpinned: ordinary LRU again, evicted by newer blocks.
  obj->unpin(0, 1);
  EXPECT_FALSE(obj->pinned(0));
  EXPECT_TRUE(obj->pinned(20));
  for (uint64_t b = 30; b < 40; b++) {
    std::memset(blk.data(), int(b + 1), bs);
    ASSERT_TRUE(obj->store(b, blk).ok());
  }
  EXPECT_FALSE(obj->present(0));
  EXPECT_TRUE(obj->present(20));
  EXPECT_LE((*s)->used_bytes(), 3u * bs);
}

struct PinFixture {
  TempDir www, cache;
  std::unique_ptr<Nginx> ngx;
  std::string skip;
  explicit PinFixture(const std::vector<uint8_t>& file) {
    public_dir(www);
    write_file(www.file("f"), file);
    ::chmod(www.file("f").c_str(), 0644);
    ngx = Nginx::start(www.path(), &skip);
  }
};

TEST(RemotePin, PinnedRangesSurviveHeavyReadsThroughASmallCache) {
  auto data = random_bytes(6u << 20, 21);
  PinFixture f(data);
  if (!f.ngx) GTEST_SKIP() << f.skip;
  const uint64_t cap = 1u << 20;  // 8 blocks of 128 KiB; the object has 48
  auto cfg = set_remote(f.cache.path(), cap);
  cfg.block_size = 128u << 10;  // the figures below are for 128 KiB blocks
  remote::set_config(cfg);
  auto d = remote::open_remote(f.ngx->url("f"), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  auto s = as_http(*d);
  const uint64_t tail = data.size() - 300000;
  (*d)->keep_cached(0, 4096);
  (*d)->keep_cached(tail, 300000);
  std::vector<uint64_t> pinned = {0, tail / (128 << 10), tail / (128 << 10) + 1, tail / (128 << 10) + 2};
  EXPECT_EQ(s->bytes_pinned(), 4u * (128 << 10));
  std::vector<uint8_t> a(4096), z(300000);
  ASSERT_TRUE((*d)->read(0, a).ok());
  ASSERT_TRUE((*d)->read(tail, z).ok());
  // Heavy reads: the whole object three times, then random ranges; every byte checked.
  std::mt19937_64 rng(5);
  for (int pass = 0; pass < 3; pass++) {
    std::vector<uint8_t> all(data.size());
    for (uint64_t off = 0; off < all.size(); off += 256 << 10)
      ASSERT_TRUE((*d)->read(off, std::span(all).subspan(off, 256 << 10)).ok());
    expect_same(all, data, "pass " + std::to_string(pass));
  }
  for (int i = 0; i < 200; i++) {
    uint64_t len = 1 + rng() % 300000, off = rng() % (data.size() - len + 1);
    std::vector<uint8_t> b(len);
    ASSERT_TRUE((*d)->read(off, b).ok());
    ASSERT_TRUE(std::equal(b.begin(), b.end(), data.begin() + long(off))) << off << "+" << len;
  }
  for (uint64_t b : pinned) {
    EXPECT_TRUE(s->block_pinned(b)) << b;
    EXPECT_TRUE(s->block_cached(b)) << "pinned block " << b << " was evicted";
  }
  EXPECT_LE(s->bytes_cached(), cap);
  uint64_t unpinned_cached = 0;
  for (uint64_t b = 0; b < 48; b++)
    if (std::find(pinned.begin(), pinned.end(), b) == pinned.end()) unpinned_cached += s->block_cached(b);
  EXPECT_LE(unpinned_cached, 4u);  // the rest of the cap: eviction did run
  // Server gone: the pinned ranges still read from the cache; an evicted block cannot.
  f.ngx.reset();
  std::vector<uint8_t> a2(4096), z2(300000);
  ASSERT_TRUE((*d)->read(0, a2).ok());
  ASSERT_TRUE((*d)->read(tail, z2).ok());
  EXPECT_TRUE(std::equal(a2.begin(), a2.end(), data.begin()));
  EXPECT_TRUE(std::equal(z2.begin(), z2.end(), data.begin() + long(tail)));
  uint64_t evicted = 0;
  while (evicted < 48 && s->block_cached(evicted)) evicted++;
  ASSERT_LT(evicted, 48u);
  std::vector<uint8_t> e(4096);
  EXPECT_FALSE((*d)->read(evicted * (128 << 10), e).ok()) << "block " << evicted << " read with nginx stopped";
}

TEST(RemotePin, ZFileMetadataPinnedReopensWithTheServerGone) {
  // 4 MiB, half of every 4 KiB zeros: compressible, not trivial.
  auto content = random_bytes(4u << 20, 31);
  for (size_t i = 0; i < content.size(); i += 4096) std::memset(content.data() + i, 0, 2048);
  auto out = std::make_shared<MemGrowFile>();
  auto sink = obd::zfile_sink(out, obd::ZFileWriteOptions{});
  ASSERT_TRUE(sink->write(content).ok());
  ASSERT_TRUE(sink->finish().ok());
  auto zfile = out->contents();
  PinFixture f(zfile);
  if (!f.ngx) GTEST_SKIP() << f.skip;
  const uint64_t cap = 512u << 10;  // 4 blocks; the ZFile is far larger
  ASSERT_GT(zfile.size(), 4 * cap);
  auto cfg = set_remote(f.cache.path(), cap);
  cfg.block_size = 128u << 10;  // the figures below are for 128 KiB blocks
  remote::set_config(cfg);
  auto d = remote::open_remote(f.ngx->url("f"), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  auto s = as_http(*d);
  {
    auto z = obd::ZFileDevice::open(*d, nullptr);
    ASSERT_TRUE(z.ok()) << z.status().message();
    EXPECT_GT(s->bytes_pinned(), 0u);
    EXPECT_LE(s->bytes_pinned(), 3u * (128 << 10));  // header block, trailer and jump table at the end
    std::vector<uint8_t> all(content.size());
    for (uint64_t off = 0; off < all.size(); off += 64 << 10)
      ASSERT_TRUE((*z)->read(off, std::span(all).subspan(off, 64 << 10)).ok());
    expect_same(all, content, "zfile read whole");
  }
  // Heavy raw reads of the blob (the ZFile's second pass would come from its
  // decompressed memory cache): all of it, then its middle again, so without
  // pins both the first block and the last ones would be evicted by now.
  std::vector<uint8_t> raw(zfile.size());
  for (uint64_t off = 0; off < raw.size(); off += 64 << 10) {
    auto part = std::span(raw).subspan(off, std::min<uint64_t>(64 << 10, raw.size() - off));
    ASSERT_TRUE((*d)->read(off, part).ok());
  }
  expect_same(raw, zfile, "raw blob");
  for (uint64_t off = 128 << 10; off < raw.size() / 2; off += 64 << 10) {
    std::vector<uint8_t> b(64 << 10);
    ASSERT_TRUE((*d)->read(off, b).ok());
    ASSERT_TRUE(std::equal(b.begin(), b.end(), zfile.begin() + long(off)));
  }
  EXPECT_LE(s->bytes_cached(), cap);
  uint64_t nb = (zfile.size() + (128 << 10) - 1) / (128 << 10), pinned = 0;
  for (uint64_t b = 0; b < nb; b++)
    if (s->block_pinned(b)) {
      pinned++;
      EXPECT_TRUE(s->block_cached(b)) << "pinned block " << b << " was evicted";
    }
  EXPECT_GE(pinned, 2u);  // block 0 and the last block at least
  EXPECT_TRUE(s->block_pinned(0));
  EXPECT_TRUE(s->block_pinned(nb - 1));
  // nginx stopped: the ZFile opens again from the cache alone (header, trailer, jump table).
  f.ngx.reset();
  auto z2 = obd::ZFileDevice::open(*d, nullptr);
  ASSERT_TRUE(z2.ok()) << "reopen with the server gone: " << z2.status().message();
  EXPECT_EQ((*z2)->size(), content.size());
}

// An LSMT layer compressed to a ZFile (overlaybd's usual layer): the LSMT
// reader's keep_cached of its header, index and trailer goes through the
// ZFile to the stored bytes of the blocks holding them, so those are pinned
// too, not only the ZFile's own header, trailer and jump table. The cache's
// blocks are 16 KiB here so that the index's stored bytes lie in blocks the
// ZFile's own metadata does not pin (checked).
TEST(RemotePin, LsmtIndexInsideZFilePinnedReopensWithTheServerGone) {
  // 4 MiB whose sectors are zero at random: an index of about 1 Ki entries per MiB.
  auto raw = random_bytes(4u << 20, 41);
  std::mt19937_64 rng(42);
  for (size_t sct = 0; sct < raw.size(); sct += 512)
    if (rng() % 2) std::memset(raw.data() + sct, 0, 512);
  auto lsmt = std::make_shared<MemGrowFile>();
  {
    MemoryDevice rd(raw, true);
    auto sink = obd::file_sink(lsmt, false);
    ASSERT_TRUE(obd::raw_to_layer(rd, *sink, {}).ok());
  }
  auto lbytes = lsmt->contents();
  auto zout = std::make_shared<MemGrowFile>();
  auto zs = obd::zfile_sink(zout, obd::ZFileWriteOptions{});
  ASSERT_TRUE(zs->write(lbytes).ok());
  ASSERT_TRUE(zs->finish().ok());
  auto zfile = zout->contents();
  // Which cache blocks hold what, from the files themselves.
  const uint64_t bs = 16u << 10;
  auto local = obd::ZFileDevice::open(std::make_shared<MemoryDevice>(zfile, true));
  ASSERT_TRUE(local.ok()) << local.status().message();
  const auto& L = (*local)->layout();
  auto blocks_of = [&](uint64_t off, uint64_t len, std::set<uint64_t>& out) {
    for (uint64_t b = off / bs; b <= (off + len - 1) / bs; b++) out.insert(b);
  };
  auto stored = [&](uint64_t off, uint64_t len, std::set<uint64_t>& out) {  // uncompressed range
    uint64_t b0 = off / L.h.block_size, b1 = (off + len - 1) / L.h.block_size;
    blocks_of(L.starts[b0], L.starts[b1 + 1] - L.starts[b0], out);
  };
  auto trailer = obd::parse_lsmt_header(std::span(lbytes).last(obd::kLsmtHeaderSize), "trailer");
  ASSERT_TRUE(trailer.ok()) << trailer.status().message();
  std::set<uint64_t> zfile_own, lsmt_own;
  blocks_of(0, obd::kZFileHeaderSize, zfile_own);
  blocks_of(zfile.size() - obd::kZFileHeaderSize, obd::kZFileHeaderSize, zfile_own);
  blocks_of(L.h.index_offset, L.h.index_size * 4, zfile_own);
  stored(0, obd::kLsmtHeaderSize, lsmt_own);
  stored(lbytes.size() - obd::kLsmtHeaderSize, obd::kLsmtHeaderSize, lsmt_own);
  stored(trailer->index_offset, trailer->index_size * 16, lsmt_own);
  std::set<uint64_t> only_lsmt;
  for (uint64_t b : lsmt_own)
    if (!zfile_own.count(b)) only_lsmt.insert(b);
  ASSERT_GE(only_lsmt.size(), 1u) << "the test needs index blocks the ZFile does not pin itself";

  PinFixture f(zfile);
  if (!f.ngx) GTEST_SKIP() << f.skip;
  const uint64_t cap = 256u << 10;  // 16 blocks; the ZFile is far larger
  ASSERT_GT(zfile.size(), 4 * cap);
  auto cfg = set_remote(f.cache.path(), cap);
  cfg.block_size = bs;
  remote::set_config(cfg);
  auto d = remote::open_remote(f.ngx->url("f"), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  auto s = as_http(*d);
  auto open_layer = [&]() -> Result<std::shared_ptr<obd::LsmtDevice>> {
    UDM_ASSIGN_OR_RETURN(auto z, obd::ZFileDevice::open(*d, nullptr));
    UDM_ASSIGN_OR_RETURN(auto layer, obd::open_lsmt_layer(z, "layer"));
    std::vector<obd::LsmtLayer> layers;
    layers.push_back(std::move(layer));
    UDM_ASSIGN_OR_RETURN(auto dev, obd::LsmtDevice::open(std::move(layers), std::nullopt));
    dev->set_length(raw.size());
    return dev;
  };
  {
    auto dev = open_layer();
    ASSERT_TRUE(dev.ok()) << dev.status().message();
    std::vector<uint8_t> all(raw.size());
    for (uint64_t off = 0; off < all.size(); off += 64 << 10)
      ASSERT_TRUE((*dev)->read(off, std::span(all).subspan(off, 64 << 10)).ok());
    expect_same(all, raw, "lsmt in zfile read whole");
  }
  // Heavy raw reads of the blob: all of it, then its first half again.
  std::vector<uint8_t> rawz(zfile.size());
  for (uint64_t off = 0; off < rawz.size(); off += 64 << 10) {
    auto part = std::span(rawz).subspan(off, std::min<uint64_t>(64 << 10, rawz.size() - off));
    ASSERT_TRUE((*d)->read(off, part).ok());
  }
  expect_same(rawz, zfile, "raw blob");
  for (uint64_t off = bs; off < rawz.size() / 2; off += 64 << 10) {
    std::vector<uint8_t> b(64 << 10);
    ASSERT_TRUE((*d)->read(off, b).ok());
    ASSERT_TRUE(std::equal(b.begin(), b.end(), zfile.begin() + long(off)));
  }
  EXPECT_LE(s->bytes_cached(), cap);
  for (uint64_t b : lsmt_own) {
    EXPECT_TRUE(s->block_pinned(b)) << "LSMT metadata block " << b << " not pinned";
    EXPECT_TRUE(s->block_cached(b)) << "LSMT metadata block " << b << " was evicted";
  }
  for (uint64_t b : zfile_own) EXPECT_TRUE(s->block_pinned(b) && s->block_cached(b)) << "ZFile block " << b;
  uint64_t nb = (zfile.size() + bs - 1) / bs, pinned = 0;
  for (uint64_t b = 0; b < nb; b++) pinned += s->block_pinned(b);
  std::set<uint64_t> all_own = zfile_own;
  all_own.insert(lsmt_own.begin(), lsmt_own.end());
  EXPECT_EQ(pinned, all_own.size());  // nothing else
  // nginx stopped: the layer opens again from the cache alone.
  f.ngx.reset();
  auto again = open_layer();
  ASSERT_TRUE(again.ok()) << "reopen with the server gone: " << again.status().message();
  EXPECT_EQ((*again)->size(), raw.size());
}

}  // namespace
}  // namespace udm::test
