#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "daemon/registry.h"
#include "io/file_device.h"
#include "io/memory_device.h"

using namespace udm;

namespace {

std::string make_temp_file(uint64_t size, uint8_t fill) {
  char tmpl[] = "/tmp/udm-test-XXXXXX";
  int fd = mkstemp(tmpl);
  EXPECT_GE(fd, 0);
  std::vector<uint8_t> buf(size, fill);
  EXPECT_EQ(pwrite(fd, buf.data(), buf.size(), 0), static_cast<ssize_t>(size));
  close(fd);
  return tmpl;
}

std::vector<uint8_t> read_all(BlockDevice& d) {
  std::vector<uint8_t> out(d.size());
  EXPECT_TRUE(d.read(0, out).ok());
  return out;
}

struct TempFiles {
  std::vector<std::string> paths;
  ~TempFiles() {
    for (auto& p : paths) unlink(p.c_str());
  }
  std::string add(uint64_t size, uint8_t fill) {
    paths.push_back(make_temp_file(size, fill));
    return paths.back();
  }
};

}  // namespace

TEST(Targets, LinearOverTwoFilesZeroAndError) {
  TempFiles tf;
  auto a = tf.add(64 * 1024, 0xAA), b = tf.add(64 * 1024, 0xBB);
  DeviceRegistry reg;
  // 32 KiB from a at 16 KiB, 16 KiB of zero, 8 KiB from b at 0, 4 KiB of error.
  auto dev = reg.create("stack",
                        "0 64 linear " + a + " 32\n64 32 zero\n96 16 linear " + b +
                            " 0\n112 8 error\n",
                        false);
  ASSERT_TRUE(dev.ok()) << dev.status().to_string();
  MappedDevice& d = **dev;
  EXPECT_EQ(d.size(), 120u * 512);
  std::vector<uint8_t> buf(112 * 512);
  ASSERT_TRUE(d.read(0, buf).ok());
  for (size_t i = 0; i < buf.size(); i++) {
    uint8_t want = i < 32768 ? 0xAA : i < 49152 ? 0 : 0xBB;
    ASSERT_EQ(buf[i], want) << "at " << i;
  }
  std::vector<uint8_t> one(512);
  EXPECT_EQ(d.read(112 * 512, one).code(), EIO);
  EXPECT_EQ(d.read(120 * 512, one).code(), EINVAL);  // beyond end
  // A write straddling linear->zero lands in the file and is dropped by zero.
  std::vector<uint8_t> w(1024, 0x11);
  ASSERT_TRUE(d.write(32768 - 512, w).ok());
  auto f = FileDevice::open(a, {.writable = false});
  ASSERT_TRUE(f.ok());
  std::vector<uint8_t> fb(512);
  ASSERT_TRUE((*f)->read(16384 + 32768 - 512, fb).ok());
  EXPECT_EQ(fb, std::vector<uint8_t>(512, 0x11));
  ASSERT_TRUE(d.read(32768, fb).ok());
  EXPECT_EQ(fb, std::vector<uint8_t>(512, 0));
  EXPECT_EQ(d.status_lines(), (std::vector<std::string>{"0 64 linear", "64 32 zero",
                                                        "96 16 linear", "112 8 error"}));
  EXPECT_EQ(d.table_lines()[0], "0 64 linear " + a + " 32");
}

