// The block-device contract (docs/architecture.md, "The contract"), checked
// for every target type over memory and over file backing devices. One
// parameterized suite: a new target adds one line to contract_cases().
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "contract/contract_util.h"

using namespace udm;
using namespace udm::contract;
using udm::test::random_bytes;

namespace {

struct Param {
  const Case* c;
  bool files;
  friend void PrintTo(const Param& p, std::ostream* os) { *os << p.c->name << (p.files ? " over files" : " over memory"); }
};

std::string param_name(const testing::TestParamInfo<Param>& i) {
  return i.param.c->name + (i.param.files ? "_file" : "_mem");
}

std::vector<Param> all_params() {
  std::vector<Param> out;
  for (const auto& c : contract_cases()) {
    out.push_back({&c, true});
    if (!c.file_only) out.push_back({&c, false});
  }
  return out;
}

// A model of the device's bytes; `known` is false where the contract leaves
// the contents unspecified (after an advisory trim that does not zero).
struct Model {
  std::vector<uint8_t> bytes;
  std::vector<bool> known;
  explicit Model(std::vector<uint8_t> b) : bytes(std::move(b)), known(bytes.size(), true) {}
  void put(uint64_t off, std::span<const uint8_t> d) {
    std::copy(d.begin(), d.end(), bytes.begin() + off);
    std::fill(known.begin() + off, known.begin() + off + d.size(), true);
  }
  void zero(uint64_t off, uint64_t len) {
    std::fill(bytes.begin() + off, bytes.begin() + off + len, 0);
    std::fill(known.begin() + off, known.begin() + off + len, true);
  }
  void forget(uint64_t off, uint64_t len) { std::fill(known.begin() + off, known.begin() + off + len, false); }
  // First byte where `got` (read at off) contradicts the model, or -1.
  int64_t mismatch(uint64_t off, std::span<const uint8_t> got) const {
    for (size_t i = 0; i < got.size(); i++)
      if (known[off + i] && got[i] != bytes[off + i]) return static_cast<int64_t>(off + i);
    return -1;
  }
};

class Contract : public testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    env_ = std::make_unique<Env>(GetParam().files);
    auto b = GetParam().c->make(*env_);
    ASSERT_TRUE(b.ok()) << b.status().to_string();
    built_ = std::move(*b);
    dev_ = built_.dev;
    ASSERT_EQ(dev_->size(), kDevSize);
    if (!built_.note.empty()) RecordProperty("note", built_.note);
  }
  void TearDown() override {
    if (built_.check) {
      EXPECT_EQ(built_.check(), "");
    }
    built_ = Built{};
    dev_.reset();
    env_.reset();
  }
  std::vector<uint8_t> read_all() {
    std::vector<uint8_t> v(kDevSize);
    Status s = dev_->read(0, v);
    EXPECT_TRUE(s.ok()) << s.to_string();
    return v;
  }
  Kind kind() const { return built_.kind; }

  std::unique_ptr<Env> env_;
  Built built_;
  MappedDevicePtr dev_;
};

TEST_P(Contract, CapsAreConsistent) {
  DeviceCaps c = dev_->caps();
  EXPECT_GE(c.logical_block, 512u);
  EXPECT_EQ(c.logical_block & (c.logical_block - 1), 0u) << "logical block not a power of two";
  EXPECT_EQ(c.physical_block % c.logical_block, 0u);
  EXPECT_GE(c.max_io, 1u << 20);
  if (c.trim_zeroes) {
    EXPECT_TRUE(c.can_trim) << "trim_zeroes without can_trim";
  }
  if (c.fast_zero) {
    EXPECT_TRUE(c.can_write_zeroes) << "fast_zero without can_write_zeroes";
  }
  EXPECT_EQ(c.read_only, kind() == Kind::kReadOnly) << "read_only must say whether writes are refused";
}

