// Snapshot targets against kernel-made COW images, bad input, and the
// origin/snapshot/merge behaviour in process.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "common/sys_util.h"
#include "io/memory_device.h"
#include "io/resolver.h"
#include "snapshot/cow_format.h"
#include "snapshot/snapshot.h"
#include "snapshot_test_util.h"
#include "util/endian.h"

using namespace udm;
using namespace udm::snapshot;
using namespace udm::snapshot::test;
using namespace udm::test;

namespace {


std::string dump_sha(BlockDevice& d, const std::string& path) {
  std::vector<uint8_t> all(d.size());
  EXPECT_TRUE(d.read(0, all).ok());
  write_file(path, all);
  return sha256_file(path);
}

struct KernelVector {
  TempDir dir;
  std::string origin, cow;
  explicit KernelVector(const std::string& name) {
    std::string src = shared_dir() + "/data/dm-snapshot/" + name;
    origin = dir.file("origin.img");
    cow = dir.file("cow.img");
    auto r = sh("zstd -q -d --long=27 -o " + origin + " " + src + "/origin.img.zst && zstd -q -d --long=27 -o " +
                cow + " " + src + "/cow.img.zst");
    EXPECT_EQ(r.exit_code, 0) << r.describe();
  }
};

}  // namespace

TEST(SnapshotKernelImages, C8SnapshotViewAndStatus) {
  KernelVector v("c8");
  Resolver pr;
  auto t = make("snapshot", {v.origin, v.cow, "P", "8"}, 32 << 20, &pr);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  (*t)->resume();
  EXPECT_EQ((*t)->status(), "9592/32768 48");
  EXPECT_EQ(dump_sha(**t, v.dir.file("snap.out")),
            "f433ff650cb7b6119451ae5d0bebf2a3ae3acfbe1324544756985ee6849184f9");
  EXPECT_EQ(sha256_file(v.origin), "7613c15297e4ef92ce8d419016de0010e9a89658e450825067a1348e1847ed91");
  auto inspect = run({udm_bin(), "inspect", v.cow});
  if (inspect.exit_code == 0) {
    EXPECT_NE(inspect.out.find("exceptions:          1193"), std::string::npos) << inspect.out;
    EXPECT_NE(inspect.out.find("highest_data_chunk:  1198"), std::string::npos) << inspect.out;
  }
}

TEST(SnapshotKernelImages, C8MergeMatchesKernel) {
  KernelVector v("c8");
  auto m = open_offline_merge(v.origin, v.cow, 8);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  auto before = dump_sha(**m, v.dir.file("view.out"));
  EXPECT_EQ(before, "f433ff650cb7b6119451ae5d0bebf2a3ae3acfbe1324544756985ee6849184f9");
  ASSERT_TRUE((*m)->run_merge().ok());
  EXPECT_EQ((*m)->status(), "16/32768 16");
  m->reset();
  EXPECT_EQ(sha256_file(v.origin), "f433ff650cb7b6119451ae5d0bebf2a3ae3acfbe1324544756985ee6849184f9");
  // The COW is the kernel's post-merge COW byte for byte (all areas zeroed).
  EXPECT_EQ(sha256_file(v.cow), "829219f24fda38d13879e45517f75661b7bdc2df23a8c329ff4ced6c31fd040d");
}

TEST(SnapshotKernelImages, MergeInterruptedAndResumed) {
  KernelVector v("c8");
  {
    auto m = open_offline_merge(v.origin, v.cow, 0);
    ASSERT_TRUE(m.ok());
    // Stop after the first batch (16 chunks), as a crash between
    // batches would.
    int batches = 0;
    MergeTarget* mp = m->get();
    mp->set_max_batch_bytes(16 * 4096);
    Status st = mp->run_merge([&](uint64_t) {
      if (++batches == 1) mp->presuspend();
    });
    ASSERT_TRUE(st.ok());
    EXPECT_GT(mp->remaining(), 0u);
  }
  auto m = open_offline_merge(v.origin, v.cow, 0);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  ASSERT_TRUE((*m)->run_merge().ok());
  m->reset();
  EXPECT_EQ(sha256_file(v.origin), "f433ff650cb7b6119451ae5d0bebf2a3ae3acfbe1324544756985ee6849184f9");
}

