// Zero-outs and discards on LSMT stacks: a zeroed extent in a layer hides
// every layer below it, in the RW layer, after seal and after commit (raw
// or ZFile); zeroes are recorded as zeroed entries, never as data; caps are
// honest, and everything read-only refuses writes, zero-outs and discards
// with EROFS.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "obd_test_util.h"
#include "overlaybd/tar_format.h"
#include "overlaybd/targets.h"
#include "io/resolver.h"
#include "overlaybd/writer.h"

namespace udm::obd::test {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes commit_bytes(GrowFilePtr d, GrowFilePtr i, const std::string& uuid) {
  auto out = std::make_shared<MemGrowFile>();
  auto sink = file_sink(out, false);
  CommitOptions co;
  co.uuid = uuid;
  Status s = commit_rw_layer(d, i, *sink, co);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return out->contents();
}

Bytes zfile_bytes(const Bytes& in, ZAlgo a = ZAlgo::kLz4, uint32_t bs = 4096, bool tar = false) {
  auto out = std::make_shared<MemGrowFile>();
  ZFileWriteOptions o;
  o.algo = a;
  o.block_size = bs;
  o.tar = tar;
  auto sink = zfile_sink(out, o);
  EXPECT_TRUE(sink->write(in).ok());
  EXPECT_TRUE(sink->finish().ok());
  return out->contents();
}

int64_t first_diff(BlockDevice& d, const Bytes& model) {
  if (d.size() != model.size()) return 0;
  Bytes got(model.size());
  if (!d.read(0, got).ok()) return 0;
  for (size_t i = 0; i < got.size(); i++)
    if (got[i] != model[i]) return int64_t(i);
  return -1;
}

// Sectors of data (not zeroed) entries in a committed/sealed layer.
uint64_t data_sectors(const Bytes& layer) {
  auto L = layer_from(mem(layer));
  EXPECT_TRUE(L.ok()) << L.status().to_string();
  uint64_t n = 0;
  if (L.ok())
    for (auto& e : L->entries)
      if (!e.zeroed) n += e.length;
  return n;
}

uint64_t zeroed_sectors(const Bytes& layer) {
  auto L = layer_from(mem(layer));
  uint64_t n = 0;
  if (L.ok())
    for (auto& e : L->entries)
      if (e.zeroed) n += e.length;
  return n;
}

constexpr uint64_t kSize = 8 << 20;
const char* kU0 = "10000000-0000-4000-8000-000000000000";
const char* kU1 = "10000000-0000-4000-8000-000000000001";
const char* kU2 = "10000000-0000-4000-8000-000000000002";

}  // namespace

