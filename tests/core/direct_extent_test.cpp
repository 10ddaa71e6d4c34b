// BlockDevice::direct_extent: which devices point at a file for zero-copy
// reads, at which offsets, and that the callback runs inside a mapped
// device's I/O gate (suspend waits for it, a suspended device holds it back).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "common/sys_util.h"
#include "daemon/registry.h"
#include "export/export_policy.h"
#include "io/file_device.h"
#include "io/memory_device.h"

using namespace udm;
using namespace udm::test;

namespace {

// What direct_extent answered: the extent, or nothing.
struct Answer {
  bool direct = false;
  DirectExtent e;
  std::vector<uint8_t> bytes;  // pread of the extent inside the callback
};

Answer ask(BlockDevice& d, uint64_t off, uint64_t len) {
  Answer a;
  auto r = d.direct_extent(off, len, [&](const DirectExtent& e) {
    a.e = e;
    a.bytes.resize(e.length);
    if (pread(e.fd, a.bytes.data(), e.length, static_cast<off_t>(e.file_offset)) != static_cast<ssize_t>(e.length))
      return ErrnoStatus("pread");
    return Status::Ok();
  });
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  a.direct = r.ok() && *r;
  return a;
}

std::vector<uint8_t> dev_read(BlockDevice& d, uint64_t off, uint64_t len) {
  std::vector<uint8_t> v(len);
  Status s = d.read(off, v);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return v;
}

}  // namespace

TEST(DirectExtent, FileDeviceIsItsOwnFileButNotWithODirect) {
  TempDir tmp;
  std::string p = tmp.file("f.img");
  write_file(p, random_bytes(1 << 20, 1));
  auto f = FileDevice::open(p);
  ASSERT_TRUE(f.ok());
  Answer a = ask(**f, 12345, 100000);  // unaligned
  ASSERT_TRUE(a.direct);
  EXPECT_EQ(a.e.fd, (*f)->fd());
  EXPECT_EQ(a.e.file_offset, 12345u);
  EXPECT_EQ(a.e.length, 100000u);
  EXPECT_EQ(a.bytes, dev_read(**f, 12345, 100000));
  // Range checks as read(): beyond the end is EINVAL, empty is "no".
  EXPECT_EQ((*f)->direct_extent(1 << 20, 1, [](const DirectExtent&) { return Status::Ok(); }).status().code(), EINVAL);
  auto empty = (*f)->direct_extent(0, 0, [](const DirectExtent&) { return Status::Ok(); });
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(*empty);
  auto d = FileDevice::open(p, {.writable = false, .direct = true});
  if (!d.ok()) GTEST_SKIP() << "no O_DIRECT here: " << d.status().to_string();
  EXPECT_FALSE(ask(**d, 0, 4096).direct);
}

TEST(DirectExtent, MemoryZeroAndErrorHaveNone) {
  MemoryDevice m(1 << 20);
  EXPECT_FALSE(ask(m, 0, 4096).direct);
  DeviceRegistry reg;
  auto z = reg.create("z", "0 2048 zero\n2048 8 error", false);
  ASSERT_TRUE(z.ok());
  EXPECT_FALSE(ask(**z, 0, 4096).direct);
  EXPECT_FALSE(ask(**z, 2048 * 512, 4096).direct);
}

// Two linear segments over two files with a zero segment between: each
// answer stops at its segment's end, with the segment's file offset.
TEST(DirectExtent, LinearTableAnswersPerSegmentPrefix) {
  TempDir tmp;
  std::string a = tmp.file("a.img"), b = tmp.file("b.img");
  write_file(a, random_bytes(2 << 20, 2));
  write_file(b, random_bytes(2 << 20, 3));
  DeviceRegistry reg;
  // [0,1M) = a from 64 KiB; [1M,1.5M) = zero; [1.5M,2.5M) = b from 0.
  auto d = reg.create("d", "0 2048 linear " + a + " 128\n2048 1024 zero\n3072 2048 linear " + b + " 0", false);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  MappedDevice& dev = **d;
  // Inside the first segment, unaligned.
  Answer x = ask(dev, 777, 300001);
  ASSERT_TRUE(x.direct);
  EXPECT_EQ(x.e.file_offset, 65536u + 777);
  EXPECT_EQ(x.e.length, 300001u);
  EXPECT_EQ(x.bytes, dev_read(dev, 777, 300001));
  // Crossing a -> zero: the prefix up to the segment end.
  Answer y = ask(dev, (1 << 20) - 5000, 1 << 20);
  ASSERT_TRUE(y.direct);
  EXPECT_EQ(y.e.length, 5000u);
  EXPECT_EQ(y.e.file_offset, 65536u + (1 << 20) - 5000);
  auto whole = dev_read(dev, (1 << 20) - 5000, 1 << 20);
  EXPECT_TRUE(std::equal(y.bytes.begin(), y.bytes.end(), whole.begin()));
  // In the zero segment: none.
  EXPECT_FALSE(ask(dev, (1 << 20) + 10, 4096).direct);
  // In b.
  Answer z = ask(dev, (3 << 19) + 512, 65536);
  ASSERT_TRUE(z.direct);
  EXPECT_EQ(z.e.file_offset, 512u);
  EXPECT_EQ(z.bytes, dev_read(dev, (3 << 19) + 512, 65536));
  // Reads after writes through the device see the writes.
  auto w = random_bytes(70000, 9);
  ASSERT_TRUE(dev.write(1000, w).ok());
  Answer after = ask(dev, 1000, 70000);
  ASSERT_TRUE(after.direct);
  EXPECT_EQ(after.bytes, w);
}

