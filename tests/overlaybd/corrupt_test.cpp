// Corrupt and hostile images are refused with a message naming the field;
// random damage never crashes or reads out of bounds.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "obd_test_util.h"
#include "util/crc.h"
#include "overlaybd/writer.h"
#include "util/endian.h"

namespace udm::obd::test {
namespace {

using Bytes = std::vector<uint8_t>;
Bytes sample(const std::string& n) { return udm::test::read_file(data_dir() + "/" + n); }

void redigest(Bytes& f, size_t at) {  // recompute a ZFile header/trailer digest at offset `at`
  std::memset(f.data() + at + 28, 0, 4);
  put_le32(f.data() + at + 28, crc32c_raw(0, f.data() + at, 512));
}

// Opens a blob as a layer and reads it all; returns the first error.
Status open_and_read(const Bytes& b) {
  auto L = layer_from(mem(b));
  if (!L.ok()) return L.status();
  std::vector<LsmtLayer> v;
  v.push_back(std::move(*L));
  auto d = LsmtDevice::open(std::move(v), std::nullopt);
  if (!d.ok()) return d.status();
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < (*d)->size(); off += buf.size()) {
    size_t n = std::min<uint64_t>(buf.size(), (*d)->size() - off);
    UDM_TRY((*d)->read(off, std::span<uint8_t>(buf.data(), n)));
  }
  return Status::Ok();
}

void expect_refused(const Bytes& b, const std::string& word, const std::string& what) {
  Status s = open_and_read(b);
  EXPECT_FALSE(s.ok()) << what << ": accepted";
  EXPECT_NE(s.message().find(word), std::string::npos) << what << ": message '" << s.message()
                                                       << "' does not name '" << word << "'";
}

Bytes trailer_form_zfile() {  // a udm ZFile without header overwrite
  auto f = std::make_shared<MemGrowFile>();
  ZFileWriteOptions o;
  auto sink = zfile_sink(f, o);
  EXPECT_TRUE(sink->write(sample("base.lsmt")).ok());
  EXPECT_TRUE(sink->finish().ok());
  return f->contents();
}

TEST(CorruptZFile, HeaderFields) {
  const Bytes z = sample("base.lz4.zfile");
  ASSERT_TRUE(open_and_read(z).ok());
  struct Case {
    size_t off;
    uint64_t val;
    int width;
    const char* word;
  } cases[] = {
      {24, 97, 4, "size"},
      {32, 0x1B | (1u << 7), 8, "flags"},
      {32, 0x19, 8, "is_data_file"},
      {32, 0x1B | (1u << 5), 8, "index_compressed"},
      {40, 1ull << 40, 8, "index_offset"},
      {48, 1ull << 33, 8, "index_size"},
      {56, 3325952ull + 4096 * 300, 8, "original_file_size"},
      {56, ~0ull, 8, "original_file_size"},
      {64, 0x12345678, 4, "index_crc"},
      {72, 3000, 4, "block_size"},
      {76, 7, 1, "algo"},
      {78, 1, 1, "use_dict"},
      {84, 4096, 4, "dict_size"},
      {88, 9, 1, "verify"},
  };
  for (auto& c : cases) {
    Bytes b = z;
    if (c.width == 8) put_le64(b.data() + c.off, c.val);
    else if (c.width == 4) put_le32(b.data() + c.off, static_cast<uint32_t>(c.val));
    else b[c.off] = static_cast<uint8_t>(c.val);
    redigest(b, 0);
    expect_refused(b, c.word, std::string("zfile field ") + c.word);
  }
  Bytes b = z;
  b[0] ^= 1;
  expect_refused(b, "magic0", "magic0");
  b = z;
  b[12] ^= 1;
  expect_refused(b, "magic1", "magic1");
  b = z;
  b[45] ^= 1;  // not re-digested
  expect_refused(b, "digest", "digest");
}

TEST(CorruptZFile, TrailerIndexAndBlocks) {
  const Bytes z = trailer_form_zfile();
  ASSERT_TRUE(open_and_read(z).ok());
  size_t t = z.size() - 512;
  Bytes b = z;
  put_le64(b.data() + t + 32, 0x17);  // trailer claims to be a header
  redigest(b, t);
  expect_refused(b, "is_header", "trailer is_header");
  b = z;
  put_le64(b.data() + t + 32, 0x12);
  redigest(b, t);
  expect_refused(b, "sealed", "trailer sealed");
  // Truncated: the trailer is gone.
  b = Bytes(z.begin(), z.end() - 700);
  EXPECT_FALSE(open_and_read(b).ok());
  // An index entry of 0 bytes (index_crc made consistent).
  b = z;
  uint64_t io = le64(b.data() + t + 40), n = le64(b.data() + t + 48);
  put_le32(b.data() + io + 4 * 3, 0);
  put_le32(b.data() + t + 64, crc32c_raw(0, b.data() + io, 4 * n));
  redigest(b, t);
  expect_refused(b, "length", "zero-length index entry");
  // A flipped byte inside a block: that block's CRC fails, others still read.
  b = z;
  uint64_t start5 = 512;
  for (int i = 0; i < 5; i++) start5 += le32(b.data() + io + 4 * i);
  b[start5 + 2] ^= 0x40;
  auto zd = ZFileDevice::open(mem(b), std::make_shared<BlockCache>(1 << 20));
  ASSERT_TRUE(zd.ok());
  std::vector<uint8_t> buf(4096);
  Status s = (*zd)->read(5 * 4096, buf);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("CRC"), std::string::npos) << s.message();
  EXPECT_TRUE((*zd)->read(4 * 4096, buf).ok());
  EXPECT_TRUE((*zd)->read(6 * 4096, buf).ok());
}