TEST(Targets, ConstructorErrorsNameLineAndArgument) {
  TempFiles tf;
  auto a = tf.add(4096, 0);
  DeviceRegistry reg;
  auto r = reg.create("x", "0 8 linear " + a + " 0\n8 8 linear " + a + " 1", false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("line 2: linear: linear: device " + a + " is too small"),
            std::string::npos)
      << r.status().message();
  r = reg.create("x", "0 8 linear " + a, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("linear: missing <offset_sectors>"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("usage: linear <device> <offset_sectors>"), std::string::npos);
  r = reg.create("x", "0 8 linear " + a + " abc", false);
  EXPECT_NE(r.status().message().find("linear: <offset_sectors>: 'abc' is not a decimal number"), std::string::npos)
      << r.status().message();
  r = reg.create("x", "0 8 linear nosuchdev 0", false);
  EXPECT_EQ(r.status().code(), ENXIO);
  r = reg.create("x", "0 8 frobnicate", false);
  EXPECT_NE(r.status().message().find("unknown target type 'frobnicate'"), std::string::npos);
  r = reg.create("x", "0 8 zero extra", false);
  EXPECT_NE(r.status().message().find("zero: unexpected argument 'extra'"), std::string::npos)
      << r.status().message();
  r = reg.create("bad/name", "0 8 zero", false);
  EXPECT_EQ(r.status().code(), EINVAL);
  EXPECT_TRUE(reg.names().empty());
}

TEST(Registry, StackingByNameCountsOpenersAndBlocksRemove) {
  TempFiles tf;
  auto a = tf.add(1 << 20, 0x5A);
  DeviceRegistry reg;
  ASSERT_TRUE(reg.create("lower", "0 2048 linear " + a + " 0", false).ok());
  auto upper = reg.create("upper", "0 1024 linear lower 1024", false);
  ASSERT_TRUE(upper.ok()) << upper.status().to_string();
  EXPECT_EQ(reg.get("lower")->open_count(), 1);
  EXPECT_EQ(reg.remove("lower").code(), EBUSY);
  std::vector<uint8_t> buf(4096);
  ASSERT_TRUE((*upper)->read(0, buf).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(4096, 0x5A));
  EXPECT_EQ(reg.create("upper", "0 8 zero", false).status().code(), EEXIST);
  upper = Status::Error(EIO, "drop");
  ASSERT_TRUE(reg.remove("upper").ok());
  EXPECT_EQ(reg.get("lower")->open_count(), 0);
  EXPECT_TRUE(reg.remove("lower").ok());
  EXPECT_EQ(reg.remove("lower").code(), ENXIO);
}

TEST(MappedDevice, ReloadSwapsTableOnResume) {
  TempFiles tf;
  auto a = tf.add(1 << 20, 0x01), b = tf.add(1 << 20, 0x02);
  DeviceRegistry reg;
  auto d = reg.create("d", "0 2048 linear " + a + " 0", false);
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(reg.load("d", "0 2048 linear " + b + " 0").ok());
  std::vector<uint8_t> buf(512);
  ASSERT_TRUE((*d)->read(0, buf).ok());
  EXPECT_EQ(buf[0], 0x01);  // inactive table not yet live
  EXPECT_TRUE((*d)->has_inactive());
  ASSERT_TRUE((*d)->suspend().ok());
  EXPECT_TRUE((*d)->suspended());
  ASSERT_TRUE((*d)->resume().ok());
  EXPECT_FALSE((*d)->suspended());
  EXPECT_FALSE((*d)->has_inactive());
  ASSERT_TRUE((*d)->read(0, buf).ok());
  EXPECT_EQ(buf[0], 0x02);
  // A bad reload leaves everything as it was.
  EXPECT_FALSE(reg.load("d", "0 2048 linear /nonexistent 0").ok());
  EXPECT_FALSE((*d)->has_inactive());
}

// A target that blocks in read() until released, to observe draining.
namespace {
class GateTarget : public Target {
 public:
  std::atomic<int> entered{0};
  std::atomic<bool> release{false};
  std::string type() const override { return "gate"; }
  uint64_t size() const override { return 4096; }
  Status do_read(uint64_t, std::span<uint8_t> b) override {
    entered++;
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::fill(b.begin(), b.end(), 7);
    return Status::Ok();
  }
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return Status::Ok(); }
  Status do_flush() override {
    flushed++;
    return Status::Ok();
  }
  std::atomic<int> flushed{0};
};
}  // namespace