// ---- bad input: clear error, nothing written

struct BadCow {
  std::vector<uint8_t> cow;
  BadCow() : cow(64 * 4096, 0) {
    auto h = encode_header_chunk({kCowMagic, 1, 1, 8}, 4096);
    memcpy(cow.data(), h.data(), h.size());
  }
  void record(size_t i, uint64_t o, uint64_t n) {
    put_le64(cow.data() + 4096 + i * 16, o);
    put_le64(cow.data() + 4096 + i * 16 + 8, n);
  }
  Status load() {
    MapResolver r;
    r.devs["o"] = std::make_shared<MemoryDevice>(1 << 20);
    auto c = std::make_shared<MemoryDevice>(cow);
    r.devs["c"] = c;
    auto t = make("snapshot", {"o", "c", "P", "8"}, 1 << 20, &r);
    EXPECT_EQ(c->contents(), cow) << "a refused COW was written to";
    return t.ok() ? Status::Ok() : t.status();
  }
};

TEST(SnapshotBadInput, Refusals) {
  {
    BadCow b;
    b.cow[0] = 'X';
    auto s = b.load();
    EXPECT_NE(s.message().find("magic"), std::string::npos) << s.to_string();
  }
  {
    BadCow b;
    put_le32(b.cow.data() + 8, 2);
    EXPECT_NE(b.load().message().find("version"), std::string::npos);
  }
  {
    BadCow b;
    put_le32(b.cow.data() + 12, 12);
    EXPECT_NE(b.load().message().find("power of two"), std::string::npos);
  }
  {
    BadCow b;
    b.record(0, 3, 1000);  // COW has 64 chunks
    EXPECT_NE(b.load().message().find("past the end of the COW"), std::string::npos);
  }
  {
    BadCow b;
    b.record(0, 999, 2);  // origin has 256 chunks
    EXPECT_NE(b.load().message().find("past the end of the origin"), std::string::npos);
  }
  {
    BadCow b;
    b.record(0, 5, 2);
    b.record(1, 5, 3);
    EXPECT_NE(b.load().message().find("duplicate old_chunk"), std::string::npos);
  }
  {
    BadCow b;
    b.record(0, 5, 1);
    EXPECT_NE(b.load().message().find("metadata area"), std::string::npos);
  }
  {
    BadCow b;
    b.record(0, 5, 2);
    EXPECT_TRUE(b.load().ok());
  }
}