TEST(CorruptLsmt, HeaderTrailerAndIndex) {
  const Bytes f = sample("base.lsmt");
  ASSERT_TRUE(open_and_read(f).ok());
  size_t t = f.size() - 4096;
  uint64_t io = le64(f.data() + t + 32);
  auto mut = [&](auto fn, const char* word) {
    Bytes b = f;
    fn(b);
    expect_refused(b, word, word);
  };
  mut([](Bytes& b) { b[3] ^= 1; }, "magic0");
  mut([](Bytes& b) { b[20] ^= 1; }, "magic1");
  mut([](Bytes& b) { put_le32(b.data() + 24, 391); }, "size");
  mut([](Bytes& b) { put_le32(b.data() + 28, 6); }, "is_header");
  mut([](Bytes& b) { put_le32(b.data() + 28, 5); }, "is_data_file");
  mut([](Bytes& b) { put_le32(b.data() + 28, 7 | (1u << 9)); }, "flags");
  mut([](Bytes& b) { b[132] = 3; }, "version");
  mut([&](Bytes& b) { put_le32(b.data() + t + 28, 7); }, "is_header");
  mut([&](Bytes& b) { put_le32(b.data() + t + 28, 2); }, "sealed");
  mut([&](Bytes& b) { put_le64(b.data() + t + 32, io + 8); }, "index_offset");
  mut([&](Bytes& b) { put_le64(b.data() + t + 32, b.size() + 4096); }, "index_offset");
  mut([&](Bytes& b) { put_le64(b.data() + t + 40, 257); }, "index_size");
  mut([&](Bytes& b) { put_le64(b.data() + t + 40, 1ull << 40); }, "index_size");
  mut([&](Bytes& b) { put_le64(b.data() + t + 48, (64 << 20) + 100); }, "virtual_size");
  mut([&](Bytes& b) { b[t + 60] = 'Z'; }, "uuid");
  mut([&](Bytes& b) { b[t + 100] = 'Z'; }, "parent_uuid");
  // Index entries.
  mut([&](Bytes& b) {  // swap entries 0 and 1 -> unsorted
    uint8_t tmp[16];
    std::memcpy(tmp, b.data() + io, 16);
    std::memcpy(b.data() + io, b.data() + io + 16, 16);
    std::memcpy(b.data() + io + 16, tmp, 16);
  }, "unsorted");
  mut([&](Bytes& b) {  // moffset beyond the data region
    LsmtEntry e = decode_lsmt_entry(b.data() + io + 32);
    e.moffset = io / 512;
    encode_lsmt_entry(e, b.data() + io + 32);
  }, "moffset");
  mut([&](Bytes& b) {
    LsmtEntry e = decode_lsmt_entry(b.data() + io + 32);
    e.length = 0;
    encode_lsmt_entry(e, b.data() + io + 32);
  }, "length 0");
  // Truncated file (index cut short / trailer missing).
  Bytes b(f.begin(), f.end() - 4096);
  EXPECT_FALSE(open_and_read(b).ok());
  b = Bytes(f.begin(), f.begin() + 6000);
  EXPECT_FALSE(open_and_read(b).ok());
}

TEST(CorruptLsmt, RwLayerFields) {
  auto data = std::make_shared<MemGrowFile>(), index = std::make_shared<MemGrowFile>();
  ASSERT_TRUE(create_rw_layer(*data, *index, 1 << 20, "", "").ok());
  {
    auto d = LsmtDevice::open({}, RwLayerFiles{data, index});
    ASSERT_TRUE(d.ok());
    ASSERT_TRUE((*d)->write(4096, std::vector<uint8_t>(8192, 7)).ok());
    ASSERT_TRUE((*d)->flush().ok());
  }
  auto reopen = [&](Bytes db, Bytes ib) {
    auto d2 = std::make_shared<MemGrowFile>(db), i2 = std::make_shared<MemGrowFile>(ib);
    auto d = LsmtDevice::open({}, RwLayerFiles{d2, i2});
    return d.ok() ? Status::Ok() : d.status();
  };
  ASSERT_TRUE(reopen(data->contents(), index->contents()).ok());
  Bytes ib = index->contents();
  put_le64(ib.data() + 32, 8192);
  Status s = reopen(data->contents(), ib);
  EXPECT_NE(s.message().find("index_offset"), std::string::npos) << s.message();
  // Data file shorter than a record needs (index reached disk, data did not).
  Bytes db = data->contents();
  db.resize(4096 + 4096);
  s = reopen(db, index->contents());
  EXPECT_NE(s.message().find("moffset"), std::string::npos) << s.message();
  // Index file given as data file.
  s = reopen(index->contents(), index->contents());
  EXPECT_FALSE(s.ok());
}

// Random damage: never a crash, never an out-of-bounds read (ASan checks).
TEST(CorruptFuzzish, RandomByteFlips) {
  std::mt19937_64 rng(42);
  for (auto name : {"base.lz4.zfile", "base.zstd.zfile", "l2.lsmt"}) {
    const Bytes f = sample(name);
    int refused = 0;
    for (int i = 0; i < 60; i++) {
      Bytes b = f;
      int flips = 1 + rng() % 4;
      for (int k = 0; k < flips; k++) {
        // Bias towards headers, trailers and the index.
        size_t region = rng() % 3;
        size_t pos = region == 0 ? rng() % 600 : region == 1 ? b.size() - 1 - rng() % 8192 : rng() % b.size();
        b[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
      }
      if (!open_and_read(b).ok()) refused++;
    }
    EXPECT_GT(refused, 0) << name;
  }
}

}  // namespace
}  // namespace udm::obd::test
