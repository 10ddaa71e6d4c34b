// The lsmt allocation map: unmapped extents are holes, zeroed extents zero,
// written extents data, each with the layer that holds it (1 = top).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "obd_test_util.h"
#include "overlaybd/writer.h"

namespace udm::obd::test {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kSize = 8 * kMiB;

Bytes commit_bytes(GrowFilePtr d, GrowFilePtr i) {
  auto out = std::make_shared<MemGrowFile>();
  auto sink = file_sink(out, false);
  Status s = commit_rw_layer(d, i, *sink, CommitOptions{});
  EXPECT_TRUE(s.ok()) << s.to_string();
  return out->contents();
}

struct Span {
  uint64_t off, len;
  AllocKind kind;
  uint32_t depth;
};

// The whole map of [off, off+len), asking again wherever an answer stopped.
std::vector<Span> map_of(BlockDevice& d, uint64_t off, uint64_t len) {
  std::vector<Span> out;
  AllocMap m;
  uint64_t pos = off;
  while (pos < off + len) {
    Status s = d.allocation(pos, off + len - pos, m);
    EXPECT_TRUE(s.ok()) << s.to_string();
    if (!s.ok() || m.empty()) break;
    for (auto& r : m) {
      if (!out.empty() && out.back().kind == r.kind && out.back().depth == r.depth)
        out.back().len += r.length;
      else
        out.push_back({pos, r.length, r.kind, r.depth});
      pos += r.length;
    }
  }
  return out;
}

// Every run said to be zero or hole reads as zeroes.
void expect_truthful(BlockDevice& d, const std::vector<Span>& runs) {
  for (const auto& r : runs) {
    if (r.kind == AllocKind::kData) continue;
    Bytes got(r.len);
    ASSERT_TRUE(d.read(r.off, got).ok());
    EXPECT_EQ(got, Bytes(r.len, 0)) << "run at " << r.off << "+" << r.len;
  }
}

std::string str(const std::vector<Span>& v) {
  std::string s;
  for (auto& r : v)
    s += fmt::format("[{}+{} {}{}] ", r.off, r.len, "DZH"[static_cast<int>(r.kind)], r.depth);
  return s;
}

}  // namespace

TEST(LsmtAllocation, HolesZeroedExtentsAndLayersThroughTheStack) {
  // Base layer from a raw image: data at [0,1M) and [3M,4M), zeroes elsewhere
  // (left unmapped by raw_to_layer).
  Bytes raw(kSize, 0);
  auto a = udm::test::random_bytes(kMiB, 1), b = udm::test::random_bytes(kMiB, 2);
  std::copy(a.begin(), a.end(), raw.begin());
  std::copy(b.begin(), b.end(), raw.begin() + 3 * kMiB);
  auto outf = std::make_shared<MemGrowFile>();
  auto sink = file_sink(outf, false);
  MemoryDevice rawdev(raw, true);
  ASSERT_TRUE(raw_to_layer(rawdev, *sink, CommitOptions{}).ok());
  Bytes base = outf->contents();

  // Layer 2: data at [5M,6M), a zeroed extent over [3.5M,4M).
  auto d2 = std::make_shared<MemGrowFile>(), i2 = std::make_shared<MemGrowFile>();
  ASSERT_TRUE(create_rw_layer(*d2, *i2, kSize, "", "").ok());
  {
    auto dev = stack({mem(base)}, RwLayerFiles{d2, i2});
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    ASSERT_TRUE((*dev)->write(5 * kMiB, udm::test::random_bytes(kMiB, 3)).ok());
    ASSERT_TRUE((*dev)->write_zeroes(3 * kMiB + kMiB / 2, kMiB / 2, false, true).ok());
    ASSERT_TRUE((*dev)->flush().ok());
  }
  Bytes layer2 = commit_bytes(d2, i2);

  // Read-only stack of the two: depth 1 = layer 2, depth 2 = base.
  {
    auto dev = stack({mem(base), mem(layer2)});
    ASSERT_TRUE(dev.ok()) << dev.status().to_string();
    auto m = map_of(**dev, 0, kSize);
    std::vector<Span> want = {{0, kMiB, AllocKind::kData, 2},
                             {kMiB, 2 * kMiB, AllocKind::kHole, 0},
                             {3 * kMiB, kMiB / 2, AllocKind::kData, 2},
                             {3 * kMiB + kMiB / 2, kMiB / 2, AllocKind::kZero, 1},
                             {4 * kMiB, kMiB, AllocKind::kHole, 0},
                             {5 * kMiB, kMiB, AllocKind::kData, 1},
                             {6 * kMiB, 2 * kMiB, AllocKind::kHole, 0}};
    ASSERT_EQ(str(m), str(want));
    expect_truthful(**dev, m);
  }

  // A writable layer on top: 64 KiB written at 0, [6M+512, 6M+1536) written.
  auto d3 = std::make_shared<MemGrowFile>(), i3 = std::make_shared<MemGrowFile>();
  ASSERT_TRUE(create_rw_layer(*d3, *i3, kSize, "", "").ok());
  auto dev = stack({mem(base), mem(layer2)}, RwLayerFiles{d3, i3});
  ASSERT_TRUE(dev.ok()) << dev.status().to_string();
  ASSERT_TRUE((*dev)->write(0, udm::test::random_bytes(65536, 4)).ok());
  ASSERT_TRUE((*dev)->write(6 * kMiB + 512, udm::test::random_bytes(1024, 5)).ok());
  auto m = map_of(**dev, 0, kSize);
  std::vector<Span> want = {{0, 65536, AllocKind::kData, 1},
                           {65536, kMiB - 65536, AllocKind::kData, 3},
                           {kMiB, 2 * kMiB, AllocKind::kHole, 0},
                           {3 * kMiB, kMiB / 2, AllocKind::kData, 3},
                           {3 * kMiB + kMiB / 2, kMiB / 2, AllocKind::kZero, 2},
                           {4 * kMiB, kMiB, AllocKind::kHole, 0},
                           {5 * kMiB, kMiB, AllocKind::kData, 2},
                           {6 * kMiB, 512, AllocKind::kHole, 0},
                           {6 * kMiB + 512, 1024, AllocKind::kData, 1},
                           {6 * kMiB + 1536, 2 * kMiB - 1536, AllocKind::kHole, 0}};
  ASSERT_EQ(str(m), str(want));
  expect_truthful(**dev, m);

  // Byte ranges that start and end inside sectors are clipped exactly.
  auto part = map_of(**dev, 6 * kMiB + 100, 1000);
  std::vector<Span> want_part = {{6 * kMiB + 100, 412, AllocKind::kHole, 0},
                                {6 * kMiB + 512, 588, AllocKind::kData, 1}};
  EXPECT_EQ(str(part), str(want_part));
  // A zero-out in the top layer hides the data below it.
  ASSERT_TRUE((*dev)->write_zeroes(0, kMiB, false, true).ok());
  auto z = map_of(**dev, 0, kMiB);
  EXPECT_EQ(str(z), str(std::vector<Span>{{0, kMiB, AllocKind::kZero, 1}}));
  // Out of range is refused at the public call.
  AllocMap out;
  EXPECT_EQ((*dev)->allocation(kSize - 512, 1024, out).code(), EINVAL);
  EXPECT_TRUE((*dev)->allocation(kSize, 0, out).ok());
  EXPECT_TRUE(out.empty());
}

}  // namespace udm::obd::test
