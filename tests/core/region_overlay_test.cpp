// RegionOverlayDevice (io/region_overlay.h): a read-only device whose few
// writable regions live in a local state file. Reads and writes, refusals
// outside the regions, the file made once and found again by the same key,
// a file of another key not used, one made for other regions or damaged
// refused, two overlays of one path sharing the file.
#include <gtest/gtest.h>
#include <cstring>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sys_util.h"
#include "io/memory_device.h"
#include "io/region_overlay.h"
#include "util/crc.h"

using namespace udm;
using namespace udm::test;

namespace {

constexpr uint64_t kSize = 64 << 10;
const std::vector<ByteRange> kRegions = {{0, 512}, {8192, 4096}};

std::shared_ptr<MemoryDevice> base_with(uint64_t seed) {
  return std::make_shared<MemoryDevice>(random_bytes(kSize, seed), /*read_only=*/true);
}

std::vector<uint8_t> read_all(BlockDevice& d) {
  std::vector<uint8_t> v(d.size());
  EXPECT_TRUE(d.read(0, v).ok());
  return v;
}

TEST(RegionOverlay, ReadsWritesAndRefusesOutsideTheRegions) {
  TempDir t;
  auto base = base_with(1);
  const auto orig = base->contents();
  LocalStateHome home{t.file("obj.overlay"), "url http://x/y\netag \"1\"\nsize 65536"};
  auto ov = RegionOverlayDevice::open(base, home, kRegions);
  ASSERT_TRUE(ov.ok()) << ov.status().to_string();
  auto& d = **ov;
  EXPECT_TRUE(d.created());
  EXPECT_FALSE(d.caps().read_only);
  EXPECT_EQ(d.size(), kSize);
  EXPECT_EQ(read_all(d), orig) << "a new overlay reads as its device";
  EXPECT_FALSE(::access((home.path + ".tmp").c_str(), F_OK) == 0) << "the temp file was renamed";
  struct stat st {};
  ASSERT_EQ(::stat(home.path.c_str(), &st), 0);
  EXPECT_EQ(uint64_t(st.st_size), 4096u + 4096u + 4096u);  // header, region 0 (rounded up), region 1

  std::vector<uint8_t> w(300, 0xab), w2(4096, 0xcd);
  ASSERT_TRUE(d.write(100, w, /*fua=*/true).ok());
  ASSERT_TRUE(d.write(8192, w2).ok());
  ASSERT_TRUE(d.flush().ok());
  auto want = orig;
  std::copy(w.begin(), w.end(), want.begin() + 100);
  std::copy(w2.begin(), w2.end(), want.begin() + 8192);
  EXPECT_EQ(read_all(d), want);
  EXPECT_EQ(base->contents(), orig) << "the device below is never written";

  // Outside, or partly outside: refused whole, nothing written.
  Status s = d.write(4096, w);
  EXPECT_EQ(s.code(), EROFS);
  EXPECT_NE(s.message().find(home.path), std::string::npos) << s.message();
  EXPECT_EQ(d.write(400, std::vector<uint8_t>(200, 0x11)).code(), EROFS);   // runs past region 0
  EXPECT_EQ(d.write(8000, std::vector<uint8_t>(400, 0x11)).code(), EROFS);  // starts before region 1
  EXPECT_EQ(read_all(d), want);
  // A read across region edges mixes both sources right.
  std::vector<uint8_t> part(9000);
  ASSERT_TRUE(d.read(300, part).ok());
  EXPECT_TRUE(std::equal(part.begin(), part.end(), want.begin() + 300));

  auto info = read_region_overlay(home.path);
  ASSERT_TRUE(info.ok()) << info.status().to_string();
  EXPECT_EQ(info->key, home.key);
  EXPECT_EQ(info->base_size, kSize);
  EXPECT_EQ(info->regions, kRegions);
  EXPECT_EQ(info->region_bytes, 512u + 4096u);
}

TEST(RegionOverlay, FoundAgainByItsKeyNotUsedForAnother) {
  TempDir t;
  LocalStateHome home{t.file("obj.overlay"), "sha256:" + std::string(64, 'a')};
  std::vector<uint8_t> w(512, 0x5a);
  {
    auto ov = RegionOverlayDevice::open(base_with(1), home, kRegions);
    ASSERT_TRUE(ov.ok()) << ov.status().to_string();
    ASSERT_TRUE((*ov)->write(0, w, true).ok());
  }
  {
    // Another process lifetime (the file closed): the same key finds what was
    // written, whatever the device below holds there now.
    auto base = base_with(2);
    auto ov = RegionOverlayDevice::open(base, home, kRegions);
    ASSERT_TRUE(ov.ok()) << ov.status().to_string();
    EXPECT_FALSE((*ov)->created());
    // Region bytes as the file keeps them (region 0 written, region 1 as the
    // first device had it), every other byte the device's now.
    auto want = base->contents();
    std::copy(w.begin(), w.end(), want.begin());
    auto first = base_with(1)->contents();
    std::copy(first.begin() + 8192, first.begin() + 12288, want.begin() + 8192);
    EXPECT_EQ(read_all(**ov), want);
  }
  {
    // A file holding another key at this path is not used: made anew from the device.
    auto base = base_with(3);
    LocalStateHome other{home.path, "sha256:" + std::string(64, 'b')};
    auto ov = RegionOverlayDevice::open(base, other, kRegions);
    ASSERT_TRUE(ov.ok()) << ov.status().to_string();
    EXPECT_TRUE((*ov)->created());
    EXPECT_NE((*ov)->replaced_reason().find(home.key), std::string::npos) << (*ov)->replaced_reason();
    EXPECT_EQ(read_all(**ov), base->contents());
    EXPECT_EQ(read_region_overlay(home.path)->key, other.key);
  }
}

TEST(RegionOverlay, OtherRegionsAndDamageAreRefused) {
  TempDir t;
  LocalStateHome home{t.file("obj.overlay"), "k"};
  {
    auto ov = RegionOverlayDevice::open(base_with(1), home, kRegions);
    ASSERT_TRUE(ov.ok()) << ov.status().to_string();
  }
  auto r = RegionOverlayDevice::open(base_with(1), home, {{0, 1024}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EBUSY);
  EXPECT_NE(r.status().message().find("made for regions [0, 512) [8192, 12288)"), std::string::npos)
      << r.status().message();
  // A flipped header byte: refused naming the file, the file left alone.
  auto bytes = read_file(home.path);
  bytes[40] ^= 1;
  write_file(home.path, bytes);
  r = RegionOverlayDevice::open(base_with(1), home, kRegions);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EUCLEAN);
  EXPECT_NE(r.status().message().find(home.path), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("checksum"), std::string::npos) << r.status().message();
  EXPECT_EQ(read_file(home.path), bytes);
  // Bad region lists.
  EXPECT_FALSE(RegionOverlayDevice::open(base_with(1), {t.file("x"), "k"}, {}).ok());
  EXPECT_FALSE(RegionOverlayDevice::open(base_with(1), {t.file("x"), "k"}, {{4096, 10}, {0, 10}}).ok());
  EXPECT_FALSE(RegionOverlayDevice::open(base_with(1), {t.file("x"), "k"}, {{kSize - 10, 11}}).ok());
  EXPECT_FALSE(::access(t.file("x").c_str(), F_OK) == 0) << "nothing made for a refused list";
}

TEST(RegionOverlay, OverlaysOfOnePathShareTheFile) {
  TempDir t;
  LocalStateHome home{t.file("obj.overlay"), "k"};
  auto a = RegionOverlayDevice::open(base_with(1), home, kRegions);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  auto b = RegionOverlayDevice::open(base_with(1), home, kRegions);
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_FALSE((*b)->created());
  std::vector<uint8_t> w(512, 0x77), got(512);
  ASSERT_TRUE((*a)->write(0, w, true).ok());
  ASSERT_TRUE((*b)->read(0, got).ok());
  EXPECT_EQ(got, w);
  auto c = RegionOverlayDevice::open(base_with(1), {home.path, "other"}, kRegions);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), EBUSY);
}

}  // namespace

