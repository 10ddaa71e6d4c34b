// Power cut while a diff is being written (v0 and v1 generators, through
// io/grow_file.h): for every write N the power goes (FaultGrowFile's
// disk: cut_after_writes), and what the disk kept is the durable file plus ANY
// subset of the writes since the last completed sync (a disk persists what
// it pleases of its volatile cache). Every such file must be refused by the
// loader or be the complete diff — never a diff that loads and is not the
// one the generator meant to write.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "io/fault_grow_file.h"
#include "io/grow_file.h"
#include "io/memory_device.h"
#include "update/apply_v1.h"
#include "update/differ.h"
#include "update/format.h"
#include "update/format_v0.h"
#include "update/format_v1.h"
#include "update_util.h"

using namespace udm;
using namespace udm::test;
using namespace udm::update;

namespace {

// Passes everything to a FaultGrowFile and remembers the writes made since
// the last sync that completed. The FaultGrowFile's disk cuts the power at a write
// (cut_after_writes); cut_at_sync(k) cuts it instead when the k-th sync is
// asked for (every write done, none of them flushed yet).
class RecordingFile : public GrowFile {
 public:
  explicit RecordingFile(FaultGrowFile& m) : m_(m) {}
  void cut_at_sync(int64_t k) { sync_budget_ = k; }
  uint64_t size() const override { return m_.size(); }
  Status pread(uint64_t off, std::span<uint8_t> buf) override { return m_.pread(off, buf); }
  Status pwrite(uint64_t off, std::span<const uint8_t> buf) override {
    if (dead_) return IoError("power cut");
    Status s = m_.pwrite(off, buf);
    if (s.ok()) pending_.push_back({off, std::vector<uint8_t>(buf.begin(), buf.end())});
    writes_ += s.ok();
    return s;
  }
  Status sync() override {
    if (dead_ || sync_budget_ == 0) {
      dead_ = true;
      return IoError("power cut");
    }
    if (sync_budget_ > 0) sync_budget_--;
    Status s = m_.sync();
    if (s.ok()) pending_.clear();
    return s;
  }
  size_t pending() const { return pending_.size(); }
  int64_t writes() const { return writes_; }
  // The durable file with the pending writes whose bit is set in `keep`.
  std::vector<uint8_t> torn(const std::vector<bool>& keep) const {
    std::vector<uint8_t> f = m_.durable();
    for (size_t i = 0; i < pending_.size(); i++) {
      if (!keep[i]) continue;
      const auto& [off, bytes] = pending_[i];
      if (f.size() < off + bytes.size()) f.resize(off + bytes.size());
      std::memcpy(f.data() + off, bytes.data(), bytes.size());
    }
    return f;
  }
  // Subsets worth trying: none, all, each write alone, all but each one,
  // and a few random ones.
  std::vector<std::vector<bool>> subsets(uint64_t seed) const {
    const size_t n = pending_.size();
    std::vector<std::vector<bool>> out{std::vector<bool>(n, false), std::vector<bool>(n, true)};
    for (size_t i = 0; i < n; i++) {
      std::vector<bool> one(n, false), but(n, true);
      one[i] = true;
      but[i] = false;
      out.push_back(one);
      out.push_back(but);
    }
    std::mt19937_64 rng(seed);
    for (int k = 0; k < 8 && n > 1; k++) {
      std::vector<bool> r(n);
      for (size_t i = 0; i < n; i++) r[i] = rng() & 1;
      out.push_back(r);
    }
    return out;
  }

