// BlockDevice::keep_cached through the devices that pass bytes on: a mapped
// device (each segment's piece to its target), a held (stacked) device,
// linear (its offset added), the zfile target and ZFileDevice (the stored
// bytes of the blocks holding the range) and a tar member (its offset). The
// bottom is a device that records the hints it gets, reached by a test-only
// URI scheme, so every hint of the stack `lsmt v` / `v: linear z 0` /
// `z: zfile keeptest://tz` (a tar-wrapped ZFile of an LSMT layer) can be
// compared with the ranges computed from the file itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <random>
#include <set>

#include "common/sys_util.h"
#include "daemon/registry.h"
#include "device/scheme_registry.h"
#include "io/grow_file.h"
#include "io/memory_device.h"
#include "overlaybd/lsmt_format.h"
#include "overlaybd/tar_format.h"
#include "overlaybd/writer.h"
#include "overlaybd/zfile_device.h"

using namespace udm;

namespace {

using Range = std::pair<uint64_t, uint64_t>;  // offset, length

class RecordingDevice : public MemoryDevice {
 public:
  using MemoryDevice::MemoryDevice;
  std::multiset<Range> hints() const {
    std::lock_guard lk(mu_);
    return hints_;
  }
  void clear() {
    std::lock_guard lk(mu_);
    hints_.clear();
  }

 protected:
  void do_keep_cached(uint64_t off, uint64_t len) override {
    std::lock_guard lk(mu_);
    hints_.insert({off, len});
  }

 private:
  mutable std::mutex mu_;
  std::multiset<Range> hints_;
};

std::shared_ptr<RecordingDevice>& recorder() {
  static std::shared_ptr<RecordingDevice> r;
  return r;
}

TEST(KeepCached, ForwardedThroughMappedLinearZfileAndTarToTheStoredBytes) {
  // An LSMT layer of 1 MiB whose sectors are zero at random (an index of
  // many entries), compressed to a tar-wrapped ZFile with 4 KiB blocks.
  auto raw = test::random_bytes(1u << 20, 91);
  std::mt19937_64 rng(92);
  for (size_t s = 0; s < raw.size(); s += 512)
    if (rng() % 2) std::memset(raw.data() + s, 0, 512);
  auto lsmt = std::make_shared<MemGrowFile>();
  {
    MemoryDevice rd(raw, true);
    auto sink = obd::file_sink(lsmt, false);
    ASSERT_TRUE(obd::raw_to_layer(rd, *sink, {}).ok());
  }
  auto lbytes = lsmt->contents();
  auto zout = std::make_shared<MemGrowFile>();
  obd::ZFileWriteOptions o;
  o.tar = true;
  auto zs = obd::zfile_sink(zout, o);
  ASSERT_TRUE(zs->write(lbytes).ok());
  ASSERT_TRUE(zs->finish().ok());
  auto tz = zout->contents();

  // The ranges, from the files themselves.
  auto member = obd::parse_tar_member(std::span(tz).first(3 * obd::kTarBlock), tz.size());
  ASSERT_TRUE(member.ok()) << member.status().message();
  const uint64_t M = member->offset;
  std::vector<uint8_t> payload(tz.begin() + long(M), tz.begin() + long(M + member->size));
  auto z = obd::ZFileDevice::open(std::make_shared<MemoryDevice>(payload, true));
  ASSERT_TRUE(z.ok()) << z.status().message();
  const auto& L = (*z)->layout();
  const uint64_t zbs = L.h.block_size;
  auto stored = [&](uint64_t off, uint64_t len) {  // uncompressed range -> the tar blob's stored bytes
    uint64_t b0 = off / zbs, b1 = (off + len - 1) / zbs;
    return Range{M + L.starts[b0], L.starts[b1 + 1] - L.starts[b0]};
  };
  auto trailer = obd::parse_lsmt_header(std::span(lbytes).last(obd::kLsmtHeaderSize), "trailer");
  ASSERT_TRUE(trailer.ok()) << trailer.status().message();
  ASSERT_GT(trailer->index_size, 100u);
  std::multiset<Range> zfile_own = {{M, obd::kZFileHeaderSize}, {M + L.h.index_offset, L.h.index_size * 4}};
  if (!(*z)->header().has(obd::kZfHeaderOverwrite))
    zfile_own.insert({M + member->size - obd::kZFileHeaderSize, obd::kZFileHeaderSize});
  const std::multiset<Range> lsmt_own = {stored(0, obd::kLsmtHeaderSize),
                                         stored(lbytes.size() - obd::kLsmtHeaderSize, obd::kLsmtHeaderSize),
                                         stored(trailer->index_offset, trailer->index_size * 16)};
  // The index's stored bytes are not among the ZFile's own (that is what forwarding adds).
  for (const Range& r : lsmt_own) EXPECT_EQ(zfile_own.count(r), 0u);

  recorder() = std::make_shared<RecordingDevice>(tz, true);
  SchemeRegistry::global().add(
      "keeptest", [](const std::string&, bool) -> Result<DevicePtr> { return DevicePtr(recorder()); },
      "keeptest://X  -- tests only: a device that records keep_cached");
  DeviceRegistry reg;
  const uint64_t zsectors = lbytes.size() / 512, vsectors = raw.size() / 512;
  auto zd = reg.create("z", "0 " + std::to_string(zsectors) + " zfile keeptest://tz", true);
  ASSERT_TRUE(zd.ok()) << zd.status().message();
  EXPECT_EQ(recorder()->hints(), zfile_own);
  recorder()->clear();
  ASSERT_TRUE(reg.create("v", "0 " + std::to_string(zsectors) + " linear z 0", true).ok());
  auto ld = reg.create("l", "0 " + std::to_string(vsectors) + " lsmt v", true);
  ASSERT_TRUE(ld.ok()) << ld.status().message();
  EXPECT_EQ(recorder()->hints(), lsmt_own);
  // The device reads right (the stack is real).
  std::vector<uint8_t> all(raw.size());
  ASSERT_TRUE((*ld)->read(0, all).ok());
  EXPECT_TRUE(all == raw);

  // Two segments mapping z's halves the other way round: each piece goes to
  // its segment's target at its own offset; the range is clipped to the device.
  recorder()->clear();
  auto w = reg.create("w", "0 16 linear z 16\n16 16 linear z 0", true);
  ASSERT_TRUE(w.ok()) << w.status().message();
  (*w)->keep_cached(8 * 512, 16 * 512);   // z's [24, 32) and [0, 8) sectors
  (*w)->keep_cached(31 * 512, 4096);      // clipped: the last sector, z's [15, 16)
  (*w)->keep_cached(32 * 512, 4096);      // beyond the end: nothing
  (*w)->keep_cached(0, 0);                // empty: nothing
  EXPECT_EQ(recorder()->hints(),
            (std::multiset<Range>{stored(24 * 512, 8 * 512), stored(0, 8 * 512), stored(15 * 512, 512)}));
  // Stacked devices hold the ones below until their tables go.
  w = ld = zd = Status::Error(EIO, "dropped");
  ASSERT_TRUE(reg.remove("w").ok());
  ASSERT_TRUE(reg.remove("l").ok());
  ASSERT_TRUE(reg.remove("v").ok());
  ASSERT_TRUE(reg.remove("z").ok());
  recorder().reset();
}

}  // namespace
