// Writable layers and round trips: raw -> base layer -> ZFile -> stack, with
// random write/discard workloads on RW layers checked against a model;
// power-cut sweeps over the RW layer's flush protocol.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "io/fault_grow_file.h"
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

// Power-cut sweep of the RW layer: its data and index files are
// FaultGrowFiles on one FaultDisk (FaultDevice's crash model), and every
// write of a small workload is the cut point once: cut_after_writes(n) for
// every n up to the workload's count; with `at_syncs` every sync is a cut
// point too (e.g. between the data file's sync and the index file's). With
// `survival` 0 every unsynced write is lost; otherwise each survives with
// that probability (seeds vary), and a surviving append grows the data file.
//
// After the cut the layer must open and read what the last successful
// flush() made durable, or, when the cut fell inside a flush, what that
// flush was making durable (its unsynced index write may survive; it can
// only point at data already synced, because records are written after the
// data file's sync). Nothing else: no lost zeroed extent showing the layer
// below, no record pointing at lost data. The reopened layer then takes
// another write and flush and must still read right (appends land after
// any surviving tail). The RW layer sits on a read-only layer full of data,
// and the workload mixes writes with discards and zero-outs (aligned and
// not, with and without unmap).
void rw_layer_sweep(double survival, int seeds_per_cut, bool at_syncs) {
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
  auto open_stack = [&](GrowFilePtr d, GrowFilePtr i) { return stack({mem(lower)}, RwLayerFiles{d, i}); };
  struct Outcome {
    Bytes durable_model;                  // as of the last successful flush
    std::optional<Bytes> inflight_model;  // as of the start of a flush the cut interrupted
    Bytes data, index;                    // the files after the cut
    uint64_t cut_points = 0;
  };
  // cut < 0: no cut during the workload (power is cut after it).
  auto run = [&](int64_t cut, double surv, uint64_t seed) {
    Outcome o;
    auto disk = std::make_shared<FaultDisk>();
    auto d = std::make_shared<FaultGrowFile>(disk), i = std::make_shared<FaultGrowFile>(disk);
    EXPECT_TRUE(create_rw_layer(*d, *i, kSize, "", "").ok());
    if (surv > 0) disk->set_unflushed_survival(surv, seed);
    disk->set_cut_at_flushes(at_syncs);
    uint64_t ops0 = disk->cut_points();
    if (cut >= 0) disk->cut_after_writes(cut);
    auto dev = open_stack(d, i);
    EXPECT_TRUE(dev.ok());
    if (!dev.ok()) return o;
    std::mt19937_64 rng(5);
    Bytes model = lower_raw;
    o.durable_model = model;
    auto flush = [&] {
      if ((*dev)->flush().ok())
        o.durable_model = model;
      else
        o.inflight_model = model;
    };
    for (int k = 0; k < 30 && !disk->dead(); k++) {
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
      if (k % 3 == 2) flush();
    }
    if (!disk->dead()) flush();
    o.cut_points = disk->cut_points() - ops0;
    dev->reset();  // closing flushes nothing new once the power is cut
    disk->power_cut();
    o.data = d->durable();
    o.index = i->durable();
    return o;
  };
  const Outcome full = run(-1, 0, 0);
  ASSERT_GT(full.cut_points, 30u);
  int cuts = 0, differing = 0, grown = 0, inflight = 0;
  for (int64_t n = 0; n <= int64_t(full.cut_points); n++) {
    for (int seed = 0; seed < seeds_per_cut; seed++) {
      SCOPED_TRACE(fmt::format("cut after {} operations, seed {}", n, seed));
      Outcome o = run(n, survival, 1000 * n + seed);
      auto d2 = std::make_shared<MemGrowFile>(o.data), i2 = std::make_shared<MemGrowFile>(o.index);
      Bytes state;
      {
        auto dev = open_stack(d2, i2);
        ASSERT_TRUE(dev.ok()) << dev.status().to_string();
        ASSERT_EQ((*dev)->size(), kSize);
        Bytes got(kSize);
        ASSERT_TRUE((*dev)->read(0, got).ok());
        if (got == o.durable_model) {
          state = o.durable_model;
        } else if (o.inflight_model && got == *o.inflight_model) {
          state = *o.inflight_model;
          inflight++;
        } else {
          expect_equal(**dev, o.durable_model, "after the cut: neither the last flush's state nor the interrupted one's");
          return;
        }
        // Life goes on: another write and flush, reopened.
        Bytes b = udm::test::random_bytes(4096, n);
        ASSERT_TRUE((*dev)->write(8192, b).ok());
        ASSERT_TRUE((*dev)->flush().ok());
        std::memcpy(state.data() + 8192, b.data(), b.size());
      }
      auto dev = open_stack(d2, i2);
      ASSERT_TRUE(dev.ok()) << dev.status().to_string();
      expect_equal(**dev, state, "after a write and flush on the survivor");
      differing += o.durable_model != full.durable_model;
      // Unsynced appends that survived: the data file is longer than the
      // same cut leaves when every unsynced write is dropped.
      if (survival > 0) grown += o.data.size() > run(n, 0, 0).data.size();
      cuts++;
    }
  }
  EXPECT_EQ(cuts, (full.cut_points + 1) * seeds_per_cut);
  EXPECT_GT(differing, int(full.cut_points) / 2) << "cuts that left a state before the end";
  if (survival > 0) {
    EXPECT_GT(grown, 0) << "no unsynced append survived: survival mode not exercised";
  }
  if (survival > 0 && at_syncs) {
    EXPECT_GT(inflight, 0) << "no interrupted flush's index write survived";
  } else {
    EXPECT_EQ(inflight, 0) << "an interrupted flush survived where no cut can fall between its index write and sync";
  }
}

TEST(RwLayerSweep, PowerCutAtEveryWriteUnsyncedWritesDropped) { rw_layer_sweep(0.0, 1, false); }
TEST(RwLayerSweep, PowerCutAtEveryWriteUnsyncedWritesSurviveAtRandom) { rw_layer_sweep(0.5, 3, false); }
TEST(RwLayerSweep, PowerCutAtEveryWriteOrSyncUnsyncedWritesDropped) { rw_layer_sweep(0.0, 1, true); }
TEST(RwLayerSweep, PowerCutAtEveryWriteOrSyncUnsyncedWritesSurviveAtRandom) { rw_layer_sweep(0.5, 3, true); }

}  // namespace
}  // namespace udm::obd::test