 private:
  FaultGrowFile& m_;
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> pending_;
  int64_t writes_ = 0;
  int64_t sync_budget_ = -1;
  bool dead_ = false;
};

// What the loader makes of a file the power cut left.
enum class Outcome { Refused, Complete, Previous, Wrong };

struct Judge {
  std::vector<uint8_t> want;      // the complete diff
  std::vector<uint8_t> previous;  // what the file held before (may be empty)
  Outcome operator()(const std::vector<uint8_t>& f) const {
    // Loaded as a reader would: by the version byte.
    auto v = probe_diff_version(f, f.size());
    bool loads = v.ok() && (*v == 0 ? load_diff_bytes(f).ok() : load_v1_bytes(f).ok());
    if (!loads) return Outcome::Refused;
    // A longer file is fine (the tail of what it held before): the diff is
    // what its header describes, and that must be all there.
    auto is = [&](const std::vector<uint8_t>& d) {
      return !d.empty() && f.size() >= d.size() && std::equal(d.begin(), d.end(), f.begin());
    };
    if (is(want)) return Outcome::Complete;
    if (is(previous)) return Outcome::Previous;
    return Outcome::Wrong;
  }
};

struct SweepCounts {
  int refused = 0, complete = 0, previous = 0, wrong = 0, cuts = 0;
};

// Runs `write` into a FaultGrowFile holding `init`, the power cut after every
// write N until a run completes, then at every sync K; judges every torn file.
template <class Write>
SweepCounts sweep(const Judge& judge, const std::vector<uint8_t>& init, Write write) {
  SweepCounts c;
  for (int64_t n = 0, at_sync = 0;; n++) {
    SCOPED_TRACE((at_sync ? "power cut at sync " : "power cut after write ") + std::to_string(n));
    FaultGrowFile m(std::make_shared<FaultDisk>(), init);
    RecordingFile f(m);
    if (at_sync) f.cut_at_sync(n);
    else m.disk().cut_after_writes(static_cast<uint64_t>(n));
    Status s = write(f);
    for (const auto& keep : f.subsets(static_cast<uint64_t>(n))) {
      switch (judge(f.torn(keep))) {
        case Outcome::Refused: c.refused++; break;
        case Outcome::Complete: c.complete++; break;
        case Outcome::Previous: c.previous++; break;
        case Outcome::Wrong:
          c.wrong++;
          ADD_FAILURE() << "a file that loads as a diff but is neither the new diff nor the previous file ("
                        << f.pending() << " writes pending)";
          break;
      }
    }
    if (s.ok()) {
      // The run that was not cut: everything durable, exactly the diff.
      EXPECT_EQ(f.pending(), 0u);
      EXPECT_TRUE(m.durable() == m.contents());
      EXPECT_EQ(judge(m.durable()), Outcome::Complete);
      if (at_sync) break;
      at_sync = 1;  // now the same at every sync
      n = -1;
      continue;
    }
    EXPECT_EQ(s.code(), EIO) << s.to_string();
    c.cuts++;
    if (n > 100000) {
      ADD_FAILURE() << "the writer never completed";
      break;
    }
  }
  return c;
}

std::vector<uint8_t> v0_diff(const std::vector<uint8_t>& o, const std::vector<uint8_t>& n, const DiffOptions& opt) {
  MemoryDevice od(o, true), nd(n, true);
  FaultGrowFile f;
  auto st = make_diff(od, nd, f, opt);
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  return f.durable();
}

std::vector<uint8_t> v1_diff(const std::vector<uint8_t>& o, const std::vector<uint8_t>& n, const DiffV1Options& opt) {
  FaultGrowFile f;
  auto st = make_diff_v1(o, n, f, opt);
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  return f.durable();
}

// The diff's content, decoded: the new image.
void expect_v0_gives(const std::vector<uint8_t>& diff, const std::vector<uint8_t>& old_img,
                     const std::vector<uint8_t>& new_img) {
  auto idx = load_diff_bytes(diff);
  ASSERT_TRUE(idx.ok()) << idx.status().to_string();
  std::vector<uint8_t> img = old_img, chunk(idx->chunk_bytes());
  const uint64_t bs = idx->block_size();
  for (size_t ci = 0; ci < idx->chunks.size(); ci++) {
    const Chunk& c = idx->chunks[ci];
    ASSERT_TRUE(decode_v0_chunk(*idx, ci, std::span<const uint8_t>(diff.data() + c.src, c.length), chunk).ok());
    for (uint32_t i = 0; i < c.n_entries; i++) {
      const Entry& e = idx->entries[c.first_entry + i];
      std::memcpy(img.data() + e.dest * bs, chunk.data() + uint64_t{e.offset} * bs, bs);
    }
  }
  EXPECT_TRUE(img == new_img);
}

void expect_v1_gives(const std::vector<uint8_t>& diff, const std::vector<uint8_t>& old_img,
                     const std::vector<uint8_t>& new_img) {
  MemoryDevice d(diff, true), sys(old_img);
  auto idx = load_v1_bytes(diff);
  ASSERT_TRUE(idx.ok()) << idx.status().to_string();
  auto blocks = v1_compute_all(d, sys, *idx);
  ASSERT_TRUE(blocks.ok()) << blocks.status().to_string();
  ASSERT_TRUE(v1_write_all(sys, *idx, *blocks).ok());
  EXPECT_TRUE(sys.contents() == new_img);
}

}  // namespace

TEST(UpdateWriterPowerCut, V0NeverLeavesAWrongDiff) {
  const uint32_t bs = 4096;
  const auto pair = make_pair_images(bs * 96, bs, 40, 5);  // (no structured bindings: lambdas capture them)
  const auto& old_img = pair.first;
  const auto& new_img = pair.second;
  DiffOptions opt;
  opt.progress = false;
  opt.chunk_blocks = 2;  // many chunks, many writes
  Judge judge{v0_diff(old_img, new_img, opt), {}};
  expect_v0_gives(judge.want, old_img, new_img);
  auto c = sweep(judge, {}, [&](GrowFile& f) {
    MemoryDevice od(old_img, true), nd(new_img, true);
    return make_diff(od, nd, f, opt).status();
  });
  EXPECT_EQ(c.wrong, 0);
  EXPECT_GT(c.cuts, 10);
  EXPECT_GT(c.refused, 0);
  EXPECT_GT(c.complete, 0);  // cut after the header's write: whether it lands or not
}