// The table lines are read by device/target_args.h: the kernel's syntax,
// errors naming the argument, nothing opened when a line is refused.
TEST(SnapshotBadInput, TableLines) {
  MapResolver r;
  r.devs["o"] = std::make_shared<MemoryDevice>(1 << 20);
  auto fresh_cow = [&] { r.devs["c"] = std::make_shared<MemoryDevice>(1 << 20); };
  for (auto ok : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"snapshot-origin", {"o"}},
           {"snapshot-origin", {"o", "1", "writeback"}},
           {"snapshot", {"o", "c", "P", "8"}},
           {"snapshot", {"o", "c", "p", "8"}},
           {"snapshot", {"o", "c", "po", "16"}},
           {"snapshot", {"o", "c", "N", "0"}},
           {"snapshot", {"o", "c", "P", "8", "0"}},
       }) {
    fresh_cow();
    auto t = make(ok.first, ok.second, 1 << 20, &r);
    EXPECT_TRUE(t.ok()) << ok.first << ": " << t.status().to_string();
  }
  struct Bad {
    std::string type;
    std::vector<std::string> args;
    int code;
    std::string msg;
  };
  for (const Bad& b : std::vector<Bad>{
           {"snapshot-origin", {}, EINVAL, "snapshot-origin: missing <origin>"},
           {"snapshot-origin", {"o", "x"}, EINVAL, "snapshot-origin: <#opt_args>: 'x' is not a decimal number"},
           {"snapshot-origin", {"o", "1", "writeback", "x"}, EINVAL, "says 1 but 2 optional arguments follow"},
           {"snapshot-origin", {"o", "1", "write_back"}, EINVAL, "write_back"},
           {"snapshot-origin", {"o", "2", "writeback"}, EINVAL, "snapshot-origin"},
           {"snapshot", {"o", "c", "P"}, EINVAL, "snapshot: missing <chunk_size>"},
           {"snapshot", {"o", "c", "Q", "8"}, EINVAL, "snapshot: <P|PO|N>: store type 'Q' must be P, PO or N"},
           {"snapshot", {"o", "c", "P", "x"}, EINVAL, "snapshot: <chunk_size>: 'x' is not a decimal number"},
           {"snapshot", {"o", "c", "P", "12"}, EINVAL,
            "snapshot: <chunk_size>: chunk size 12 sectors is not a power of two"},
           {"snapshot", {"o", "c", "P", "8", "2", "discard_zeroes_cow"}, EINVAL,
            "snapshot: <#opt_args>: says 2 but 1 optional argument follow"},
           {"snapshot", {"o", "c", "P", "8", "1", "discard_zeroes_cow"}, EOPNOTSUPP,
            "snapshot: feature argument 'discard_zeroes_cow' is not supported by udm"},
           {"snapshot", {"o", "c", "P", "8", "1", "discard_passdown_origin"}, EOPNOTSUPP,
            "snapshot: feature argument 'discard_passdown_origin' is not supported by udm"},
           {"snapshot", {"o", "c", "P", "8", "1", "frob"}, EINVAL, "snapshot: unknown optional argument 'frob'"},
           {"snapshot", {"o", "o", "P", "8"}, EINVAL, "snapshot: <cow>: the origin and the COW are the same device"},
           {"snapshot-merge", {"o", "c", "N", "8"}, EINVAL,
            "snapshot-merge: <P|PO>: a transient (N) store cannot be merged"},
           {"snapshot-merge", {"o", "c", "PN", "8"}, EINVAL, "snapshot-merge: <P|PO>: store type 'PN' must be P or PO"},
       }) {
    auto cow = std::make_shared<MemoryDevice>(1 << 20);
    r.devs["c"] = cow;
    auto t = make(b.type, b.args, 1 << 20, &r);
    ASSERT_FALSE(t.ok()) << b.msg;
    EXPECT_EQ(t.status().code(), b.code) << t.status().to_string();
    EXPECT_NE(t.status().message().find(b.msg), std::string::npos) << t.status().to_string();
    EXPECT_TRUE(cow->contents() == std::vector<uint8_t>(1 << 20, 0)) << "a refused line wrote the COW";
  }
}

