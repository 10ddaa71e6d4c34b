// Power-cut sweeps of the layer writers: commit (plain, tar, ZFile with the
// header rewritten, tar-wrapped zstd ZFile), raw image to layer (plain and
// ZFile+tar), ZFile compression of a committed layer, and sealing in place.
// The output is a FaultGrowFile (FaultDevice's crash model); the power is cut
// at every write and every sync of the writer in turn, with unsynced writes
// dropped or each kept with probability 1/2. Whatever the disk kept must be
// refused by the reader or read back complete and correct: never wrong data.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "io/fault_grow_file.h"
#include "obd_test_util.h"
#include "overlaybd/writer.h"

namespace udm::obd::test {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr uint64_t kSize = 6 << 20;

// A disk image: random data with zeroed holes, so layers have several
// extents and ZFiles compress.
Bytes make_image() {
  Bytes b = udm::test::random_bytes(kSize, 81);
  for (uint64_t o = 0; o < kSize; o += 64 << 10) std::memset(b.data() + o, 0, (o / (64 << 10)) % 3 * 8192);
  std::memset(b.data() + (2 << 20), 0, 512 << 10);
  return b;
}

// The RW layer holding the image (written in 1 MiB pieces, one discard),
// and the image it reads.
struct Source {
  Bytes image = make_image();
  std::shared_ptr<MemGrowFile> data = std::make_shared<MemGrowFile>(), index = std::make_shared<MemGrowFile>();
  Bytes committed;
  Source() {
    EXPECT_TRUE(create_rw_layer(*data, *index, kSize, "", "").ok());
    auto dev = LsmtDevice::open({}, RwLayerFiles{data, index});
    EXPECT_TRUE(dev.ok());
    for (uint64_t o = 0; o < kSize; o += 1 << 20)
      EXPECT_TRUE((*dev)->write(o, std::span<const uint8_t>(image.data() + o, 1 << 20)).ok());
    EXPECT_TRUE((*dev)->trim(3 << 20, 256 << 10).ok());
    std::memset(image.data() + (3 << 20), 0, 256 << 10);
    EXPECT_TRUE((*dev)->flush().ok());
    auto out = std::make_shared<MemGrowFile>();
    auto sink = file_sink(out, false);
    EXPECT_TRUE(commit_rw_layer(data, index, *sink, {}).ok());
    committed = out->contents();
  }
};

// Opens bytes as a layer (tar / ZFile / plain) and reads the whole disk.
Result<Bytes> read_layer(const Bytes& b) {
  UDM_ASSIGN_OR_RETURN(LsmtLayer L, layer_from(mem(b)));
  std::vector<LsmtLayer> v;
  v.push_back(std::move(L));
  UDM_ASSIGN_OR_RETURN(auto dev, LsmtDevice::open(std::move(v), std::nullopt));
  Bytes got(dev->size());
  UDM_TRY(dev->read(0, got));
  return got;
}

using WriterFn = std::function<Status(GrowFilePtr out)>;

struct Tally {
  int runs = 0, refused = 0, complete = 0;
};

// Runs `write` once per cut point (every write and sync of an uncut run),
// `seeds` times each, cutting there; checks what the output file kept.
Tally sweep(const std::string& name, const WriterFn& write, const Bytes& expect, double survival, int seeds) {
  auto run = [&](int64_t cut, uint64_t seed, uint64_t* points) {
    auto disk = std::make_shared<FaultDisk>();
    disk->set_cut_at_flushes(true);
    if (survival > 0) disk->set_unflushed_survival(survival, seed);
    auto out = std::make_shared<FaultGrowFile>(disk);
    if (cut >= 0) disk->cut_after_writes(cut);
    Status st = write(out);
    if (cut < 0) {
      EXPECT_TRUE(st.ok()) << name << ": " << st.to_string();
    }
    if (points) *points = disk->cut_points();
    disk->power_cut();
    return out->durable();
  };
  uint64_t points = 0;
  Bytes whole = run(-1, 0, &points);
  auto r = read_layer(whole);
  EXPECT_TRUE(r.ok() && *r == expect) << name << ": the uncut output does not read back right";
  Tally t;
  for (int64_t n = 0; n <= int64_t(points); n++) {
    for (int s = 0; s < seeds; s++) {
      Bytes kept = run(n, 1000 * n + s, nullptr);
      auto got = read_layer(kept);
      t.runs++;
      if (!got.ok()) {
        t.refused++;
        continue;
      }
      if (*got != expect) {
        size_t i = 0;
        while (i < got->size() && i < expect.size() && (*got)[i] == expect[i]) i++;
        ADD_FAILURE() << name << ": cut after " << n << " of " << points << " operations (survival " << survival
                      << ", seed " << s << "): the output opens and reads wrong data at byte " << i << " (kept "
                      << kept.size() << " bytes)";
        return t;
      }
      t.complete++;
    }
  }
  return t;
}

struct Case {
  std::string name;
  WriterFn write;
};

std::vector<Case> cases(const Source& src) {
  auto commit = [&src](std::function<std::unique_ptr<ByteSink>(GrowFilePtr)> sink) -> WriterFn {
    return [&src, sink](GrowFilePtr out) {
      auto s = sink(out);
      return commit_rw_layer(src.data, src.index, *s, {});
    };
  };
  ZFileWriteOptions commit_z;  // overlaybd-commit -z: the header carries the final fields
  commit_z.overwrite_header = true;
  ZFileWriteOptions zstd_tar;
  zstd_tar.algo = ZAlgo::kZstd;
  zstd_tar.block_size = 64 << 10;
  zstd_tar.tar = true;
  ZFileWriteOptions no_verify;  // no block CRCs: only the index CRC and the order of writes protect it
  no_verify.verify = false;
  ZFileWriteOptions plain_z;  // overlaybd-zfile: the trailer carries the final fields
  std::vector<Case> v;
  v.push_back({"commit", commit([](GrowFilePtr o) { return file_sink(o, false); })});
  v.push_back({"commit -t", commit([](GrowFilePtr o) { return file_sink(o, true); })});
  v.push_back({"commit -z", commit([commit_z](GrowFilePtr o) { return zfile_sink(o, commit_z); })});
  v.push_back({"commit -z zstd 64K -t", commit([zstd_tar](GrowFilePtr o) { return zfile_sink(o, zstd_tar); })});
  v.push_back({"from-raw", [&src](GrowFilePtr out) {
                 MemoryDevice raw(src.image, true);
                 auto s = file_sink(out, false);
                 return raw_to_layer(raw, *s, {});
               }});
  v.push_back({"from-raw -z -t", [&src, zstd_tar](GrowFilePtr out) {
                 MemoryDevice raw(src.image, true);
                 auto s = zfile_sink(out, zstd_tar);
                 return raw_to_layer(raw, *s, {});
               }});
  v.push_back({"compress", [&src, plain_z](GrowFilePtr out) {
                 MemoryDevice in(src.committed, true);
                 auto s = zfile_sink(out, plain_z);
                 return copy_to_sink(in, *s);
               }});
  v.push_back({"compress --no-verify", [&src, no_verify](GrowFilePtr out) {
                 MemoryDevice in(src.committed, true);
                 auto s = zfile_sink(out, no_verify);
                 return copy_to_sink(in, *s);
               }});
  return v;
}

void writers_sweep(double survival, int seeds) {
  Source src;
  for (const auto& c : cases(src)) {
    SCOPED_TRACE(c.name);
    Tally t = sweep(c.name, c.write, src.image, survival, seeds);
    EXPECT_EQ(t.refused + t.complete, t.runs) << c.name;
    EXPECT_GT(t.complete, 0) << c.name;
    EXPECT_GT(t.refused, 0) << c.name << ": no cut left an unusable output (is the sweep cutting?)";
    std::printf("%-24s %4d cuts: %4d refused, %4d complete\n", c.name.c_str(), t.runs, t.refused, t.complete);
  }
}

TEST(WriterSweep, PowerCutAtEveryWriteAndSyncUnsyncedWritesDropped) { writers_sweep(0.0, 1); }
TEST(WriterSweep, PowerCutAtEveryWriteAndSyncUnsyncedWritesSurviveAtRandom) { writers_sweep(0.5, 5); }

// Sealing rewrites the RW data file in place (index and trailer appended).
// Cut anywhere, the data file still opens as the RW layer it was, reading
// the same image; and if it opens as a sealed layer, it reads that image.
TEST(WriterSweep, SealInPlace) {
  Source src;
  uint64_t points = 0;
  {
    auto disk = std::make_shared<FaultDisk>();
    disk->set_cut_at_flushes(true);
    auto data = std::make_shared<FaultGrowFile>(disk, src.data->contents());
    ASSERT_TRUE(seal_rw_layer(data, std::make_shared<FaultGrowFile>(disk, src.index->contents())).ok());
    points = disk->cut_points();
    ASSERT_TRUE(read_layer(data->contents()).ok());
  }
  for (double survival : {0.0, 0.5}) {
    int runs = 0, sealed = 0;
    for (int64_t n = 0; n <= int64_t(points); n++) {
      for (int s = 0; s < (survival > 0 ? 8 : 1); s++) {
        SCOPED_TRACE(fmt::format("survival {} cut after {} seed {}", survival, n, s));
        auto disk = std::make_shared<FaultDisk>();
        disk->set_cut_at_flushes(true);
        if (survival > 0) disk->set_unflushed_survival(survival, 1000 * n + s);
        auto data = std::make_shared<FaultGrowFile>(disk, src.data->contents());
        auto index = std::make_shared<FaultGrowFile>(disk, src.index->contents());
        disk->cut_after_writes(n);
        (void)seal_rw_layer(data, index);
        disk->power_cut();
        Bytes d = data->durable();
        auto rw = LsmtDevice::open({}, RwLayerFiles{std::make_shared<MemGrowFile>(d),
                                                     std::make_shared<MemGrowFile>(index->durable())});
        ASSERT_TRUE(rw.ok()) << rw.status().to_string();
        Bytes got(kSize);
        ASSERT_TRUE((*rw)->read(0, got).ok());
        EXPECT_TRUE(got == src.image) << "the RW layer changed";
        auto as_layer = read_layer(d);
        if (as_layer.ok()) {
          EXPECT_TRUE(*as_layer == src.image) << "the sealed layer reads wrong data";
          sealed++;
        }
        runs++;
      }
    }
    EXPECT_GT(sealed, 0);
    EXPECT_LT(sealed, runs);
  }
}

}  // namespace
}  // namespace udm::obd::test