TEST(LsmtZero, ZeroedExtentsHideEveryLowerLayer) {
  // L0: a base layer with data in every sector.
  Bytes raw = udm::test::random_bytes(kSize, 51);
  for (uint64_t o = 0; o < kSize; o += 512) raw[o] |= 1;  // no all-zero sector
  Bytes L0;
  {
    auto out = std::make_shared<MemGrowFile>();
    auto sink = file_sink(out, false);
    MemoryDevice rd(raw, true);
    CommitOptions co;
    co.uuid = kU0;
    ASSERT_TRUE(raw_to_layer(rd, *sink, co).ok());
    L0 = out->contents();
  }
  Bytes model = raw;
  // L1: an RW layer over L0 with writes and every kind of zero-out.
  Bytes L1;
  uint64_t l1_data_sectors = 0;
  {
    auto d = std::make_shared<MemGrowFile>(), i = std::make_shared<MemGrowFile>();
    ASSERT_TRUE(create_rw_layer(*d, *i, kSize, kU1, kU0).ok());
    auto dev = stack({mem(L0)}, RwLayerFiles{d, i});
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    auto w = [&](uint64_t off, size_t len, uint8_t v) {
      ASSERT_TRUE((*dev)->write(off, Bytes(len, v)).ok());
      memset(model.data() + off, v, len);
      l1_data_sectors += len / 512;
    };
    auto z = [&](uint64_t off, uint64_t len, int how) {
      Status st = how == 0   ? (*dev)->write_zeroes(off, len, false, true)
                  : how == 1 ? (*dev)->write_zeroes(off, len, false, false)
                             : (*dev)->trim(off, len);
      ASSERT_TRUE(st.ok()) << st.to_string();
      memset(model.data() + off, 0, len);
    };
    w(0, 1 << 20, 0x11);
    z(64 << 10, 128 << 10, 0);                // inside L1's own data
    z(2 << 20, 3 << 20, 1);                   // over L0 only, > 16383 sectors
    z((6 << 20) + 512, 40960, 2);             // a discard
    w((2 << 20) + 4096, 8192, 0x12);          // data back inside a zeroed range
    z((7 << 20) + 100, 5000, 0);              // unaligned: edges written as data
    l1_data_sectors += 2;                     // the two partial edge sectors
    EXPECT_EQ(first_diff(**dev, model), -1) << "RW layer L1";
    ASSERT_TRUE((*dev)->flush().ok());
    dev->reset();
    L1 = commit_bytes(d, i, kU1);
  }
  // Zeroes are zeroed entries, not data: the commit stores 1 MiB - 128 KiB
  // of the first write, the 8 KiB written back and the two edge sectors.
  (void)l1_data_sectors;
  EXPECT_EQ(data_sectors(L1), 2048u - 256 + 16 + 2);
  EXPECT_GE(zeroed_sectors(L1) * 512, (128u << 10) + (3u << 20) - 8192 + 40960);
  // Every representation of the two layers.
  for (int form = 0; form < 3; form++) {
    SCOPED_TRACE(fmt::format("form {}", form));
    std::vector<DevicePtr> blobs;
    if (form == 0) blobs = {mem(L0), mem(L1)};
    if (form == 1) blobs = {mem(zfile_bytes(L0)), mem(zfile_bytes(L1, ZAlgo::kZstd, 65536))};
    if (form == 2) blobs = {mem(zfile_bytes(L0, ZAlgo::kLz4, 4096, true)), mem(L1)};
    auto dev = stack(blobs);
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    EXPECT_EQ(first_diff(**dev, model), -1);
  }
  // L2: RW over [L0, L1]: zero over L1 data, over L1's zeroes, over L0;
  // data into L1's zeroed range; then seal, and commit.
  auto d = std::make_shared<MemGrowFile>(), i = std::make_shared<MemGrowFile>();
  ASSERT_TRUE(create_rw_layer(*d, *i, kSize, kU2, kU1).ok());
  {
    auto dev = stack({mem(L0), mem(L1)}, RwLayerFiles{d, i});
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    auto w = [&](uint64_t off, size_t len, uint8_t v) {
      ASSERT_TRUE((*dev)->write(off, Bytes(len, v)).ok());
      memset(model.data() + off, v, len);
    };
    auto z = [&](uint64_t off, uint64_t len, bool unmap) {
      ASSERT_TRUE((*dev)->write_zeroes(off, len, false, unmap).ok());
      memset(model.data() + off, 0, len);
    };
    z(512 << 10, 1 << 20, true);           // L1 data and L0 below it
    w((3 << 20), 4096, 0x21);              // into L1's zeroed range
    z((3 << 20) + 1024, 1024, false);      // zero inside that new data
    z((5 << 20) + 333, 2 << 20, true);     // L1 zeroes, L0 data, L1 discard, unaligned
    w((6 << 20), 512, 0x22);
    EXPECT_EQ(first_diff(**dev, model), -1) << "RW layer L2";
    ASSERT_TRUE((*dev)->flush().ok());
  }
  {
    auto dev = stack({mem(L0), mem(L1)}, RwLayerFiles{d, i});  // reopened
    ASSERT_TRUE(dev.ok());
    EXPECT_EQ(first_diff(**dev, model), -1) << "RW layer L2 reopened";
  }
  Bytes C2 = commit_bytes(d, i, kU2);
  ASSERT_TRUE(seal_rw_layer(d, i).ok());
  Bytes S2 = d->contents();
  for (int form = 0; form < 3; form++) {
    SCOPED_TRACE(fmt::format("L2 form {}", form));
    Bytes top = form == 0 ? S2 : form == 1 ? C2 : zfile_bytes(C2, ZAlgo::kZstd, 16384);
    auto dev = stack({mem(zfile_bytes(L0)), mem(L1), mem(top)});
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    EXPECT_EQ(first_diff(**dev, model), -1);
  }
  // Commit of the sealed file equals the commit of the RW pair, zeroes kept.
  auto out = std::make_shared<MemGrowFile>();
  auto sink = file_sink(out, false);
  CommitOptions co;
  co.uuid = kU2;
  ASSERT_TRUE(commit_sealed(mem(S2), *sink, co).ok());
  EXPECT_TRUE(out->contents() == C2);
}