// The origin registry keys on the resolver's identity of a spec, not on the
// spec's text: two specs the resolver calls the same device share one origin
// (an origin write through either saves the chunk into the snapshot), and so
// do two paths of one file through io::Resolver.
TEST(SnapshotTargets, OriginRegistryKeysOnTheResolversIdentity) {
  class AliasResolver : public MapResolver {
   public:
    Result<std::string> identity(const std::string& spec) override {
      return spec == "alias" ? std::string("dev:origin") : "dev:" + spec;
    }
  } r;
  auto origin = std::make_shared<MemoryDevice>(random_bytes(1 << 20, 5));
  const auto before = origin->contents();
  r.devs["origin"] = r.devs["alias"] = origin;
  r.devs["cow"] = std::make_shared<MemoryDevice>(1 << 20);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, 1 << 20, &r);
  auto o = make("snapshot-origin", {"alias"}, 1 << 20, &r);
  ASSERT_TRUE(s.ok() && o.ok());
  (*s)->resume();
  (*o)->resume();
  ASSERT_TRUE((*o)->write(4096, random_bytes(8192, 6)).ok());
  std::vector<uint8_t> got(1 << 20);
  ASSERT_TRUE((*s)->read(0, got).ok());
  EXPECT_TRUE(got == before) << "the write through the alias did not save into the snapshot";
  EXPECT_EQ((*s)->status(), "32/2048 16");  // two 4 KiB chunks saved
  auto same = make("snapshot", {"alias", "origin", "P", "8"}, 1 << 20, &r);
  ASSERT_FALSE(same.ok());
  EXPECT_NE(same.status().message().find("same device"), std::string::npos) << same.status().to_string();

  TempDir dir;
  const std::string path = dir.file("origin"), other = dir.path() + "/./origin";
  write_file(path, random_bytes(1 << 20, 7));
  write_file(dir.file("cow"), std::vector<uint8_t>(1 << 20, 0));
  const auto file_before = read_file(path);
  Resolver pr;
  auto fs = make("snapshot", {path, dir.file("cow"), "P", "8"}, 1 << 20, &pr);
  auto fo = make("snapshot-origin", {other}, 1 << 20, &pr);
  ASSERT_TRUE(fs.ok() && fo.ok()) << fs.status().to_string() << fo.status().to_string();
  (*fs)->resume();
  (*fo)->resume();
  ASSERT_TRUE((*fo)->write(0, random_bytes(4096, 8)).ok());
  ASSERT_TRUE((*fs)->read(0, got).ok());
  EXPECT_TRUE(got == file_before);
  EXPECT_EQ((*fs)->status(), "24/2048 16");
}

// ---- behaviour in process