TEST_P(Contract, OutOfRangeIsRefusedAndHarmless) {
  std::vector<uint8_t> before = kind() == Kind::kErrors ? std::vector<uint8_t>{} : read_all();
  std::vector<uint8_t> buf(1024, 0xAB);
  EXPECT_EQ(dev_->read(kDevSize, std::span<uint8_t>(buf.data(), 512)).code(), EINVAL);
  EXPECT_EQ(dev_->read(kDevSize - 512, buf).code(), EINVAL);
  EXPECT_EQ(dev_->read(UINT64_MAX - 100, buf).code(), EINVAL);
  EXPECT_EQ(dev_->write(kDevSize - 512, buf).code(), EINVAL);
  EXPECT_EQ(dev_->write(UINT64_MAX - 511, std::span<const uint8_t>(buf.data(), 512)).code(), EINVAL);
  EXPECT_EQ(dev_->trim(kDevSize - 512, 1024).code(), EINVAL);
  EXPECT_EQ(dev_->write_zeroes(kDevSize - 512, 1024).code(), EINVAL);
  EXPECT_EQ(dev_->write_zeroes(kDevSize, 1, false, true).code(), EINVAL);
  if (kind() != Kind::kErrors) {
    EXPECT_EQ(read_all(), before) << "a refused request changed data";
  }
}

TEST_P(Contract, ReadOnlyRefusesEveryWrite) {
  if (kind() != Kind::kReadOnly) GTEST_SKIP() << "writable";
  std::vector<uint8_t> buf(4096, 0x5A);
  EXPECT_EQ(dev_->write(0, buf).code(), EROFS);
  EXPECT_EQ(dev_->write(8192, buf, true).code(), EROFS);
  EXPECT_EQ(dev_->write_zeroes(0, 65536).code(), EROFS);
  EXPECT_EQ(dev_->write_zeroes(0, 65536, false, true).code(), EROFS);
  Status t = dev_->trim(0, 65536);
  EXPECT_TRUE(t.code() == EROFS || t.code() == EOPNOTSUPP) << t.to_string();
  EXPECT_TRUE(dev_->flush().ok());
  EXPECT_EQ(read_all(), built_.expect);
}

TEST_P(Contract, ReadsAtAnySectorGranularity) {
  if (kind() == Kind::kErrors) {
    std::vector<uint8_t> b(512);
    EXPECT_EQ(dev_->read(0, b).code(), EIO);
    EXPECT_EQ(dev_->write(0, b).code(), EIO);
    GTEST_SKIP() << "every I/O fails by design";
  }
  auto whole = read_all();
  if (kind() == Kind::kReadOnly) {
    EXPECT_EQ(whole, built_.expect);
  } else if (kind() == Kind::kDropsWrites) {
    EXPECT_EQ(whole, std::vector<uint8_t>(kDevSize, 0));
  }
  std::mt19937_64 rng(1);
  for (int i = 0; i < 300; i++) {
    uint64_t off = (rng() % (kDevSize / 512)) * 512;
    uint64_t len = std::min<uint64_t>(((rng() % 160) + 1) * 512, kDevSize - off);
    std::vector<uint8_t> b(len);
    Status s = dev_->read(off, b);
    ASSERT_TRUE(s.ok()) << s.to_string();
    ASSERT_TRUE(std::equal(b.begin(), b.end(), whole.begin() + off)) << "read " << len << " at " << off;
  }
}

