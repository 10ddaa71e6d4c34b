// The android_cow feature against Android's own vectors (view, merge order,
// merge target, resumable merge), bad input, and the writer's round trips.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <random>
#include <thread>

#include "android_cow/acow_codec.h"
#include "android_cow/acow_image.h"
#include "android_cow/acow_writer.h"
#include "android_cow/acow_test_util.h"
#include "io/memory_device.h"
#include "util/endian.h"

using namespace udm;
using namespace udm::acow;
using namespace udm::acow::test;

namespace {

std::vector<std::string> vector_names() {
  std::vector<std::string> v;
  if (!have_vectors()) return v;
  for (const auto& e : expected()["vectors"]) v.push_back(e["name"]);
  return v;
}

const nlohmann::json& vec(const std::string& name) {
  for (const auto& e : expected()["vectors"])
    if (e["name"] == name) return e;
  throw std::runtime_error("no vector " + name);
}

std::optional<uint64_t> label_of(const nlohmann::json& v) {
  if (v["read_with_label"].is_null()) return std::nullopt;
  return v["read_with_label"].get<uint64_t>();
}

std::vector<uint8_t> cow_bytes(const std::string& name) { return udm::test::read_file(vec_dir() + "/" + name + ".cow"); }

class Vectors : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!have_vectors()) GTEST_SKIP() << "no " << vec_dir();
  }
};

TEST_P(Vectors, HeaderAndCounts) {
  const auto& v = vec(GetParam());
  MemoryDevice cow(cow_bytes(GetParam()), true);
  auto f = parse_cow(cow, label_of(v));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const auto& h = v["header"];
  EXPECT_EQ(f->h.major, h["major"].get<int>());
  EXPECT_EQ(f->h.header_size, h["header_size"].get<int>());
  EXPECT_EQ(f->h.block_size, h["block_size"].get<uint32_t>());
  EXPECT_EQ(f->h.cluster_ops, h["cluster_ops"].get<uint32_t>());
  EXPECT_EQ(f->h.buffer_size, h["buffer_size"].get<uint32_t>());
  if (f->h.major == 3) {
    EXPECT_EQ(f->h.op_count, h["op_count"].get<uint64_t>());
    EXPECT_EQ(f->h.op_count_max, h["op_count_max"].get<uint64_t>());
    EXPECT_EQ(f->h.sequence_data_count, h["sequence_data_count"].get<uint64_t>());
    EXPECT_EQ(f->h.resume_point_count, h["resume_point_count"].get<uint32_t>());
    EXPECT_EQ(f->h.max_compression_size, h["max_compression_size"].get<uint32_t>());
    EXPECT_EQ(static_cast<uint32_t>(f->compression), h["compression_algorithm"].get<uint32_t>());
  } else {
    EXPECT_EQ(f->has_footer, v["has_footer"].get<bool>());
  }
  const auto& c = v["reader_op_counts"];
  auto n = [&](const char* k) { return c.contains(k) ? c[k].get<uint64_t>() : 0; };
  EXPECT_EQ(f->n_copy, n("kCowCopyOp"));
  EXPECT_EQ(f->n_replace, n("kCowReplaceOp"));
  EXPECT_EQ(f->n_zero, n("kZeroOp"));
  EXPECT_EQ(f->n_xor, n("kCowXorOp"));
  if (f->h.major == 2) {
    EXPECT_EQ(f->n_label, n("kCowLabelOp"));
    EXPECT_EQ(f->n_sequence, n("kCowSequenceOp"));
    if (!v["last_label"].is_null()) {
      EXPECT_EQ(f->labels.back(), v["last_label"].get<uint64_t>());
    }
  }
  // Reading without the label works exactly when Android's does.
  auto nolabel = parse_cow(cow);
  EXPECT_EQ(nolabel.ok(), v["parse_without_label_ok"].get<bool>()) << nolabel.status().to_string();
}