TEST(LsmtZero, CapsAndReadOnlyRefusals) {
  // Writable stack.
  auto d = std::make_shared<MemGrowFile>(), i = std::make_shared<MemGrowFile>();
  ASSERT_TRUE(create_rw_layer(*d, *i, kSize, "", "").ok());
  auto rw = LsmtDevice::open({}, RwLayerFiles{d, i});
  ASSERT_TRUE(rw.ok());
  DeviceCaps c = (*rw)->caps();
  EXPECT_FALSE(c.read_only);
  EXPECT_TRUE(c.can_trim);
  EXPECT_TRUE(c.trim_zeroes);
  EXPECT_TRUE(c.can_write_zeroes);
  EXPECT_TRUE(c.fast_zero);
  ASSERT_TRUE((*rw)->write(0, Bytes(1 << 20, 0x31)).ok());
  ASSERT_TRUE((*rw)->flush().ok());
  // A big zero-out costs index records, not data: the data file does not grow.
  uint64_t data_before = d->size();
  ASSERT_TRUE((*rw)->write_zeroes(0, kSize, false, false).ok());
  ASSERT_TRUE((*rw)->trim(0, kSize).ok());
  EXPECT_EQ(d->size(), data_before);
  EXPECT_EQ(first_diff(**rw, Bytes(kSize, 0)), -1);
  ASSERT_TRUE((*rw)->flush().ok());
  rw->reset();
  Bytes layer = commit_bytes(d, i, kU0);
  EXPECT_EQ(data_sectors(layer), 0u);

  // Read-only: a stack without an RW layer, raw and ZFile, through the
  // target constructors too.
  Bytes base;
  {
    auto d2 = std::make_shared<MemGrowFile>(), i2 = std::make_shared<MemGrowFile>();
    ASSERT_TRUE(create_rw_layer(*d2, *i2, kSize, kU0, "").ok());
    auto dev = LsmtDevice::open({}, RwLayerFiles{d2, i2});
    ASSERT_TRUE(dev.ok());
    ASSERT_TRUE((*dev)->write(4096, Bytes(8192, 0x41)).ok());
    ASSERT_TRUE((*dev)->flush().ok());
    dev->reset();
    base = commit_bytes(d2, i2, kU0);
  }
  Bytes zbase = zfile_bytes(base);
  class MapResolver : public DeviceResolver {
   public:
    std::map<std::string, DevicePtr> devs;
    Result<DevicePtr> open(const std::string& spec, bool) override {
      auto it = devs.find(spec);
      if (it == devs.end()) return Invalid("no device " + spec);
      return it->second;
    }
  } res;
  res.devs["base"] = mem(base);
  res.devs["zbase"] = mem(zbase);
  res.devs["tzbase"] = mem(zfile_bytes(base, ZAlgo::kLz4, 4096, true));
  std::vector<std::pair<std::string, DevicePtr>> ro;
  {
    auto s = stack({mem(base)});
    ASSERT_TRUE(s.ok());
    ro.push_back({"lsmt device", *s});
    TargetParams p;
    p.type = "lsmt";
    p.resolver = &res;
    p.length = kSize;
    p.args = {"zbase"};
    auto t = make_lsmt_target(p);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    ro.push_back({"lsmt target", *t});
    p.type = "zfile";
    p.length = base.size() / 512 * 512;
    p.args = {"tzbase"};
    auto z = make_zfile_target(p);
    ASSERT_TRUE(z.ok()) << z.status().to_string();
    ro.push_back({"zfile target (tar)", *z});
    auto zd = ZFileDevice::open(mem(zbase));
    ASSERT_TRUE(zd.ok());
    ro.push_back({"zfile device", *zd});
    auto blob = open_layer_blob(mem(zfile_bytes(base, ZAlgo::kZstd, 4096, true)));
    ASSERT_TRUE(blob.ok());
    ro.push_back({"tar-wrapped zfile", *blob});
    ro.push_back({"tar slice", std::make_shared<SliceDevice>(mem(base), 0, 8192)});
  }
  for (auto& [name, dev] : ro) {
    SCOPED_TRACE(name);
    DeviceCaps rc = dev->caps();
    EXPECT_TRUE(rc.read_only);
    EXPECT_FALSE(rc.can_trim);
    EXPECT_FALSE(rc.trim_zeroes);
    EXPECT_FALSE(rc.can_write_zeroes);
    EXPECT_FALSE(rc.fast_zero);
    Bytes before(4096), after(4096);
    ASSERT_TRUE(dev->read(4096, before).ok());
    EXPECT_EQ(dev->write(4096, Bytes(4096, 1)).code(), EROFS);
    EXPECT_EQ(dev->write_zeroes(4096, 4096, false, true).code(), EROFS);
    EXPECT_EQ(dev->write_zeroes(4096, 4096, false, false).code(), EROFS);
    EXPECT_EQ(dev->trim(4096, 4096).code(), EROFS);
    ASSERT_TRUE(dev->read(4096, after).ok());
    EXPECT_TRUE(before == after);
  }
}

// The table's length may be less than the virtual size (docs: "<length> <=
// the virtual size"): the target is that long.
TEST(LsmtZero, TargetShorterThanVirtualSize) {
  auto d = std::make_shared<MemGrowFile>(), i = std::make_shared<MemGrowFile>();
  ASSERT_TRUE(create_rw_layer(*d, *i, kSize, kU0, "").ok());
  {
    auto dev = LsmtDevice::open({}, RwLayerFiles{d, i});
    ASSERT_TRUE(dev.ok());
    ASSERT_TRUE((*dev)->write(0, Bytes(kSize, 0x51)).ok());
    ASSERT_TRUE((*dev)->flush().ok());
  }
  Bytes base = commit_bytes(d, i, kU0);
  udm::test::TempDir tmp;
  std::string f = tmp.file("base.lsmt");
  udm::test::write_file(f, base);
  Resolver res;
  TargetParams p;
  p.type = "lsmt";
  p.resolver = &res;
  p.length = kSize / 2;
  p.args = {f};
  auto t = make_lsmt_target(p);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ((*t)->size(), kSize / 2);
  Bytes b(512);
  EXPECT_EQ((*t)->read(kSize / 2, b).code(), EINVAL);
  p.length = kSize + 512;
  EXPECT_FALSE(make_lsmt_target(p).ok());
}

}  // namespace udm::obd::test