// Random writes (FUA or not), zero-outs (unmap allowed or not), advisory
// trims and flushes, at 512-byte granularity with offsets and lengths not
// aligned to any target block or chunk; every read is checked against a
// model of what the contract promises.
TEST_P(Contract, ReadAfterWriteZeroesTrimFlush) {
  if (kind() != Kind::kReadWrite && kind() != Kind::kDropsWrites)
    GTEST_SKIP() << "not writable";
  const bool drops = kind() == Kind::kDropsWrites;
  DeviceCaps caps = dev_->caps();
  Model m(read_all());
  std::mt19937_64 rng(GetParam().files ? 11 : 12);
  auto check = [&](uint64_t off, uint64_t len, int step) {
    std::vector<uint8_t> got(len);
    Status s = dev_->read(off, got);
    ASSERT_TRUE(s.ok()) << "step " << step << ": " << s.to_string();
    if (drops) {
      ASSERT_EQ(got, std::vector<uint8_t>(len, 0)) << "step " << step;
      return;
    }
    int64_t bad = m.mismatch(off, got);
    ASSERT_EQ(bad, -1) << "step " << step << ": byte " << bad << " (read " << len << " at " << off << ")";
  };
  int enospc = 0;
  for (int step = 0; step < 400; step++) {
    uint64_t off = (rng() % (kDevSize / 512)) * 512;
    uint64_t len = std::min<uint64_t>(((rng() % 96) + 1) * 512, kDevSize - off);
    int op = static_cast<int>(rng() % 20);
    Status s;
    if (op < 9) {
      auto data = random_bytes(len, rng());
      s = dev_->write(off, data, op == 0);
      if (s.ok()) m.put(off, data);
    } else if (op < 13) {
      bool unmap = op < 11;
      s = dev_->write_zeroes(off, len, op == 12, unmap);
      if (s.ok()) m.zero(off, len);
    } else if (op < 15) {
      s = dev_->trim(off, len);
      if (s.code() == EOPNOTSUPP) {
        EXPECT_FALSE(caps.can_trim) << "can_trim but trim is not supported";
        s = Status::Ok();
      } else if (s.ok()) {
        if (caps.trim_zeroes) m.zero(off, len);
        else m.forget(off, len);
      }
    } else if (op < 16) {
      s = dev_->flush();
    } else {
      ASSERT_NO_FATAL_FAILURE(check(off, len, step));
      continue;
    }
    if (s.code() == ENOSPC && built_.may_run_out) {
      // Out of space (bow's backups): refused before anything was written.
      enospc++;
      ASSERT_NO_FATAL_FAILURE(check(off, len, step));
      continue;
    }
    ASSERT_TRUE(s.ok()) << "step " << step << " op " << op << " at " << off << "+" << len << ": "
                        << s.to_string();
    ASSERT_NO_FATAL_FAILURE(check(off, len, step));
  }
  if (enospc) RecordProperty("enospc", enospc);
  ASSERT_TRUE(dev_->flush().ok());
  ASSERT_NO_FATAL_FAILURE(check(0, kDevSize, -1));
}

// Zero-outs read as zero at once, whatever the flags, including ranges that
// start and end inside a target block.
TEST_P(Contract, WriteZeroesReadsZero) {
  if (kind() != Kind::kReadWrite) GTEST_SKIP() << "not read-write";
  const uint64_t ranges[][2] = {{0, 512}, {4096, 4096}, {1536, 9728}, {65536 + 512, 131072 - 1024},
                                {kDevSize - 4608, 4608}};
  int i = 0;
  for (auto [off, len] : ranges) {
    auto data = random_bytes(len + 1024 <= kDevSize - off ? len + 1024 : len, 100 + i);
    ASSERT_TRUE(dev_->write(off, data).ok());
    bool unmap = i % 2 == 0;
    Status s = dev_->write_zeroes(off, len, i == 3, unmap);
    ASSERT_TRUE(s.ok()) << s.to_string();
    std::vector<uint8_t> got(data.size());
    ASSERT_TRUE(dev_->read(off, got).ok());
    for (size_t k = 0; k < got.size(); k++)
      ASSERT_EQ(got[k], k < len ? 0 : data[k]) << "range " << i << " byte " << k << " unmap=" << unmap;
    i++;
  }
}