TEST_P(Vectors, ViewReadsAndroidsView) {
  const auto& v = vec(GetParam());
  MapResolver r;
  r.devs["base"] = std::make_shared<MemoryDevice>(base_image(), true);
  r.devs["cow"] = std::make_shared<MemoryDevice>(cow_bytes(GetParam()), true);
  auto t = make_target(r, false, base_image().size(), label_of(v));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(read_all_sha(**t), v["view_sha256"].get<std::string>());
  // Unaligned reads across op boundaries give the same bytes.
  std::vector<uint8_t> all(base_image().size());
  ASSERT_TRUE((*t)->read(0, all).ok());
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; i++) {
    uint64_t off = rng() % all.size(), len = 1 + rng() % 20000;
    len = std::min<uint64_t>(len, all.size() - off);
    std::vector<uint8_t> b(len);
    ASSERT_TRUE((*t)->read(off, b).ok());
    ASSERT_EQ(0, std::memcmp(b.data(), all.data() + off, len)) << off << "+" << len;
  }
  const auto& c = v["reader_op_counts"];
  auto n = [&](const char* k) { return c.contains(k) ? c[k].get<uint64_t>() : 0; };
  EXPECT_EQ((*t)->status(), fmt::format("{} {} {} {} {}", n("kCowCopyOp") + n("kCowReplaceOp") + n("kZeroOp") + n("kCowXorOp"),
                                        n("kCowReplaceOp"), n("kCowCopyOp"), n("kCowXorOp"), n("kZeroOp")));
  EXPECT_FALSE((*t)->write(0, std::vector<uint8_t>(4096)).ok());
}

// allocation(): the runs cover the device in order, every zero run reads as
// zeroes, and ZERO operations show as zero (blocks the base serves carry
// the base's map: a memory device says data).
TEST_P(Vectors, AllocationMapIsTruthfulAndShowsZeroOps) {
  const auto& v = vec(GetParam());
  MapResolver r;
  r.devs["base"] = std::make_shared<MemoryDevice>(base_image(), true);
  r.devs["cow"] = std::make_shared<MemoryDevice>(cow_bytes(GetParam()), true);
  auto t = make_target(r, false, base_image().size(), label_of(v));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const uint64_t size = (*t)->size();
  std::vector<uint8_t> all(size);
  ASSERT_TRUE((*t)->read(0, all).ok());
  AllocMap m;
  ASSERT_TRUE((*t)->allocation(0, size, m).ok());
  uint64_t pos = 0, zero_bytes = 0;
  for (const auto& run : m) {
    ASSERT_GT(run.length, 0u);
    ASSERT_LE(pos + run.length, size);
    if (run.kind != AllocKind::kData) {
      zero_bytes += run.length;
      for (uint64_t i = pos; i < pos + run.length; i++) ASSERT_EQ(all[i], 0) << "a zero run reads data at byte " << i;
    }
    pos += run.length;
  }
  EXPECT_EQ(pos, size) << "the map does not cover the device";
  const auto& c = v["reader_op_counts"];
  const uint64_t zero_ops = c.contains("kZeroOp") ? c["kZeroOp"].get<uint64_t>() : 0;
  if (zero_ops) {
    EXPECT_GE(zero_bytes, zero_ops * 4096) << "ZERO operations not reported zero";
  } else {
    EXPECT_EQ(zero_bytes, 0u);
  }
}

TEST_P(Vectors, MergeOrderIsAndroids) {
  const auto& v = vec(GetParam());
  if (v["merge"].is_null() || v["merge"]["merge_order_len"].is_null()) GTEST_SKIP() << "Android prepares no merge order for this vector";
  MemoryDevice cow(cow_bytes(GetParam()), true);
  auto f = parse_cow(cow, label_of(v));
  ASSERT_TRUE(f.ok());
  auto order = build_merge_order(*f);
  ASSERT_TRUE(order.ok()) << order.status().to_string();
  EXPECT_TRUE(verify_merge_order(*f, *order).ok());
  std::vector<uint8_t> le(order->size() * 4);
  std::vector<uint64_t> ordered;
  for (size_t i = 0; i < order->size(); i++) {
    const Op& op = f->ops[(*order)[i]];
    put_le32(le.data() + 4 * i, static_cast<uint32_t>(op.new_block));
    if (op.type == kCopy || op.type == kXor) ordered.push_back(op.new_block);
  }
  EXPECT_EQ(order->size(), v["merge"]["merge_order_len"].get<size_t>());
  EXPECT_EQ(sha256_hex(le), v["merge"]["merge_order_sha256_u32le"].get<std::string>());
  EXPECT_EQ(ordered, v["merge"]["ordered_merge_order"].get<std::vector<uint64_t>>());
}

