// Unit tests: the range map against a naive model, and the log format.
#include <gtest/gtest.h>

#include <random>

#include "bow/bow_format.h"
#include "bow/range_map.h"
#include "util/crc.h"
#include "util/endian.h"

using namespace udm;
using namespace udm::bow;

TEST(RangeMap, RandomOpsMatchNaiveModel) {
  constexpr uint64_t n = 300;
  RangeMap m(n, BlockType::kUnchanged);
  std::vector<BlockType> model(n, BlockType::kUnchanged);
  std::mt19937_64 g(1);
  for (int op = 0; op < 5000; op++) {
    uint64_t a = g() % n, b = a + 1 + g() % 20;
    auto t = static_cast<BlockType>(g() % kBlockTypes);
    m.set(a, b, t);
    for (uint64_t i = a; i < std::min(b, n); i++) model[i] = t;
    ASSERT_TRUE(m.check()) << "op " << op;
    uint64_t q = g() % n;
    ASSERT_EQ(m.at(q), model[q]);
    // runs() covers the range exactly with the model's types.
    uint64_t qa = g() % n, qb = std::min(n, qa + 1 + g() % 40), pos = qa;
    for (const bow::Run& r : m.runs(qa, qb)) {
      ASSERT_EQ(r.start, pos);
      for (uint64_t i = r.start; i < r.end; i++) ASSERT_EQ(model[i], r.type);
      pos = r.end;
    }
    ASSERT_EQ(pos, qb);
  }
  uint64_t frees = std::count(model.begin(), model.end(), BlockType::kFree);
  EXPECT_EQ(m.count(BlockType::kFree), frees);
}

TEST(RangeMap, FindFreeIsNextFitAndOnlyReturnsFreeBlocks) {
  RangeMap m(100, BlockType::kUnchanged);
  m.set(10, 20, BlockType::kFree);
  m.set(50, 55, BlockType::kFree);
  auto a = m.find_free(4);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->start, 10u);
  EXPECT_EQ(a->end, 14u);
  m.set(a->start, a->end, BlockType::kBackup);
  auto b = m.find_free(100);  // rest of the run, not beyond it
  ASSERT_TRUE(b);
  EXPECT_EQ(b->start, 14u);
  EXPECT_EQ(b->end, 20u);
  m.set(b->start, b->end, BlockType::kBackup);
  auto c = m.find_free(100);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->start, 50u);
  m.set(c->start, c->end, BlockType::kBackup);
  EXPECT_FALSE(m.find_free(1));
  EXPECT_EQ(m.count(BlockType::kFree), 0u);
  m.set(5, 6, BlockType::kFree);  // wraps around to an earlier run
  auto d = m.find_free(1);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->start, 5u);
  EXPECT_TRUE(m.check());
}

TEST(RangeMap, ManyRunsStayFast) {
  // 200k alternating runs: operations are logarithmic (this would crawl with
  // the prototype's linear searches).
  constexpr uint64_t n = 400000;
  RangeMap m(n, BlockType::kUnchanged);
  for (uint64_t i = 0; i < n; i += 2) m.set(i, i + 1, BlockType::kFree);
  EXPECT_EQ(m.run_count(), n);
  uint64_t got = 0;
  while (auto f = m.find_free(1)) {
    m.set(f->start, f->end, BlockType::kBackup);
    got++;
  }
  EXPECT_EQ(got, n / 2);
  EXPECT_EQ(m.count(BlockType::kFree), 0u);
  EXPECT_TRUE(m.check());
}

namespace {
// Bitwise reference of the kernel's crc32_le (reflected 0xEDB88320, no inversion).
uint32_t crc_ref(uint32_t crc, const std::vector<uint8_t>& d) {
  for (uint8_t b : d) {
    crc ^= b;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
  }
  return crc;
}

LogBlock sample_log(uint32_t bs = 4096) {
  LogBlock l;
  l.block_size = bs;
  l.sequence = 3;
  l.sector0 = 8 * (bs / 512);
  l.entries.push_back({0, 20 * (bs / 512), bs, 0x1234});
  l.entries.push_back({5 * (bs / 512), 30 * (bs / 512), 2 * bs, 0});
  return l;
}
}  // namespace

TEST(BowFormat, EntryChecksumMatchesBitwiseReference) {
  std::vector<uint8_t> d(5000);
  for (size_t i = 0; i < d.size(); i++) d[i] = static_cast<uint8_t>(i * 7 + 3);
  // The kernel's crc32_le seeded with the source block number (its low 32 bits).
  EXPECT_EQ(entry_checksum(0, d), crc_ref(0, d));
  EXPECT_EQ(entry_checksum(77, d), crc_ref(77, d));
  EXPECT_EQ(entry_checksum(12345, d), crc_ref(12345, d));
  EXPECT_EQ(entry_checksum((7ull << 32) | 9, d), crc_ref(9, d));
  for (size_t n : {0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 4096})
    EXPECT_EQ(entry_checksum(3, std::span(d).first(n)), crc_ref(3, std::vector<uint8_t>(d.begin(), d.begin() + n)))
        << n << " bytes";
  // The target checksums a big copy in pieces (crc32_ieee_raw continuing): one pass.
  std::vector<uint8_t> a(d.begin(), d.begin() + 1000), b(d.begin() + 1000, d.end());
  EXPECT_EQ(crc32_ieee_raw(entry_checksum(9, a), b.data(), b.size()), crc_ref(9, d));
  // "123456789" with the standard init/final inversion is the CRC-32 check value.
  std::vector<uint8_t> check{'1', '2', '3', '4', '5', '6', '7', '8', '9'};
  EXPECT_EQ(~crc32_ieee_raw(~0u, check.data(), check.size()), 0xCBF43926u);
}