TEST(MappedDevice, SuspendDrainsInFlightAndBlocksNewIo) {
  auto gate = std::make_shared<GateTarget>();
  TargetRegistry tr;
  tr.add("gate", [gate](const TargetParams&) -> Result<TargetPtr> { return TargetPtr(gate); }, "");
  DeviceRegistry reg(tr);
  auto d = reg.create("g", "0 8 gate", false);
  ASSERT_TRUE(d.ok());
  MappedDevicePtr dev = *d;
  std::thread reader([&] {
    std::vector<uint8_t> b(512);
    EXPECT_TRUE(dev->read(0, b).ok());
  });
  while (gate->entered == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::atomic<bool> suspended{false};
  std::thread suspender([&] {
    EXPECT_TRUE(dev->suspend().ok());
    suspended = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(suspended.load()) << "suspend returned with I/O in flight";
  gate->release = true;
  reader.join();
  suspender.join();
  EXPECT_TRUE(suspended.load());
  EXPECT_GE(gate->flushed.load(), 1);
  // New I/O waits until resume.
  std::atomic<bool> done{false};
  std::thread late([&] {
    std::vector<uint8_t> b(512);
    EXPECT_TRUE(dev->read(0, b).ok());
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(done.load());
  ASSERT_TRUE(dev->resume().ok());
  late.join();
  EXPECT_TRUE(done.load());
}

TEST(FileDevice, TrimPunchesHoleAndZeroes) {
  TempFiles tf;
  auto a = tf.add(1 << 20, 0xFF);
  auto f = FileDevice::open(a);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->trim(4096, 8192).ok());
  ASSERT_TRUE((*f)->write_zeroes(65536, 4096, true).ok());
  auto all = read_all(**f);
  for (size_t i = 0; i < all.size(); i++) {
    bool zero = (i >= 4096 && i < 12288) || (i >= 65536 && i < 69632);
    ASSERT_EQ(all[i], zero ? 0 : 0xFF) << i;
  }
  EXPECT_FALSE(FileDevice::open("/nonexistent/x").ok());
  auto ro = FileDevice::open(a, {.writable = false});
  ASSERT_TRUE(ro.ok());
  std::vector<uint8_t> b(512);
  EXPECT_EQ((*ro)->write(0, b).code(), EROFS);
}

// A filesystem with neither zero-range nor punch-hole (ramfs): zero-outs
// fall back to writing zeroes (they used to re-enter write_zeroes forever).
TEST(FileDevice, ZeroOutWithoutFallocateWritesZeroes) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount ramfs";
  char dir[] = "/tmp/udm-ramfs-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  if (system((std::string("mount -t ramfs none ") + dir).c_str()) != 0) {
    rmdir(dir);
    GTEST_SKIP() << "cannot mount ramfs";
  }
  std::string path = std::string(dir) + "/f";
  {
    std::vector<uint8_t> init(65536, 0xAA);
    FILE* fp = fopen(path.c_str(), "w");
    ASSERT_NE(fp, nullptr);
    ASSERT_EQ(fwrite(init.data(), 1, init.size(), fp), init.size());
    fclose(fp);
    auto f = FileDevice::open(path, {.writable = true});
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->write_zeroes(4096, 8192, false, true).ok());
    ASSERT_TRUE((*f)->write_zeroes(20000, 3000, true, false).ok());
    std::vector<uint8_t> got(65536);
    ASSERT_TRUE((*f)->read(0, got).ok());
    for (size_t i = 0; i < got.size(); i++) {
      bool zero = (i >= 4096 && i < 12288) || (i >= 20000 && i < 23000);
      ASSERT_EQ(got[i], zero ? 0 : 0xAA) << "byte " << i;
    }
  }
  EXPECT_EQ(system((std::string("umount ") + dir).c_str()), 0);
  rmdir(dir);
}
