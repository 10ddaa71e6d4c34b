// Writable layers and round trips: raw -> base layer -> ZFile -> stack, with
// random write/discard workloads on RW layers checked against a model;
// power-cut sweeps over the RW layer's flush protocol.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "obd_test_util.h"
#include "overlaybd/writer.h"

namespace udm::obd::test {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes commit_to_bytes(GrowFilePtr d, GrowFilePtr i, const CommitOptions& co = {}) {
  auto out = std::make_shared<MemGrowFile>();
  auto sink = file_sink(out, false);
  Status s = commit_rw_layer(d, i, *sink, co);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return out->contents();
}

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

void expect_equal(BlockDevice& d, const Bytes& model, const std::string& what) {
  ASSERT_EQ(d.size(), model.size()) << what;
  Bytes got(model.size());
  ASSERT_TRUE(d.read(0, got).ok()) << what;
  if (got != model) {
    size_t i = 0;
    while (got[i] == model[i]) i++;
    FAIL() << what << ": first difference at byte " << i;
  }
}

// Random workload: aligned and unaligned writes, discards, zero writes.
void workload(BlockDevice& d, Bytes& model, std::mt19937_64& rng, int ops, bool check_reads = true) {
  uint64_t size = model.size();
  for (int k = 0; k < ops; k++) {
    int kind = rng() % 10;
    uint64_t off, len;
    if (kind < 5) {  // aligned write, sometimes > 4 MiB split size
      len = 512 * (1 + rng() % (rng() % 8 == 0 ? 12000 : 64));
      off = 512 * (rng() % ((size - len) / 512 + 1));
      Bytes b = udm::test::random_bytes(len, rng());
      if (rng() % 3 == 0) std::fill(b.begin(), b.begin() + len / 2, 0);
      ASSERT_TRUE(d.write(off, b).ok());
      std::memcpy(model.data() + off, b.data(), len);
    } else if (kind < 7) {  // unaligned write
      len = 1 + rng() % 3000;
      off = rng() % (size - len);
      Bytes b = udm::test::random_bytes(len, rng());
      ASSERT_TRUE(d.write(off, b).ok());
      std::memcpy(model.data() + off, b.data(), len);
    } else if (kind < 9) {  // discard (zeroes on lsmt), possibly > 16383 sectors
      len = 512 * (1 + rng() % (rng() % 4 == 0 ? 40000 : 200));
      len = std::min(len, size);
      off = 512 * (rng() % ((size - len) / 512 + 1));
      ASSERT_TRUE(d.trim(off, len).ok());
      std::memset(model.data() + off, 0, len);
    } else {  // unaligned write_zeroes
      len = 1 + rng() % 5000;
      off = rng() % (size - len);
      ASSERT_TRUE(d.write_zeroes(off, len).ok());
      std::memset(model.data() + off, 0, len);
    }
    if (check_reads && k % 7 == 0) {
      uint64_t rl = 1 + rng() % 70000, ro = rng() % (size - rl);
      Bytes got(rl);
      ASSERT_TRUE(d.read(ro, got).ok());
      ASSERT_EQ(0, std::memcmp(got.data(), model.data() + ro, rl)) << "read at " << ro << " op " << k;
    }
  }
}

TEST(RoundTrip, RawToLayerToZFileToStackWithRwLayers) {
  const uint64_t kSize = 24 << 20;
  std::mt19937_64 rng(7);
  // A raw image with data, zero holes and text-like compressible regions.
  Bytes raw(kSize, 0);
  for (int i = 0; i < 40; i++) {
    uint64_t len = 512 * (1 + rng() % 2048), off = 512 * (rng() % ((kSize - len) / 512));
    if (i % 2) {
      auto r = udm::test::random_bytes(len, i);
      std::memcpy(raw.data() + off, r.data(), len);
    } else {
      for (uint64_t k = 0; k < len; k++) raw[off + k] = "udm overlaybd layer "[k % 20];
    }
  }
  // raw -> base layer
  auto outf = std::make_shared<MemGrowFile>();
  auto sink = file_sink(outf, false);
  MemoryDevice rawdev(raw, true);
  CommitOptions co;
  co.uuid = "11111111-2222-4333-8444-555555555555";
  ASSERT_TRUE(raw_to_layer(rawdev, *sink, co).ok());
  Bytes base = outf->contents();
  {
    auto L = layer_from(mem(base));
    ASSERT_TRUE(L.ok()) << L.status().to_string();
    // Zero ranges are left unmapped: the data stored is less than the image.
    uint64_t stored = 0;
    for (auto& e : L->entries) {
      EXPECT_FALSE(e.zeroed);
      EXPECT_LT(e.length, kLsmtMaxEntryLen);
      stored += e.length * 512ull;
    }
    uint64_t nonzero = 0;
    static const uint8_t z[512] = {};
    for (uint64_t o = 0; o < kSize; o += 512) nonzero += std::memcmp(raw.data() + o, z, 512) != 0;
    EXPECT_EQ(stored, nonzero * 512);
    EXPECT_LT(stored, kSize);
  }
  Bytes model = raw;
  for (auto [algo, bs] : {std::pair{ZAlgo::kLz4, 4096u}, std::pair{ZAlgo::kZstd, 65536u}}) {
    auto dev = stack({mem(compress(base, algo, bs))});
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    expect_equal(**dev, raw, "base zfile");
  }
  // RW layer over the compressed base.
  Bytes zbase = compress(base, ZAlgo::kLz4, 16384);
  std::vector<Bytes> committed = {zbase};
  for (int round = 0; round < 3; round++) {
    auto data = std::make_shared<MemGrowFile>(), index = std::make_shared<MemGrowFile>();
    std::string uuid = fmt::format("AAAAAAAA-0000-4000-8000-00000000000{}", round);
    std::string parent = round == 0 ? co.uuid : fmt::format("AAAAAAAA-0000-4000-8000-00000000000{}", round - 1);
    ASSERT_TRUE(create_rw_layer(*data, *index, kSize, uuid, parent).ok());
    std::vector<DevicePtr> blobs;
    for (auto& c : committed) blobs.push_back(mem(c));
    {
      auto dev = stack(blobs, RwLayerFiles{data, index});
      ASSERT_TRUE(dev.ok()) << dev.status().to_string();
      workload(**dev, model, rng, 120);
      expect_equal(**dev, model, "rw stack before flush");
      ASSERT_TRUE((*dev)->flush().ok());
    }
    {  // reopen the RW layer from its files
      auto dev = stack(blobs, RwLayerFiles{data, index});
      ASSERT_TRUE(dev.ok()) << dev.status().to_string();
      expect_equal(**dev, model, "rw stack reopened");
    }
    CommitOptions c2;
    c2.uuid = uuid;
    Bytes layer = commit_to_bytes(data, index, c2);
    EXPECT_EQ(layer, commit_to_bytes(data, index, c2)) << "commit is deterministic";
    committed.push_back(round % 2 ? layer : compress(layer, round ? ZAlgo::kZstd : ZAlgo::kLz4, 4096 << round));
    blobs.clear();
    for (auto& c : committed) blobs.push_back(mem(c));
    auto dev = stack(blobs);
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    expect_equal(**dev, model, fmt::format("committed stack of {}", committed.size()));
    EXPECT_TRUE((*dev)->caps().read_only);
  }
}

// Sealing turns the RW data file into a read-only LSMT file in place; its
// index is exactly index_size entries (padding beyond is junk); committing it
// equals committing the RW pair.
TEST(RwLayer, SealThenCommitSealedEqualsCommit) {
  const uint64_t kSize = 16 << 20;
  auto data = std::make_shared<MemGrowFile>(), index = std::make_shared<MemGrowFile>();
  ASSERT_TRUE(create_rw_layer(*data, *index, kSize, "", "").ok());
  Bytes model(kSize, 0);
  std::mt19937_64 rng(11);
  {
    auto dev = LsmtDevice::open({}, RwLayerFiles{data, index});
    ASSERT_TRUE(dev.ok());
    workload(**dev, model, rng, 80, false);
  }
  Bytes committed = commit_to_bytes(data, index);
  ASSERT_TRUE(seal_rw_layer(data, index).ok());
  Bytes sealed = data->contents();
  // Junk in the 512-byte padding after the real entries must not matter.
  auto L0 = layer_from(mem(sealed));
  ASSERT_TRUE(L0.ok()) << L0.status().to_string();
  uint64_t pad_at = L0->trailer.index_offset + 16 * L0->trailer.index_size;
  for (uint64_t p = pad_at; p < sealed.size() - 4096; p++) sealed[p] = 0xEE;
  auto dev = stack({mem(sealed)});
  ASSERT_TRUE(dev.ok()) << dev.status().to_string();
  expect_equal(**dev, model, "sealed file");
  auto out = std::make_shared<MemGrowFile>();
  auto sink = file_sink(out, false);
  ASSERT_TRUE(commit_sealed(mem(sealed), *sink, {}).ok());
  EXPECT_TRUE(out->contents() == committed);
}

TEST(RwLayer, ConcurrentWritersAndReaders) {
  const uint64_t kSize = 8 << 20;
  auto data = std::make_shared<MemGrowFile>(), index = std::make_shared<MemGrowFile>();
  ASSERT_TRUE(create_rw_layer(*data, *index, kSize, "", "").ok());
  auto dev = LsmtDevice::open({}, RwLayerFiles{data, index});
  ASSERT_TRUE(dev.ok());
  Bytes model(kSize, 0);
  std::vector<std::thread> th;
  std::atomic<int> bad{0};
  for (int t = 0; t < 2; t++) {
    th.emplace_back([&, t] {
      std::mt19937_64 rng(t + 100);
      uint64_t half = kSize / 2, base = t * half;
      for (int k = 0; k < 300; k++) {
        uint64_t len = 512 * (1 + rng() % 32), off = base + 512 * (rng() % ((half - len) / 512));
        Bytes b = udm::test::random_bytes(len, rng());
        if (!(*dev)->write(off, b).ok()) bad++;
        std::memcpy(model.data() + off, b.data(), len);
        Bytes r(len);
        if (!(*dev)->read(off, r).ok() || r != b) bad++;
        if (k % 50 == 0 && !(*dev)->flush().ok()) bad++;
      }
    });
  }
  for (auto& x : th) x.join();
  EXPECT_EQ(bad.load(), 0);
  ASSERT_TRUE((*dev)->flush().ok());
  expect_equal(**dev, model, "after concurrent writes");
  dev->reset();
  auto again = LsmtDevice::open({}, RwLayerFiles{data, index});
  ASSERT_TRUE(again.ok());
  expect_equal(**again, model, "reopened");
}

// One power supply for both files: after `budget` more writes/syncs, the
// power is cut and every later call fails.
struct Power {
  std::atomic<int64_t> budget{-1};
  std::atomic<bool> dead{false};
  bool spend() {
    if (dead) return false;
    int64_t b = budget.load();
    if (b < 0) return true;
    if (b == 0) {
      dead = true;
      return false;
    }
    budget--;
    return true;
  }
};

class CutFile : public GrowFile {
 public:
  CutFile(std::shared_ptr<MemGrowFile> f, std::shared_ptr<Power> p) : f_(std::move(f)), p_(std::move(p)) {}
  uint64_t size() const override { return f_->size(); }
  Status pread(uint64_t off, std::span<uint8_t> b) override {
    if (p_->dead) return IoError("power cut");
    return f_->pread(off, b);
  }
  Status pwrite(uint64_t off, std::span<const uint8_t> b) override {
    if (!p_->spend()) return IoError("power cut");
    return f_->pwrite(off, b);
  }
  Status sync() override {
    if (!p_->spend()) return IoError("power cut");
    return f_->sync();
  }
  std::shared_ptr<MemGrowFile> f_;
  std::shared_ptr<Power> p_;
};

// Every write (and sync) of a small workload is the cut point once. After the
// cut the layer must open, and read exactly what the last successful flush()
// made durable. The RW layer sits on a read-only layer full of data, and the
// workload mixes writes with discards and zero-outs (aligned and not, with
// and without unmap), so a zeroed extent that got lost or reordered would
// show the layer below.
TEST(RwLayerSweep, PowerCutAtEveryWrite) {
  const uint64_t kSize = 2 << 20;
  const Bytes lower_raw = [&] {
    Bytes b = udm::test::random_bytes(kSize, 61);
    for (uint64_t o = 0; o < kSize; o += 512) b[o] |= 1;
    return b;
  }();
  Bytes lower;
  {
    auto out = std::make_shared<MemGrowFile>();
    auto sink = file_sink(out, false);
    MemoryDevice rd(lower_raw, true);
    ASSERT_TRUE(raw_to_layer(rd, *sink, {}).ok());
    lower = out->contents();
  }
  auto fresh_headers = [&] {
    auto d = std::make_shared<MemGrowFile>(), i = std::make_shared<MemGrowFile>();
    EXPECT_TRUE(create_rw_layer(*d, *i, kSize, "", "").ok());
    return std::pair{d, i};
  };
  auto open_stack = [&](GrowFilePtr d, GrowFilePtr i) { return stack({mem(lower)}, RwLayerFiles{d, i}); };
  auto run = [&](int64_t budget, Bytes* durable_model, std::shared_ptr<MemGrowFile>* dout,
                 std::shared_ptr<MemGrowFile>* iout) -> int {
    auto [d, i] = fresh_headers();
    auto power = std::make_shared<Power>();
    power->budget = budget;
    auto cd = std::make_shared<CutFile>(d, power), ci = std::make_shared<CutFile>(i, power);
    auto dev = open_stack(cd, ci);
    EXPECT_TRUE(dev.ok());
    std::mt19937_64 rng(5);
    Bytes model = lower_raw;
    *durable_model = model;
    int ops = 0;
    for (int k = 0; k < 30 && !power->dead; k++) {
      uint64_t len = 512 * (1 + rng() % 16), off = 512 * (rng() % ((kSize - len) / 512));
      if (k % 5 == 4) {
        if ((*dev)->trim(off, len).ok()) std::memset(model.data() + off, 0, len);
      } else if (k % 5 == 2) {
        off += rng() % 512;  // unaligned: the edges are written as data
        len -= rng() % 512;
        if ((*dev)->write_zeroes(off, len, false, k % 2).ok()) std::memset(model.data() + off, 0, len);
      } else {
        Bytes b = udm::test::random_bytes(len, rng());
        if ((*dev)->write(off, b).ok()) std::memcpy(model.data() + off, b.data(), len);
      }
      ops++;
      if (k % 3 == 2 && (*dev)->flush().ok()) *durable_model = model;
    }
    if (!power->dead && (*dev)->flush().ok()) *durable_model = model;
    *dout = d;
    *iout = i;
    return ops;
  };
  // Count the writes of an uncut run.
  Bytes dm;
  std::shared_ptr<MemGrowFile> d, i;
  run(-1, &dm, &d, &i);
  int cuts = 0, differing = 0;
  for (int64_t n = 0; n < 100; n++) {
    Bytes durable_model;
    run(n, &durable_model, &d, &i);
    auto d2 = std::make_shared<MemGrowFile>(d->durable()), i2 = std::make_shared<MemGrowFile>(i->durable());
    auto dev = open_stack(d2, i2);
    ASSERT_TRUE(dev.ok()) << "cut after " << n << ": " << dev.status().to_string();
    expect_equal(**dev, durable_model, fmt::format("cut after {} writes", n));
    differing += durable_model != lower_raw && durable_model != dm;
    cuts++;
  }
  EXPECT_EQ(cuts, 100);
  EXPECT_GT(differing, 10) << "cuts that left a state between the start and the end";
}

}  // namespace
}  // namespace udm::obd::test