TEST(BowFormat, EncodeDecodeRoundTripLittleEndian) {
  LogBlock l = sample_log();
  auto bytes = encode_log(l);
  ASSERT_EQ(bytes.size(), 4096u);
  EXPECT_EQ(bytes[0], 0x42);  // 'B'
  EXPECT_EQ(bytes[1], 0x4F);  // 'O'
  EXPECT_EQ(bytes[2], 0x57);  // 'W'
  EXPECT_EQ(bytes[3], 0x00);
  EXPECT_EQ(le32(&bytes[12]), 2u);
  EXPECT_EQ(load_le<uint64_t>(&bytes[20]), l.sector0);
  EXPECT_EQ(load_le<uint64_t>(&bytes[28 + 24 + 8]), 30u * 8);
  auto back = decode_log(bytes, 64 * 4096);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back.value(), l);
  EXPECT_EQ(log_capacity(4096), 169u);
  EXPECT_EQ(log_capacity(512), 20u);
}

TEST(BowFormat, EveryFieldIsValidated) {
  const uint64_t dev = 64 * 4096;
  auto mutate = [&](auto fn) {
    auto b = encode_log(sample_log());
    fn(b);
    return decode_log(b, dev).status();
  };
  struct Case {
    const char* name;
    std::function<void(std::vector<uint8_t>&)> fn;
    const char* expect;
  };
  std::vector<Case> cases = {
      {"magic", [](auto& b) { b[0] = 'X'; }, "bad magic"},
      {"wob", [](auto& b) { store_le<uint32_t>(&b[0], kRestoringMagic); }, "partially restored"},
      {"version", [](auto& b) { store_le<uint16_t>(&b[4], 0x0200); }, "version"},
      {"hsize", [](auto& b) { store_le<uint16_t>(&b[6], 32); }, "header size"},
      {"bs", [](auto& b) { store_le<uint32_t>(&b[8], 3000); }, "block size"},
      {"bs big", [](auto& b) { store_le<uint32_t>(&b[8], 1 << 20); }, "block size"},
      {"count0", [](auto& b) { store_le<uint32_t>(&b[12], 0); }, "no entries"},
      {"count big", [](auto& b) { store_le<uint32_t>(&b[12], 170); }, "exceeds"},
      {"sector0 zero", [](auto& b) { store_le<uint64_t>(&b[20], 0); }, "sector0"},
      {"sector0 unaligned", [](auto& b) { store_le<uint64_t>(&b[20], 65); }, "sector0"},
      {"sector0 past end", [](auto& b) { store_le<uint64_t>(&b[20], 64 * 8); }, "sector0"},
      {"size zero", [](auto& b) { store_le<uint32_t>(&b[28 + 24 + 16], 0); }, "whole number"},
      {"size partial", [](auto& b) { store_le<uint32_t>(&b[28 + 24 + 16], 1000); }, "whole number"},
      {"src unaligned", [](auto& b) { store_le<uint64_t>(&b[28 + 24], 41); }, "aligned"},
      {"src past end", [](auto& b) { store_le<uint64_t>(&b[28 + 24], 63 * 8); }, "source range"},
      {"dest past end", [](auto& b) { store_le<uint64_t>(&b[28 + 24 + 8], 1ull << 60); }, "dest range"},
      {"dest zero", [](auto& b) { store_le<uint64_t>(&b[28 + 24 + 8], 0); }, "dest is block 0"},
      {"entry0 src", [](auto& b) { store_le<uint64_t>(&b[28], 8); }, "entry 0 must"},
      {"entry0 size", [](auto& b) { store_le<uint32_t>(&b[28 + 16], 8192); }, "entry 0 must"},
      {"src block0", [](auto& b) { store_le<uint64_t>(&b[28 + 24], 0); }, "only entry 0"},
      {"overlap", [](auto& b) { store_le<uint64_t>(&b[28 + 24 + 8], 6 * 8); }, "overlap"},
  };
  for (const auto& c : cases) {
    Status s = mutate(c.fn);
    EXPECT_FALSE(s.ok()) << c.name;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << c.name << ": " << s.message();
  }
  // Truncated buffers.
  auto b = encode_log(sample_log());
  EXPECT_FALSE(decode_log(std::span(b).first(20), dev).ok());
  EXPECT_FALSE(decode_log(std::span(b).first(2048), dev).ok());
  EXPECT_FALSE(decode_log(b, 4096).ok());  // device too small
}