TEST(SnapshotTargets, OriginWritesCopyIntoEverySnapshotAndMergeRollsBack) {
  const uint64_t kOrigin = 1 << 20;
  MapResolver r;
  auto origin = std::make_shared<MemoryDevice>(random_bytes(kOrigin, 1));
  auto before = origin->contents();
  r.devs["origin"] = origin;
  r.devs["cow1"] = std::make_shared<MemoryDevice>(1 << 20);
  r.devs["cow2"] = std::make_shared<MemoryDevice>(1 << 20);
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s1 = make("snapshot", {"origin", "cow1", "P", "8"}, kOrigin, &r);
  auto s2 = make("snapshot", {"origin", "cow2", "N", "16"}, kOrigin, &r);
  ASSERT_TRUE(o.ok() && s1.ok() && s2.ok());
  (*o)->resume();
  (*s1)->resume();
  (*s2)->resume();
  EXPECT_EQ((*s1)->status(), "16/2048 16");
  auto data = random_bytes(10000, 2);
  ASSERT_TRUE((*o)->write(12345, data).ok());
  ASSERT_TRUE((*o)->write(500000, std::span<const uint8_t>(data.data(), 512)).ok());
  // A snapshot write: partial chunk.
  auto sdata = random_bytes(700, 3);
  ASSERT_TRUE((*s1)->write(800000 + 100, sdata).ok());
  auto expect1 = before;
  memcpy(expect1.data() + 800100, sdata.data(), sdata.size());
  std::vector<uint8_t> got(kOrigin);
  ASSERT_TRUE((*s1)->read(0, got).ok());
  EXPECT_TRUE(got == expect1);
  ASSERT_TRUE((*s2)->read(0, got).ok());
  EXPECT_TRUE(got == before);
  ASSERT_TRUE((*o)->read(0, got).ok());
  EXPECT_EQ(memcmp(got.data() + 12345, data.data(), data.size()), 0);
  EXPECT_EQ((*s2)->status(), "48/2048 0");  // 8 KiB chunks 1, 2 and 61 copied
  // Reload s1 from disk: same view.
  auto cow1 = std::static_pointer_cast<MemoryDevice>(r.devs["cow1"]);
  r.devs["cow1copy"] = std::make_shared<MemoryDevice>(cow1->contents());
  {
    auto again = make("snapshot", {"origin", "cow1copy", "P", "0"}, kOrigin, &r);
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    ASSERT_TRUE((*again)->read(0, got).ok());
    EXPECT_TRUE(got == expect1);
  }
  // Merge s1 back: drop the snapshot, load snapshot-merge (hands over s1's state).
  auto m = make("snapshot-merge", {"origin", "cow1", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  (*m)->resume();
  ASSERT_TRUE((*m)->read(0, got).ok());
  EXPECT_TRUE(got == expect1);
  auto* mt = static_cast<MergeTarget*>(m->get());
  ASSERT_TRUE(mt->wait().ok());
  EXPECT_EQ((*m)->status(), "16/2048 16");
  EXPECT_TRUE(origin->contents() == expect1);
}

TEST(SnapshotTargets, FullCowInvalidatesSnapshotNotOrigin) {
  MapResolver r;
  auto origin = std::make_shared<MemoryDevice>(1 << 20);
  r.devs["origin"] = origin;
  r.devs["cow"] = std::make_shared<MemoryDevice>(8 * 4096);  // hdr + area + 5 data
  auto o = make("snapshot-origin", {"origin"}, 1 << 20, &r);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, 1 << 20, &r);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  std::vector<uint8_t> buf(4096, 7);
  for (int i = 0; i < 10; i++) ASSERT_TRUE((*o)->write(uint64_t(i) * 65536, buf).ok());
  EXPECT_EQ((*s)->status(), "Invalid");
  std::vector<uint8_t> got(4096);
  EXPECT_FALSE((*s)->read(0, got).ok());
  ASSERT_TRUE((*o)->read(9 * 65536, got).ok());
  EXPECT_TRUE(got == buf);
}

TEST(SnapshotTools, CowSize) {
  auto r = run({udm_bin(), "cow-size", "--chunk-size", "4096", "--changed-chunks", "256"});
  if (r.out.empty()) GTEST_SKIP() << "udm binary not built";
  // 1 + 1 + 256 + 1 chunks
  EXPECT_EQ(r.out, std::to_string(259 * 4096) + "\n") << r.describe();
}

// The COW udm writes is the kernel's layout byte for byte: 300 single-chunk
// commits (4 KiB chunks, 256 records per area) fill area 0 and start area 1;
// each area holds exactly the records in commit order and zeros after them
// (udm writes only the blocks with new records once it knows an area's tail
// is zero), the data chunks hold the old origin chunks.
TEST(SnapshotStore, CowLayoutAcrossAreasMatchesFullEncoding) {
  const uint64_t kCB = 4096, kOrigin = 512 * kCB;
  MapResolver r;
  auto base = random_bytes(kOrigin, 21);
  r.devs["origin"] = std::make_shared<MemoryDevice>(base);
  auto cow = std::make_shared<MemoryDevice>(320 * kCB);
  r.devs["cow"] = cow;
  auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
  auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(o.ok() && s.ok());
  (*o)->resume();
  (*s)->resume();
  std::vector<CowRecord> recs;
  std::vector<uint8_t> buf(512, 0xee);
  for (uint64_t i = 0; i < 300; i++) {
    uint64_t oc = (i * 37) % 512;  // distinct: 37 is odd
    uint64_t nc = 2 + i + (i >= 256 ? 1 : 0);  // chunk 258 is area 1
    recs.push_back({oc, nc});
    ASSERT_TRUE((*o)->write(oc * kCB + 1024, buf).ok());
  }
  auto img = cow->contents();
  auto area0 = encode_area(std::span<const CowRecord>(recs.data(), 256), kCB);
  auto area1 = encode_area(std::span<const CowRecord>(recs.data() + 256, 44), kCB);
  EXPECT_EQ(memcmp(img.data() + kCB, area0.data(), kCB), 0);
  EXPECT_EQ(memcmp(img.data() + 258 * kCB, area1.data(), kCB), 0);
  for (auto& rec : recs)
    ASSERT_EQ(memcmp(img.data() + rec.new_chunk * kCB, base.data() + rec.old_chunk * kCB, kCB), 0)
        << "data chunk " << rec.new_chunk;
  EXPECT_EQ((*s)->status(), std::to_string(303 * 8) + "/" + std::to_string(320 * 8) + " " +
                                std::to_string(3 * 8));
}

// A loaded area is rewritten whole on its first commit: bytes after the
// terminator never become records. The stray record sits in the first slot of
// the area's second 512-byte block, which a commit writing only the first
// block would leave in place: after 31 more records it would follow them.
TEST(SnapshotStore, LoadedAreaTailIsRewrittenBeforeItIsAppendedTo) {
  const uint64_t kCB = 4096, kOrigin = 64 * kCB;
  std::vector<uint8_t> img(48 * kCB, 0);
  auto h = encode_header_chunk({kCowMagic, 1, 1, 8}, kCB);
  memcpy(img.data(), h.data(), h.size());
  put_le64(img.data() + kCB, 5);       // record 0: origin chunk 5 in COW chunk 2
  put_le64(img.data() + kCB + 8, 2);
  put_le64(img.data() + kCB + 32 * 16, 60);  // stray bytes in slot 32
  put_le64(img.data() + kCB + 32 * 16 + 8, 40);
  auto base = random_bytes(kOrigin, 22);
  memset(img.data() + 2 * kCB, 0x55, kCB);  // the snapshot's chunk 5
  MapResolver r;
  auto origin = std::make_shared<MemoryDevice>(base);
  auto cow = std::make_shared<MemoryDevice>(img);
  r.devs["origin"] = origin;
  r.devs["cow"] = cow;
  auto expect = base;
  memset(expect.data() + 5 * kCB, 0x55, kCB);
  {
    auto o = make("snapshot-origin", {"origin"}, kOrigin, &r);
    auto s = make("snapshot", {"origin", "cow", "P", "8"}, kOrigin, &r);
    ASSERT_TRUE(o.ok() && s.ok()) << s.status().to_string();
    (*o)->resume();
    (*s)->resume();
    std::vector<uint8_t> buf(kCB, 1);
    for (uint64_t c = 10; c < 41; c++) ASSERT_TRUE((*o)->write(c * kCB, buf).ok());
  }
  r.devs["cow2"] = std::make_shared<MemoryDevice>(cow->contents());
  auto s = make("snapshot", {"origin", "cow2", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(static_cast<SnapshotTarget*>(s->get())->core().store().exception_count(), 32u);
  std::vector<uint8_t> got(kOrigin);
  ASSERT_TRUE((*s)->read(0, got).ok());
  EXPECT_TRUE(got == expect);
}

// ---- snapshot-origin with writeback

namespace {
std::string status_field(const std::string& status, const std::string& key) {
  auto p = status.find(key + "=");
  if (p == std::string::npos) return "";
  p += key.size() + 1;
  return status.substr(p, status.find(' ', p) - p);
}
}  // namespace

// A write some snapshot must save chunks for is held (the origin device and
// the snapshot's COW unchanged, reads of the origin see it); a flush saves
// the old chunks in one group commit and writes the origin; a snapshot
// attached while writes are held sees them; a snapshot reloaded as a merge
// rolls them back; partial-sector writes read-modify-write around the held
// unit; without a flush the buffer drains by itself within seconds.
TEST(SnapshotWriteback, HeldWritesAreSavedBeforeTheyReachTheOrigin) {
  const uint64_t kOrigin = 1 << 20;
  MapResolver r;
  auto origin = std::make_shared<MemoryDevice>(random_bytes(kOrigin, 11));
  const auto before = origin->contents();
  r.devs["origin"] = origin;
  r.devs["cow1"] = std::make_shared<MemoryDevice>(2 << 20);
  r.devs["cow2"] = std::make_shared<MemoryDevice>(2 << 20);
  auto o = make("snapshot-origin", {"origin", "1", "writeback"}, kOrigin, &r);
  auto s1 = make("snapshot", {"origin", "cow1", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(o.ok() && s1.ok());
  (*s1)->resume();
  (*o)->resume();
  const std::string s1_empty = (*s1)->status();
  auto expect = before;
  auto put = [&](uint64_t off, const std::vector<uint8_t>& d) {
    ASSERT_TRUE((*o)->write(off, d).ok());
    memcpy(expect.data() + off, d.data(), d.size());
  };
  put(4096 * 3, random_bytes(4096, 12));      // one whole unit
  put(4096 * 10 + 512, random_bytes(1024, 13));  // inside a unit
  put(4096 * 20 - 100, random_bytes(300, 14));   // across two units
  EXPECT_EQ(status_field((*o)->status(), "held"), std::to_string(4 * 4096));
  EXPECT_TRUE(origin->contents() == before) << "a held write reached the origin device";
  EXPECT_EQ((*s1)->status(), s1_empty) << "exceptions committed before a drain";
  std::vector<uint8_t> got(kOrigin);
  ASSERT_TRUE((*o)->read(0, got).ok());
  EXPECT_TRUE(got == expect) << "reads of the origin do not see the held writes";
  ASSERT_TRUE((*s1)->read(0, got).ok());
  EXPECT_TRUE(got == before);
  // A second snapshot attached now: the held writes came before it.
  auto s2 = make("snapshot", {"origin", "cow2", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(s2.ok());
  (*s2)->resume();
  EXPECT_EQ(status_field((*o)->status(), "held"), "0");
  EXPECT_TRUE(origin->contents() == expect);
  ASSERT_TRUE((*s2)->read(0, got).ok());
  EXPECT_TRUE(got == expect) << "the snapshot attached after held writes does not see them";
  ASSERT_TRUE((*s1)->read(0, got).ok());
  EXPECT_TRUE(got == before) << "the first snapshot lost its old chunks";
  // More writes, then a flush: both snapshots keep their views.
  const auto at_s2 = expect;
  put(4096 * 40, random_bytes(8192, 15));
  put(4096 * 3 + 7, random_bytes(9, 16));  // saved by snapshot 1, not by snapshot 2: held
  EXPECT_EQ(status_field((*o)->status(), "held"), std::to_string(3 * 4096));
  ASSERT_TRUE((*o)->flush().ok());
  EXPECT_EQ(status_field((*o)->status(), "held"), "0");
  EXPECT_TRUE(origin->contents() == expect);
  ASSERT_TRUE((*s1)->read(0, got).ok());
  EXPECT_TRUE(got == before);
  ASSERT_TRUE((*s2)->read(0, got).ok());
  EXPECT_TRUE(got == at_s2);
  put(4096 * 3 + 20, random_bytes(9, 19));  // saved by both now: straight to the origin
  EXPECT_EQ(status_field((*o)->status(), "held"), "0");
  EXPECT_TRUE(origin->contents() == expect);
  // Held again, then no flush: the buffer drains by itself.
  put(4096 * 60, random_bytes(4096, 17));
  EXPECT_EQ(status_field((*o)->status(), "held"), "4096");
  for (int i = 0; i < 100 && status_field((*o)->status(), "held") != "0"; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(status_field((*o)->status(), "held"), "0") << "held writes not drained after 5 s";
  EXPECT_TRUE(origin->contents() == expect);
  // Held writes, then snapshot 1 reloaded as a merge: rolled back to its view.
  put(4096 * 80, random_bytes(4096, 18));
  s1->reset();
  auto m = make("snapshot-merge", {"origin", "cow1", "P", "8"}, kOrigin, &r);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  (*m)->resume();
  ASSERT_TRUE(static_cast<MergeTarget*>(m->get())->wait().ok());
  ASSERT_TRUE((*o)->read(0, got).ok());
  EXPECT_TRUE(got == before) << "the merge did not roll back every held write";
  EXPECT_TRUE(origin->contents() == before);
}
