// Shared fixtures of the android_cow tests: the shared vectors
// (../shared/data/android-cow, used in place), zstd loading, sha256, a
// resolver over memory devices and target builders.
#pragma once

#include <fmt/format.h>
#include <openssl/sha.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "android_cow/acow_image.h"
#include "android_cow/acow_writer.h"
#include "android_cow/targets.h"
#include "io/memory_device.h"
#include <gtest/gtest.h>
#include "common/sys_util.h"
#include "device/target.h"

namespace udm::acow::test {

inline std::string vec_dir() { return udm::test::shared_dir() + "/data/android-cow"; }
inline std::string ota_dir() { return udm::test::shared_dir() + "/data/ota-small"; }
inline bool have_vectors() { return std::filesystem::exists(vec_dir() + "/expected.json"); }

inline std::vector<uint8_t> load_zst(const std::string& path) {
  auto in = udm::test::read_file(path);
  std::vector<uint8_t> out;
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 27);
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  std::vector<uint8_t> buf(1 << 20);
  while (true) {
    ZSTD_outBuffer ob{buf.data(), buf.size(), 0};
    size_t r = ZSTD_decompressStream(d, &ob, &ib);
    if (ZSTD_isError(r)) break;
    out.insert(out.end(), buf.data(), buf.data() + ob.pos);
    if (r == 0 && ib.pos == ib.size) break;
    if (ob.pos == 0 && ib.pos == ib.size) break;
  }
  ZSTD_freeDCtx(d);
  return out;
}

inline const std::vector<uint8_t>& base_image() {
  static std::vector<uint8_t> b = load_zst(vec_dir() + "/base.img.zst");
  return b;
}

inline const nlohmann::json& expected() {
  static nlohmann::json j = [] {
    std::ifstream f(vec_dir() + "/expected.json");
    return nlohmann::json::parse(f);
  }();
  return j;
}

inline std::string sha256_hex(const uint8_t* p, size_t n) {
  uint8_t h[32];
  SHA256(p, n, h);
  std::string s;
  for (uint8_t b : h) s += fmt::format("{:02x}", b);
  return s;
}
inline std::string sha256_hex(const std::vector<uint8_t>& v) { return sha256_hex(v.data(), v.size()); }

inline std::string read_all_sha(BlockDevice& d) {
  std::vector<uint8_t> all(d.size());
  if (!d.read(0, all).ok()) return "read error";
  return sha256_hex(all);
}

class MapResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool) override {
    auto it = devs.find(spec);
    if (it == devs.end()) return Status::Error(ENXIO, "no device " + spec);
    return it->second;
  }
};

inline Result<TargetPtr> make_target(MapResolver& r, bool merge, uint64_t length, std::optional<uint64_t> label = {}) {
  TargetParams p;
  p.type = merge ? "android-cow-merge" : "android-cow";
  p.length = length;
  p.args = {"base", "cow"};
  if (label) p.args.insert(p.args.end(), {"1", fmt::format("label={}", *label)});
  p.resolver = &r;
  return merge ? make_merge_target(p) : make_view_target(p);
}

// Writes a COW from old to new, reads it back (the view must be new), merges
// it into a copy of old (which must become new).
inline void round_trip(const std::vector<uint8_t>& old_img, const std::vector<uint8_t>& nw, const WriterOptions& o,
                const std::string& what) {
  WriterStats st;
  auto cow = make_cow(old_img, nw, o, &st);
  ASSERT_TRUE(cow.ok()) << what << ": " << cow.status().to_string();
  MemoryDevice cd(*cow, true);
  auto f = parse_cow(cd);
  ASSERT_TRUE(f.ok()) << what << ": " << f.status().to_string();
  EXPECT_EQ(f->version(), o.version);
  EXPECT_EQ(f->compression, o.compression);
  auto base = std::make_shared<MemoryDevice>(old_img);
  auto cow_dev = std::make_shared<MemoryDevice>(*cow);
  auto img = CowImage::open(cow_dev, old_img.size(), old_img.size(), std::nullopt, true);
  ASSERT_TRUE(img.ok()) << what << ": " << img.status().to_string();
  std::vector<uint8_t> view(nw.size());
  ASSERT_TRUE((*img)->read(*base, 0, view).ok());
  ASSERT_TRUE(view == nw) << what << ": the view is not the new image";
  while ((*img)->merged() < (*img)->total()) {
    auto r = (*img)->merge_step(*base, *cow_dev);
    ASSERT_TRUE(r.ok()) << what << ": " << r.status().to_string();
  }
  ASSERT_TRUE(base->contents() == nw) << what << ": the merged base is not the new image";
}

}  // namespace udm::acow::test