// A trim is advisory, but a target that says trim_zeroes must zero every
// byte, and a trim never disturbs bytes outside its range.
TEST_P(Contract, TrimHonoursCaps) {
  if (kind() != Kind::kReadWrite) GTEST_SKIP() << "not read-write";
  DeviceCaps caps = dev_->caps();
  auto data = random_bytes(3 * 65536, 77);
  const uint64_t base = 65536;
  ASSERT_TRUE(dev_->write(base, data).ok());
  Status s = dev_->trim(base + 65536 + 512, 65536 - 1024);
  if (!caps.can_trim) {
    EXPECT_TRUE(s.ok() || s.code() == EOPNOTSUPP) << s.to_string();
  } else {
    ASSERT_TRUE(s.ok()) << s.to_string();
  }
  std::vector<uint8_t> got(data.size());
  ASSERT_TRUE(dev_->read(base, got).ok());
  for (size_t k = 0; k < got.size(); k++) {
    bool inside = k >= 65536 + 512 && k < 2 * 65536 - 512;
    if (!inside) {
      ASSERT_EQ(got[k], data[k]) << "byte " << k << " outside the trimmed range changed";
    } else if (s.ok() && caps.can_trim && caps.trim_zeroes) {
      ASSERT_EQ(got[k], 0) << "byte " << k;
    }
  }
}

TEST_P(Contract, FlushAndFuaSucceed) {
  if (kind() == Kind::kErrors) GTEST_SKIP() << "every I/O fails by design";
  EXPECT_TRUE(dev_->flush().ok());
  if (kind() == Kind::kReadOnly) return;
  auto data = random_bytes(8192, 5);
  ASSERT_TRUE(dev_->write(12288, data, true).ok());
  ASSERT_TRUE(dev_->write_zeroes(40960, 8192, true, false).ok());
  EXPECT_TRUE(dev_->flush().ok());
  std::vector<uint8_t> got(8192);
  ASSERT_TRUE(dev_->read(12288, got).ok());
  if (kind() == Kind::kReadWrite) {
    EXPECT_EQ(got, data);
  }
}

// Sector stamps: every 512-byte sector a writer writes names its offset and
// the write, and the rest of the sector is derived from both, so a reader can
// tell a whole sector of one write from a torn, misplaced or stale one.
void stamp(uint8_t* s, uint64_t off, uint64_t id) {
  std::mt19937_64 r(off * 0x9E3779B97F4A7C15ull ^ id);
  memcpy(s, &off, 8);
  memcpy(s + 8, &id, 8);
  for (int i = 16; i < 512; i += 8) {
    uint64_t v = r();
    memcpy(s + i, &v, 8);
  }
}
bool is_stamp(const uint8_t* s, uint64_t off) {
  uint64_t o, id;
  memcpy(&o, s, 8);
  memcpy(&id, s + 8, 8);
  if (o != off || id == 0) return false;
  uint8_t want[512];
  stamp(want, off, id);
  return memcmp(want, s, 512) == 0;
}