// A udm device stacked on another (by name) through linear: offsets add up;
// a read-only view passes the question on; a counted open too.
TEST(DirectExtent, StackedLinearAndViewsShiftOffsets) {
  TempDir tmp;
  std::string a = tmp.file("a.img");
  write_file(a, random_bytes(1 << 20, 4));
  DeviceRegistry reg;
  ASSERT_TRUE(reg.create("lower", "0 2040 linear " + a + " 8", false).ok());
  auto upper = reg.create("upper", "0 1024 linear lower 16", false);
  ASSERT_TRUE(upper.ok()) << upper.status().to_string();
  Answer x = ask(**upper, 100, 4096);
  ASSERT_TRUE(x.direct);
  EXPECT_EQ(x.e.file_offset, 8u * 512 + 16 * 512 + 100);
  EXPECT_EQ(x.bytes, dev_read(**upper, 100, 4096));
  auto held = reg.open_export("upper");
  ASSERT_TRUE(held.ok());
  ReadOnlyView view(*held);
  Answer v = ask(view, 100, 4096);
  ASSERT_TRUE(v.direct);
  EXPECT_EQ(v.e.file_offset, x.e.file_offset);
}

// The callback runs inside the gate: suspend waits for it; while suspended a
// new call waits for resume, then meets the reloaded table.
TEST(DirectExtent, SuspendWaitsForTheCallbackAndReloadSwitchesFiles) {
  TempDir tmp;
  std::string a = tmp.file("a.img"), b = tmp.file("b.img");
  write_file(a, std::vector<uint8_t>(1 << 20, 0x0A));
  write_file(b, std::vector<uint8_t>(1 << 20, 0x0B));
  DeviceRegistry reg;
  auto d = reg.create("d", "0 2048 linear " + a + " 0", false);
  ASSERT_TRUE(d.ok());
  MappedDevicePtr dev = *d;
  std::atomic<bool> inside{false}, release{false};
  std::thread reader([&] {
    auto r = dev->direct_extent(0, 4096, [&](const DirectExtent& e) {
      inside = true;
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      uint8_t c = 0;
      EXPECT_EQ(pread(e.fd, &c, 1, static_cast<off_t>(e.file_offset)), 1);  // the fd is still open
      EXPECT_EQ(c, 0x0A);
      return Status::Ok();
    });
    EXPECT_TRUE(r.ok() && *r);
  });
  while (!inside) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(reg.load("d", "0 2048 linear " + b + " 0").ok());
  std::atomic<bool> suspended{false};
  std::thread suspender([&] {
    EXPECT_TRUE(dev->suspend().ok());
    suspended = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(suspended.load()) << "suspend returned while a direct read was in its callback";
  release = true;
  reader.join();
  suspender.join();
  ASSERT_TRUE(suspended.load());
  std::atomic<bool> done{false};
  uint8_t seen = 0;
  std::thread late([&] {
    auto r = dev->direct_extent(0, 4096, [&](const DirectExtent& e) {
      EXPECT_EQ(pread(e.fd, &seen, 1, static_cast<off_t>(e.file_offset)), 1);
      return Status::Ok();
    });
    EXPECT_TRUE(r.ok() && *r);
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(done.load()) << "a direct read ran while the device was suspended";
  ASSERT_TRUE(dev->resume().ok());  // swaps in the table over b
  late.join();
  EXPECT_EQ(seen, 0x0B);
}