// The header both ways: a round trip, then each field refused when wrong
// (the reserved word, a byte after the key, overlapping regions), with the
// CRC made right so that the field check is what refuses.
TEST(RegionOverlay, HeaderFieldsAreValidated) {
  const std::vector<ByteRange> rs = {{0, 512}, {512, 4096}};
  auto h = encode_region_overlay_header("key-1", 1 << 20, rs);
  auto i = decode_region_overlay_header(h);
  ASSERT_TRUE(i.ok()) << i.status().to_string();
  EXPECT_EQ(i->key, "key-1");
  EXPECT_EQ(i->base_size, 1u << 20);
  EXPECT_EQ(i->regions, rs);
  EXPECT_EQ(i->region_bytes, 4608u);
  auto refix = [](std::vector<uint8_t> b) {
    std::memset(&b[24], 0, 4);
    const uint32_t c = crc32_ieee(0, b.data(), b.size());
    for (int k = 0; k < 4; k++) b[24 + k] = uint8_t(c >> (8 * k));
    return b;
  };
  auto bad = h;
  bad[100] ^= 1;  // CRC no longer matches
  EXPECT_NE(decode_region_overlay_header(bad).status().message().find("checksum"), std::string::npos);
  bad = h;
  bad[29] = 1;
  EXPECT_NE(decode_region_overlay_header(refix(bad)).status().message().find("reserved"), std::string::npos);
  bad = h;
  bad[32 + 32 + 5 + 3] = 'x';  // after the 5-byte key
  EXPECT_NE(decode_region_overlay_header(refix(bad)).status().message().find("after the key"), std::string::npos);
  auto overlap = encode_region_overlay_header("k", 1 << 20, {{0, 1024}, {512, 4096}});
  EXPECT_FALSE(decode_region_overlay_header(overlap).ok());
  auto outside = encode_region_overlay_header("k", 4096, {{0, 8192}});
  EXPECT_FALSE(decode_region_overlay_header(outside).ok());
}