// Two writers and two readers on overlapping ranges. Over memory (whose
// calls are atomic) every sector a reader sees is the sector's original
// bytes or the whole sector of one write. A file in the page cache gives less
// (a pread racing a pwrite of the same page copies part of each: seen torn at
// 8-byte words), so over files a racing read may mix, word by word, the
// original and writes issued to that very sector, and nothing else; once the
// writers are done every sector is whole in both cases.
TEST_P(Contract, ConcurrentWritersAndReaders) {
  if (kind() == Kind::kErrors || kind() == Kind::kDropsWrites) GTEST_SKIP() << "no data to race on";
  const auto initial = read_all();
  const bool writable = kind() == Kind::kReadWrite;
  // Work on the first 256 KiB so ranges overlap often.
  const uint64_t span = 256 * 1024;
  std::atomic<uint64_t> next_id{1};
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::string first_bad;
  std::mutex bad_mu;
  auto fail = [&](std::string what) {
    if (bad++ == 0) {
      std::lock_guard lk(bad_mu);
      first_bad = std::move(what);
    }
  };
  const bool whole_sectors = !GetParam().files;
  std::mutex ids_mu;
  std::vector<std::vector<uint64_t>> ids(span / 512);  // writes issued per sector
  auto writer = [&](int seed) {
    std::mt19937_64 rng(seed);
    for (int i = 0; i < 300 && !bad; i++) {
      uint64_t off = (rng() % (span / 512)) * 512;
      uint64_t len = std::min<uint64_t>(((rng() % 32) + 1) * 512, span - off);
      uint64_t id = next_id++;
      {
        std::lock_guard lk(ids_mu);
        for (uint64_t k = off; k < off + len; k += 512) ids[k / 512].push_back(id);
      }
      std::vector<uint8_t> d(len);
      for (uint64_t k = 0; k < len; k += 512) stamp(d.data() + k, off + k, id);
      Status s = dev_->write(off, d, i % 50 == 0);
      if (!s.ok()) fail("write: " + s.to_string());
    }
  };
  auto reader = [&](int seed) {
    std::mt19937_64 rng(seed);
    while (!stop && !bad) {
      uint64_t off = (rng() % (span / 512)) * 512;
      uint64_t len = std::min<uint64_t>(((rng() % 64) + 1) * 512, span - off);
      std::vector<uint8_t> d(len);
      Status s = dev_->read(off, d);
      if (!s.ok()) return fail("read: " + s.to_string());
      for (uint64_t k = 0; k < len; k += 512) {
        const uint8_t* sec = d.data() + k;
        if (memcmp(sec, initial.data() + off + k, 512) == 0) continue;
        if (writable && is_stamp(sec, off + k)) continue;
        if (writable && !whole_sectors) {
          std::vector<uint64_t> cand;
          {
            std::lock_guard lk(ids_mu);
            cand = ids[(off + k) / 512];
          }
          bool ok = true;
          for (int word = 0; word < 512 && ok; word += 8) {
            ok = memcmp(sec + word, initial.data() + off + k + word, 8) == 0;
            for (size_t c = 0; c < cand.size() && !ok; c++) {
              uint8_t want[512];
              stamp(want, off + k, cand[c]);
              ok = memcmp(sec + word, want + word, 8) == 0;
            }
          }
          if (ok) continue;
        }
        if (getenv("UDM_CONTRACT_DEBUG")) {
          std::vector<uint64_t> cand;
          {
            std::lock_guard lk(ids_mu);
            cand = ids[(off + k) / 512];
          }
          std::string m;
          for (int w = 0; w < 512; w += 8) {
            char c = '?';
            if (memcmp(sec + w, initial.data() + off + k + w, 8) == 0) c = 'o';
            for (size_t ci = 0; ci < cand.size() && c == '?'; ci++) {
              uint8_t want[512];
              stamp(want, off + k, cand[ci]);
              if (memcmp(sec + w, want + w, 8) == 0) c = static_cast<char>('a' + ci % 26);
            }
            m += c;
          }
          fprintf(stderr, "sector %lu: %s (%zu candidates)\n", (unsigned long)(off + k), m.c_str(), cand.size());
        }
        return fail("sector at " + std::to_string(off + k) + " is neither original nor " +
                    (whole_sectors ? "one write's" : "made of writes to it"));
      }
    }
  };
  std::vector<std::thread> th;
  th.emplace_back(reader, 1);
  th.emplace_back(reader, 2);
  if (writable) {
    th.emplace_back(writer, 3);
    th.emplace_back(writer, 4);
  }
  if (writable) {
    th[2].join();
    th[3].join();
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  stop = true;
  th[0].join();
  th[1].join();
  ASSERT_EQ(bad.load(), 0) << first_bad;
  // After the storm: stable, and every sector original or one write's.
  ASSERT_TRUE(dev_->flush().ok());
  auto a = read_all(), b = read_all();
  ASSERT_EQ(a, b) << "reads are not stable after the writers stopped";
  for (uint64_t k = 0; k < span; k += 512)
    ASSERT_TRUE(memcmp(a.data() + k, initial.data() + k, 512) == 0 || is_stamp(a.data() + k, k))
        << "sector " << k;
  ASSERT_TRUE(std::equal(a.begin() + span, a.end(), initial.begin() + span)) << "bytes past the range changed";
}

INSTANTIATE_TEST_SUITE_P(AllTargets, Contract, testing::ValuesIn(all_params()), param_name);

}  // namespace
namespace {
// Regular-file users of the FUSE export (and NBD clients that never agreed
// on block sizes) send requests at any byte offset and length.
TEST_P(Contract, ByteGranularReadsAndWrites) {
  if (kind() != Kind::kReadWrite && kind() != Kind::kReadOnly) GTEST_SKIP();
  Model m(read_all());
  std::mt19937_64 rng(21);
  for (int step = 0; step < 200; step++) {
    uint64_t off = rng() % (kDevSize - 70000);
    uint64_t len = 1 + rng() % 66000;
    if (kind() == Kind::kReadWrite && step % 2 == 0) {
      auto data = random_bytes(len, rng());
      Status s = dev_->write(off, data);
      if (!(s.code() == ENOSPC && built_.may_run_out)) {  // refused: nothing written (read below)
        ASSERT_TRUE(s.ok()) << "write " << len << " at " << off << ": " << s.to_string();
        m.put(off, data);
      }
    }
    std::vector<uint8_t> got(len);
    Status s = dev_->read(off, got);
    ASSERT_TRUE(s.ok()) << "read " << len << " at " << off << ": " << s.to_string();
    ASSERT_EQ(m.mismatch(off, got), -1) << "read " << len << " at " << off;
  }
  ASSERT_EQ(m.mismatch(0, read_all()), -1);
}

// The allocation map (NBD block status, FUSE SEEK_HOLE) never says "zero" or
// "hole" for a byte that does not read as zero, covers what it describes
// exactly, and describes at least one byte of every range asked for; before
// and after writes, zero-outs (both flags) and trims, at whole-device and
// unaligned ranges.
TEST_P(Contract, AllocationMapIsTruthful) {
  auto check = [&](uint64_t off, uint64_t len, const std::string& when) {
    uint64_t pos = off;
    AllocMap m;
    while (pos < off + len) {
      Status s = dev_->allocation(pos, off + len - pos, m);
      ASSERT_TRUE(s.ok()) << when << ": " << s.to_string();
      ASSERT_FALSE(m.empty()) << when << " at " << pos;
      uint64_t sum = 0;
      for (const auto& r : m) {
        ASSERT_GT(r.length, 0u) << when;
        if (r.kind != AllocKind::kData && kind() != Kind::kErrors) {
          std::vector<uint8_t> got(r.length);
          ASSERT_TRUE(dev_->read(pos + sum, got).ok()) << when;
          ASSERT_EQ(got, std::vector<uint8_t>(r.length, 0))
              << when << ": run " << int(r.kind) << " at " << pos + sum << "+" << r.length;
        }
        if (r.kind == AllocKind::kHole) {
          ASSERT_EQ(r.depth, 0u) << when;
        }
        sum += r.length;
      }
      ASSERT_LE(sum, off + len - pos) << when;
      pos += sum;
    }
  };
  ASSERT_NO_FATAL_FAILURE(check(0, kDevSize, "initial"));
  if (kind() == Kind::kDropsWrites || kind() == Kind::kErrors) return;
  std::mt19937_64 rng(31);
  const bool writable = kind() == Kind::kReadWrite;
  for (int step = 0; step < 60; step++) {
    uint64_t off = (rng() % (kDevSize / 512)) * 512;
    uint64_t len = std::min<uint64_t>(((rng() % 256) + 1) * 512, kDevSize - off);
    if (writable) {
      int op = static_cast<int>(rng() % 4);
      Status s;
      if (op == 0) s = dev_->write(off, random_bytes(len, rng()));
      else if (op == 1) s = dev_->write(off, std::vector<uint8_t>(len, 0));
      else if (op == 2) s = dev_->write_zeroes(off, len, false, rng() % 2);
      else s = dev_->trim(off, len);
      ASSERT_TRUE(s.ok() || s.code() == EOPNOTSUPP || (s.code() == ENOSPC && built_.may_run_out))
          << s.to_string();
    }
    uint64_t qo = rng() % kDevSize;
    uint64_t ql = 1 + rng() % std::min<uint64_t>(kDevSize - qo, 300000);
    ASSERT_NO_FATAL_FAILURE(check(qo, ql, "step " + std::to_string(step)));
  }
  ASSERT_NO_FATAL_FAILURE(check(0, kDevSize, "final"));
}

// What the fixture knows to be zeroed or unmapped, the map says so: a target
// answering "all data" where it could know better fails here. Over files only
// where the knowledge comes from the backing files' holes.
TEST_P(Contract, AllocationMapKnowsTheFixturesZeroes) {
  auto ranges = built_.sparse;
  if (GetParam().files) {
    int fd = ::open(env_->path("probe").c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
    ASSERT_EQ(::pwrite(fd, "x", 1, 65536), 1);
    bool holes = ::lseek(fd, 0, SEEK_DATA) > 0;
    ::close(fd);
    if (holes) ranges.insert(ranges.end(), built_.sparse_over_files.begin(), built_.sparse_over_files.end());
  }
  if (ranges.empty()) GTEST_SKIP() << "the fixture has no range this target can know to be zero";
  for (auto [a, e] : ranges) {
    uint64_t pos = a;
    while (pos < e) {
      AllocMap m;
      ASSERT_TRUE(dev_->allocation(pos, e - pos, m).ok());
      ASSERT_FALSE(m.empty());
      for (const auto& r : m) {
        EXPECT_NE(r.kind, AllocKind::kData) << "data at " << pos << "+" << r.length << " inside [" << a << ", " << e << ")";
        pos += r.length;
      }
    }
    std::vector<uint8_t> got(e - a);
    ASSERT_TRUE(dev_->read(a, got).ok());
    EXPECT_EQ(got, std::vector<uint8_t>(e - a, 0));
  }
}
}  // namespace

namespace {

class Durability : public testing::TestWithParam<const DurableCase*> {};

std::string durable_name(const testing::TestParamInfo<const DurableCase*>& i) { return i.param->name; }

std::vector<const DurableCase*> durable_params() {
  std::vector<const DurableCase*> out;
  for (const auto& c : durable_cases()) out.push_back(&c);
  return out;
}

// What a completed flush or FUA write promises survives a power cut (every
// unflushed write on the disks dropped): sectors written since the last
// flush may read old or new, every other sector reads as the model.
TEST_P(Durability, FlushAndFuaSurvivePowerCut) {
  const DurableCase& c = *GetParam();
  for (int round = 0; round < 3; round++) {
    auto env = Env::faulty();
    auto dev = c.boot(*env, true);
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    ASSERT_TRUE((*dev)->flush().ok());  // the set-up is durable: the model starts here
    std::vector<uint8_t> model((*dev)->size());
    ASSERT_TRUE((*dev)->read(0, model).ok());
    std::vector<uint8_t> durable = model;
    std::vector<bool> dirty(model.size() / 512, false);
    std::mt19937_64 rng(round + 1);
    const int ops = 40 + round * 30;
    for (int i = 0; i < ops; i++) {
      uint64_t off = (rng() % (kDevSize / 512)) * 512;
      uint64_t len = std::min<uint64_t>(((rng() % 24) + 1) * 512, kDevSize - off);
      int op = static_cast<int>(rng() % 10);
      if (op < 6) {
        auto d = random_bytes(len, rng());
        bool fua = op == 0;
        ASSERT_TRUE((*dev)->write(off, d, fua).ok());
        std::copy(d.begin(), d.end(), model.begin() + off);
        for (uint64_t s = off / 512; s < (off + len) / 512; s++) dirty[s] = !fua;
        if (fua) std::copy(d.begin(), d.end(), durable.begin() + off);
      } else if (op < 8) {
        bool fua = op == 6;
        ASSERT_TRUE((*dev)->write_zeroes(off, len, fua, op == 7).ok());
        std::fill(model.begin() + off, model.begin() + off + len, 0);
        for (uint64_t s = off / 512; s < (off + len) / 512; s++) dirty[s] = !fua;
        if (fua) std::fill(durable.begin() + off, durable.begin() + off + len, 0);
      } else {
        ASSERT_TRUE((*dev)->flush().ok());
        durable = model;
        std::fill(dirty.begin(), dirty.end(), false);
      }
    }
    env->cut_power();
    auto env2 = env->reboot();
    dev = Result<MappedDevicePtr>(Status::Error(EIO, "gone"));
    env.reset();
    auto dev2 = c.boot(*env2, false);
    ASSERT_TRUE(dev2.ok()) << "round " << round << ": " << dev2.status().to_string();
    std::vector<uint8_t> got((*dev2)->size());
    ASSERT_TRUE((*dev2)->read(0, got).ok());
    for (uint64_t s = 0; s < dirty.size(); s++) {
      if (dirty[s]) continue;
      ASSERT_TRUE(memcmp(got.data() + s * 512, durable.data() + s * 512, 512) == 0)
          << "round " << round << ": sector " << s << " lost a flushed or FUA write";
    }
    if (c.check) {
      EXPECT_EQ(c.check(*env2), "") << "round " << round;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, Durability, testing::ValuesIn(durable_params()), durable_name);

}  // namespace

namespace {
// Zero-copy reads (BlockDevice::direct_extent, what the FUSE and NBD exports
// splice from): whatever a device answers is exactly its bytes, before and
// after writes through it, at unaligned offsets; the extent is a non-empty
// prefix of the range asked. Only linear over files must answer at all;
// every other target may keep the default "no".
TEST_P(Contract, DirectExtentsAreTheDevicesBytes) {
  if (kind() == Kind::kErrors) {
    // An error target has no bytes to point at.
    auto r = dev_->direct_extent(0, 4096, [](const DirectExtent&) { return Status::Ok(); });
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(*r);
    return;
  }
  std::mt19937_64 rng(33);
  int answered = 0;
  auto probe = [&](uint64_t off, uint64_t len) {
    std::vector<uint8_t> want(len);
    ASSERT_TRUE(dev_->read(off, want).ok());
    bool called = false;
    auto r = dev_->direct_extent(off, len, [&](const DirectExtent& e) {
      called = true;
      EXPECT_GE(e.fd, 0);
      EXPECT_GE(e.length, 1u);
      EXPECT_LE(e.length, len);
      std::vector<uint8_t> got(e.length);
      EXPECT_EQ(pread(e.fd, got.data(), got.size(), static_cast<off_t>(e.file_offset)),
                static_cast<ssize_t>(got.size()));
      EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << "direct extent at " << off << "+" << e.length;
      return Status::Ok();
    });
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(*r, called);
    if (*r) answered++;
  };
  for (int step = 0; step < 100; step++) {
    uint64_t off = rng() % (kDevSize - 70000);
    uint64_t len = 1 + rng() % 66000;
    if (kind() == Kind::kReadWrite && step % 2 == 0) {
      auto data = random_bytes(len, rng());
      Status s = dev_->write(off, data);
      if (!(s.code() == ENOSPC && built_.may_run_out)) {
        ASSERT_TRUE(s.ok()) << s.to_string();
      }
    }
    probe(off, len);
  }
  probe(0, kDevSize);
  probe(kDevSize - 1, 1);
  // A callback's error is the call's error.
  auto r = dev_->direct_extent(0, 512, [](const DirectExtent&) { return IoError("from the callback"); });
  if (!r.ok()) {
    EXPECT_EQ(r.status().code(), EIO);
  } else {
    EXPECT_FALSE(*r) << "the callback ran but its error was lost";
  }
  EXPECT_EQ(dev_->direct_extent(kDevSize, 1, [](const DirectExtent&) { return Status::Ok(); }).status().code(),
            EINVAL);
  if (GetParam().c->name == "linear" && GetParam().files) {
    EXPECT_GT(answered, 0) << "linear over files never answered";
  }
  if (!GetParam().files) {
    EXPECT_EQ(answered, 0) << "memory devices have no file to point at";
  }
}
}  // namespace