TEST_P(Vectors, MergeTargetLeavesTheMergedImage) {
  const auto& v = vec(GetParam());
  MapResolver r;
  auto base = std::make_shared<MemoryDevice>(base_image());
  auto cow = std::make_shared<MemoryDevice>(cow_bytes(GetParam()));
  r.devs["base"] = base;
  r.devs["cow"] = cow;
  auto t = make_target(r, true, base_image().size(), label_of(v));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(read_all_sha(**t), v["view_sha256"].get<std::string>());  // before the merge starts
  (*t)->resume();
  const std::string want = v["view_sha256"];
  // Reads race the merge: every one sees the new image.
  std::string st;
  for (int i = 0; i < 100000; i++) {
    EXPECT_EQ(read_all_sha(**t), want);
    st = (*t)->status();
    auto sp = st.find(' ');
    if (st.substr(0, sp) == st.substr(sp + 1)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  (*t)->presuspend();
  auto sp = st.find(' ');
  ASSERT_EQ(st.substr(0, sp), st.substr(sp + 1)) << st;
  EXPECT_EQ(read_all_sha(*base), want);
  if (!v["merge"].is_null() && !v["merge"]["merge_result_sha256"].is_null()) {
    EXPECT_EQ(read_all_sha(*base), v["merge"]["merge_result_sha256"].get<std::string>());
  }
  EXPECT_EQ(read_all_sha(**t), want);
  // Progress is in the header, where snapuserd keeps it.
  uint8_t n[8];
  ASSERT_TRUE(cow->read_exact(kNumMergeOpsOffset, n, 8).ok());
  EXPECT_EQ(std::to_string(le64(n)), st.substr(0, sp));
  // A merged COW rebuilt over the merged base still reads the new image.
  auto t2 = make_target(r, false, base_image().size(), label_of(v));
  ASSERT_TRUE(t2.ok()) << t2.status().to_string();
  EXPECT_EQ(read_all_sha(**t2), want);
}

TEST_P(Vectors, OfflineMergeResumes) {
  const auto& v = vec(GetParam());
  auto base = std::make_shared<MemoryDevice>(base_image());
  auto cow = std::make_shared<MemoryDevice>(cow_bytes(GetParam()));
  {
    auto img = CowImage::open(cow, base->size(), base->size(), label_of(v), true);
    ASSERT_TRUE(img.ok()) << img.status().to_string();
    auto r = (*img)->merge_step(*base, *cow, 16);  // a few small batches, then stop
    ASSERT_TRUE(r.ok());
    r = (*img)->merge_step(*base, *cow, 16);
    ASSERT_TRUE(r.ok());
    EXPECT_LT(*r, (*img)->total());
  }
  auto img = CowImage::open(cow, base->size(), base->size(), label_of(v), true);
  ASSERT_TRUE(img.ok()) << img.status().to_string();
  EXPECT_GT((*img)->merged(), 0u);
  EXPECT_EQ([&] {
    std::vector<uint8_t> all(base->size());
    EXPECT_TRUE((*img)->read(*base, 0, all).ok());
    return sha256_hex(all);
  }(), v["view_sha256"].get<std::string>());
  while ((*img)->merged() < (*img)->total()) ASSERT_TRUE((*img)->merge_step(*base, *cow).ok());
  EXPECT_EQ(read_all_sha(*base), v["view_sha256"].get<std::string>());
}

GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(Vectors);
INSTANTIATE_TEST_SUITE_P(AndroidCow, Vectors, ::testing::ValuesIn(vector_names()),
                         [](const auto& i) {
                           std::string s = i.param;
                           for (char& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

// ---- bad input ------------------------------------------------------------

class AndroidCowBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_vectors()) GTEST_SKIP() << "no " << vec_dir();
  }
  // Builds the view over base + these COW bytes; returns its error.
  static std::string view_error(std::vector<uint8_t> bytes, std::optional<uint64_t> label = {}) {
    MapResolver r;
    r.devs["base"] = std::make_shared<MemoryDevice>(base_image(), true);
    r.devs["cow"] = std::make_shared<MemoryDevice>(std::move(bytes), true);
    auto t = make_target(r, false, base_image().size(), label);
    if (t.ok()) {
      std::vector<uint8_t> all(base_image().size());
      Status s = (*t)->read(0, all);
      return s.ok() ? "" : s.to_string();
    }
    return t.status().to_string();
  }
  static std::string merge_error(std::vector<uint8_t> bytes) {
    MapResolver r;
    r.devs["base"] = std::make_shared<MemoryDevice>(base_image());
    r.devs["cow"] = std::make_shared<MemoryDevice>(std::move(bytes));
    auto t = make_target(r, true, base_image().size());
    return t.ok() ? "" : t.status().to_string();
  }
  // v3-none: ops at 142 + 16 i.
  static constexpr uint64_t kV3Ops = 78 + 64;
};

TEST_F(AndroidCowBadInput, Truncated) {
  for (const char* name : {"v2-none", "v2-zstd-seq", "v3-none", "v3-gz-seq"}) {
    auto b = cow_bytes(name);
    for (size_t cut : {size_t{0}, size_t{10}, size_t{37}, size_t{77}, size_t{200}, b.size() / 2, b.size() - 1}) {
      std::vector<uint8_t> t(b.begin(), b.begin() + static_cast<long>(cut));
      std::string e = view_error(t);
      EXPECT_NE(e, "") << name << " cut at " << cut;
      EXPECT_TRUE(e.find("truncated") != std::string::npos || e.find("footer") != std::string::npos ||
                  e.find("header_size") != std::string::npos)
          << name << " cut at " << cut << ": " << e;
    }
  }
}

TEST_F(AndroidCowBadInput, OpsOutOfRange) {
  auto b = cow_bytes("v3-none");
  auto patch = [&](size_t op, auto f) {
    auto c = b;
    f(c.data() + kV3Ops + 16 * op);
    return c;
  };
  // op 0 is COPY 263 <- 262; op 158 XOR 600 <- byte 2867200.
  EXPECT_NE(view_error(patch(0, [](uint8_t* p) { put_le32(p + 4, 5000); })).find("past the end of the device"), std::string::npos);
  EXPECT_NE(view_error(patch(0, [](uint8_t* p) { put_le64(p + 8, (uint64_t{kCopy} << 60) | 4096); })).find("past the base"),
            std::string::npos);
  EXPECT_NE(view_error(patch(158, [](uint8_t* p) { put_le64(p + 8, (uint64_t{kXor} << 60) | (16777216 - 100)); }))
                .find("past the base"),
            std::string::npos);
  EXPECT_NE(view_error(patch(1, [](uint8_t* p) { put_le32(p + 4, 263); })).find("two ops write block 263"), std::string::npos);
  EXPECT_NE(view_error(patch(5, [](uint8_t* p) { p[15] = 0x80; })).find("not valid in v3"), std::string::npos);
  // op_count past op_count_max, data past the end.
  auto c = b;
  put_le64(c.data() + 54, 5000);
  EXPECT_NE(view_error(c).find("op_count 5000 is larger than op_count_max"), std::string::npos);
  c = b;
  put_le64(c.data() + 62, uint64_t{1} << 50);
  EXPECT_NE(view_error(c), "");
}

TEST_F(AndroidCowBadInput, UnknownCompression) {
  auto b = cow_bytes("v3-zstd");
  put_le32(b.data() + 70, 9);
  EXPECT_NE(view_error(b).find("unknown compression 9"), std::string::npos);
  auto v2 = cow_bytes("v2-zstd");
  // Find the first REPLACE record (type 2) in the first cluster and set compression 7.
  for (size_t p = 38; p < 38 + 20 * 1024; p += 20)
    if (v2[p] == kReplace) {
      v2[p + 1] = 7;
      break;
    }
  EXPECT_NE(view_error(v2).find("unknown compression 7"), std::string::npos);
}

TEST_F(AndroidCowBadInput, ResumePointsAndLabels) {
  auto b = cow_bytes("v3-gz-seq");
  const uint64_t R = 78 + 4 * 216;
  auto c = b;
  put_le64(c.data() + R + 8, 5000);  // op_index past the 4096 slots
  EXPECT_NE(view_error(c).find("past the op array"), std::string::npos);
  c = b;
  put_le64(c.data() + R + 8, 4000);  // inside the array, past op_count
  EXPECT_NE(view_error(c, 10).find("past op_count"), std::string::npos);
  EXPECT_NE(view_error(b, 99).find("label 99 not found"), std::string::npos);
  // resume_point_count 14 > max 4: only the 4 stored entries are read.
  MemoryDevice d(b, true);
  auto f = parse_cow(d, 12);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->resume_points.size(), 4u);
  EXPECT_EQ(f->ops.size(), 470u);
  EXPECT_NE(view_error(cow_bytes("v2-none-crash")).find("label"), std::string::npos);
  EXPECT_NE(view_error(cow_bytes("v2-none-crash"), 42).find("label 42 not found"), std::string::npos);
}

TEST_F(AndroidCowBadInput, MergeRefusals) {
  auto b = cow_bytes("v3-none");
  auto c = b;
  put_le64(c.data() + kNumMergeOpsOffset, 472);
  EXPECT_NE(merge_error(c).find("num_merge_ops 472 is past the merge order"), std::string::npos);
  // Sequence data naming a block no op writes.
  c = cow_bytes("v3-gz-seq");
  put_le32(c.data() + 78, 3999);
  EXPECT_NE(merge_error(c).find("no op writes"), std::string::npos);
  // An unsafe order: plain v3 with op 0 (COPY 263 <- 262) moved after op 1
  // (COPY 262 <- 261) — swap the two records.
  c = b;
  std::swap_ranges(c.begin() + kV3Ops, c.begin() + kV3Ops + 16, c.begin() + kV3Ops + 16);
  EXPECT_NE(merge_error(c).find("cannot be merged in place"), std::string::npos);
  // The view still works (it does not need the order).
  EXPECT_EQ(view_error(c), "");
}

TEST_F(AndroidCowBadInput, CorruptedPayloadsFailReads) {
  auto b = cow_bytes("v3-zstd");
  MemoryDevice d(b, true);
  auto f = parse_cow(d);
  ASSERT_TRUE(f.ok());
  for (const Op& op : f->ops)
    if (op.type == kReplace && op.data_length < 4096) {
      for (uint32_t i = 0; i < op.data_length; i++) b[op.data_offset + i] ^= 0x5a;
      break;
    }
  std::string e = view_error(b);
  EXPECT_NE(e.find("does not decode"), std::string::npos) << e;
}

TEST_F(AndroidCowBadInput, RandomCorruptionNeverCrashes) {
  std::mt19937_64 rng(19);
  for (const char* name : {"v2-gz", "v2-zstd-seq", "v3-lz4", "v3-zstd-64k"}) {
    const auto b = cow_bytes(name);
    for (int i = 0; i < 40; i++) {
      auto c = b;
      const int flips = 1 + static_cast<int>(rng() % 8);
      for (int k = 0; k < flips; k++) {
        size_t at = rng() % std::min<size_t>(c.size(), 30000);  // header, ops and early data
        c[at] = static_cast<uint8_t>(rng());
      }
      (void)view_error(c);
      (void)merge_error(c);
    }
  }
}

// ---- codecs and writer ----------------------------------------------------

TEST(AndroidCowCodec, RoundTripsEveryAlgorithm) {
  auto data = udm::test::random_bytes(65536, 3);
  for (size_t i = 0; i < data.size(); i += 2) data[i] = 'a';
  for (Comp c : {Comp::None, Comp::Gz, Comp::Brotli, Comp::Lz4, Comp::Zstd}) {
    auto z = compress(c, data);
    ASSERT_TRUE(z.ok());
    std::vector<uint8_t> out(data.size());
    ASSERT_TRUE(decompress(c, *z, out).ok()) << comp_name(c);
    EXPECT_EQ(out, data);
    std::vector<uint8_t> small(data.size() - 1);
    EXPECT_FALSE(decompress(c, *z, small).ok()) << comp_name(c);
  }
}

// A small old/new pair with every kind of change, including a COPY cycle
// (a swap) and blocks similar to their old selves (XOR reading its own block).
std::pair<std::vector<uint8_t>, std::vector<uint8_t>> small_pair(uint64_t blocks = 512) {
  const uint32_t bs = 4096;
  std::vector<uint8_t> old_img = udm::test::random_bytes(blocks * bs, 11);
  for (uint64_t b = 300; b < 340; b++) std::memset(old_img.data() + b * bs, 0, bs);
  auto nw = old_img;
  auto blk = [&](std::vector<uint8_t>& v, uint64_t b) { return v.data() + b * bs; };
  for (uint64_t b = 10; b < 30; b++) std::memcpy(blk(nw, b), blk(old_img, b + 100), bs);   // moves
  for (uint64_t b = 50; b < 60; b++) std::memcpy(blk(nw, b), blk(old_img, b - 1), bs);     // shift up
  std::memcpy(blk(nw, 70), blk(old_img, 71), bs);                                          // swap
  std::memcpy(blk(nw, 71), blk(old_img, 70), bs);
  for (uint64_t b = 200; b < 220; b++) blk(nw, b)[b % 4000] ^= 0xff;                        // similar
  for (uint64_t b = 230; b < 240; b++) std::memset(blk(nw, b), 0, bs);                      // zero
  auto fresh = udm::test::random_bytes(40 * bs, 12);
  std::memcpy(blk(nw, 400), fresh.data(), fresh.size());                                    // new data
  for (uint64_t b = 440; b < 480; b++) std::memset(blk(nw, b), 'x', bs);                    // compressible
  return {old_img, nw};
}

TEST(AndroidCowWriter, SmallPairEveryVersionAndCompression) {
  auto [old_img, nw] = small_pair();
  for (int v : {2, 3})
    for (Comp c : {Comp::None, Comp::Gz, Comp::Brotli, Comp::Lz4, Comp::Zstd})
      for (uint32_t unit : {4096u, 65536u, 262144u}) {
        if (v == 2 && unit != 4096) continue;
        WriterOptions o;
        o.version = v;
        o.compression = c;
        o.unit = unit;
        o.cluster_ops = 16;  // several clusters in v2
        round_trip(old_img, nw, o, fmt::format("v{} {} {}", v, comp_name(c), unit));
      }
  WriterOptions o;
  WriterStats st;
  auto cow = make_cow(old_img, nw, o, &st);
  ASSERT_TRUE(cow.ok());
  EXPECT_GT(st.copy, 0u);
  EXPECT_GT(st.xor_ops, 0u);
  EXPECT_GT(st.self_xor, 0u);
  EXPECT_GT(st.zero, 0u);
  EXPECT_GT(st.replace_ops, 0u);
  EXPECT_EQ(st.cycles_broken, 1u);  // the swap
}

// The file form: the same bytes as make_cow, the scratch area a hole; a
// higher zstd level reads back the same (decoded results compared).
TEST(AndroidCowWriter, FileHasTheScratchAreaAsAHoleAndZstdLevelsRoundTrip) {
  auto [old_img, nw] = small_pair();
  udm::test::TempDir t;
  udm::test::write_file(t.file("old"), old_img);
  udm::test::write_file(t.file("new"), nw);
  for (int v : {2, 3}) {
    WriterOptions o;
    o.version = v;
    WriterStats mem_st;
    auto cow = make_cow(old_img, nw, o, &mem_st);
    ASSERT_TRUE(cow.ok());
    ASSERT_EQ(mem_st.scratch, 2u << 20) << "small_pair has self-reading XOR: a scratch area";
    auto st = make_cow_file(t.file("old"), t.file("new"), t.file("cow"), o);
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    EXPECT_TRUE(udm::test::read_file(t.file("cow")) == *cow) << "v" << v;
    struct stat sb;
    ASSERT_EQ(::stat(t.file("cow").c_str(), &sb), 0);
    EXPECT_EQ(static_cast<uint64_t>(sb.st_size), cow->size());
    EXPECT_LE(static_cast<uint64_t>(sb.st_blocks) * 512, cow->size() - (1u << 20))
        << "v" << v << ": the 2 MiB scratch area was written out, not left a hole";
  }
  WriterOptions o;
  o.unit = 65536;
  o.zstd_level = 19;
  round_trip(old_img, nw, o, "v3 zstd level 19");
  WriterStats s3, s19;
  o.zstd_level = 0;
  ASSERT_TRUE(make_cow(old_img, nw, o, &s3).ok());
  o.zstd_level = 19;
  ASSERT_TRUE(make_cow(old_img, nw, o, &s19).ok());
  EXPECT_LE(s19.replace_payload + s19.xor_payload, s3.replace_payload + s3.xor_payload);
}

TEST(AndroidCowWriter, RefusesBadOptions) {
  std::vector<uint8_t> a(8192), b(4096);
  EXPECT_FALSE(make_cow(a, b, {}).ok());
  WriterOptions o;
  o.unit = 3 * 4096;
  EXPECT_FALSE(make_cow(a, a, o).ok());
  o.unit = 4096 << 7;
  EXPECT_FALSE(make_cow(a, a, o).ok());
  o = {};
  o.version = 4;
  EXPECT_FALSE(make_cow(a, a, o).ok());
}

}  // namespace