TEST(UpdateWriterPowerCut, V1NeverLeavesAWrongDiff) {
  const uint32_t bs = 4096;
  const auto pair = make_v1_pair(200, bs, 7);
  const auto& old_img = pair.first;
  const auto& new_img = pair.second;
  DiffV1Options opt;
  opt.progress = false;
  opt.level = 3;
  opt.chunk_blocks = 4;
  Judge judge{v1_diff(old_img, new_img, opt), {}};
  expect_v1_gives(judge.want, old_img, new_img);
  auto c = sweep(judge, {}, [&](GrowFile& f) { return make_diff_v1(old_img, new_img, f, opt).status(); });
  EXPECT_EQ(c.wrong, 0);
  EXPECT_GT(c.cuts, 10);
  EXPECT_GT(c.refused, 0);
  EXPECT_GT(c.complete, 0);
}

// Writing over a file that holds another diff (a block device, or a file
// the caller did not empty): it loads as that diff until the new header is
// durable, never as a mix of the two.
TEST(UpdateWriterPowerCut, OverAnotherDiff) {
  const uint32_t bs = 4096;
  const auto p1 = make_v1_pair(200, bs, 8);
  const auto& o1 = p1.first;
  const auto& n1 = p1.second;
  auto [o2, n2] = make_v1_pair(120, bs, 9);
  DiffV1Options opt;
  opt.progress = false;
  opt.level = 3;
  opt.chunk_blocks = 4;
  DiffOptions opt0;
  opt0.progress = false;
  opt0.chunk_blocks = 2;
  const auto prev_v1 = v1_diff(o2, n2, opt), prev_v0 = v0_diff(o2, n2, opt0);
  for (const auto& prev : {prev_v1, prev_v0}) {
    Judge j1{v1_diff(o1, n1, opt), prev};
    auto c = sweep(j1, prev, [&](GrowFile& f) { return make_diff_v1(o1, n1, f, opt).status(); });
    EXPECT_EQ(c.wrong, 0);
    EXPECT_GT(c.previous, 0);
    EXPECT_GT(c.refused, 0);
    EXPECT_GT(c.complete, 0);
    Judge j0{v0_diff(o1, n1, opt0), prev};
    c = sweep(j0, prev, [&](GrowFile& f) {
      MemoryDevice od(o1, true), nd(n1, true);
      return make_diff(od, nd, f, opt0).status();
    });
    EXPECT_EQ(c.wrong, 0);
    EXPECT_GT(c.previous, 0);
    EXPECT_GT(c.refused, 0);
    EXPECT_GT(c.complete, 0);
  }
}

// The judge itself: a writer that puts the header first and syncs once at
// the end (what update-diff did before it wrote through GrowFile) leaves
// files that load and are not the diff — the sweep must see them.
TEST(UpdateWriterPowerCut, SweepCatchesAHeaderFirstWriter) {
  const uint32_t bs = 4096;
  auto [old_img, new_img] = make_v1_pair(200, bs, 7);
  DiffV1Options opt;
  opt.progress = false;
  opt.level = 3;
  opt.chunk_blocks = 4;
  Judge judge{v1_diff(old_img, new_img, opt), {}};
  auto idx = load_v1_bytes(judge.want);
  ASSERT_TRUE(idx.ok());
  const uint64_t head = idx->h.data_offset;
  auto header_first = [&](GrowFile& f) -> Status {
    const auto& d = judge.want;
    UDM_TRY(f.pwrite(0, std::span<const uint8_t>(d.data(), head)));
    for (uint64_t off = head; off < d.size(); off += 4096)
      UDM_TRY(f.pwrite(off, std::span<const uint8_t>(d.data() + off, std::min<uint64_t>(4096, d.size() - off))));
    return f.sync();
  };
  FaultGrowFile m;
  RecordingFile f(m);
  f.cut_at_sync(0);  // every write done, the sync that would make them durable not
  ASSERT_FALSE(header_first(f).ok());
  int wrong = 0;
  for (const auto& keep : f.subsets(1)) wrong += judge(f.torn(keep)) == Outcome::Wrong;
  EXPECT_GT(wrong, 0) << "the sweep would not notice a writer that exposes its header early";
  // The same sweep over the real writer finds nothing (V1NeverLeavesAWrongDiff).
}
