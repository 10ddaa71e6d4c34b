// The contract through the kernel and real clients, for every target type
// of contract_cases(): the FUSE file (pwrite/pread, fallocate punch-hole,
// zero-range and preallocation), a loop device over it (blkdiscard,
// blkdiscard -z, fallocate -p/-z on /dev/loopN, all O_DIRECT) and NBD
// (qemu-io write, write -z with and without -u, discard). After every step
// the device reads as the model says, through the client and directly.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <random>

#include "common/sys_util.h"
#include "contract/contract_util.h"
#include "export/fuse/fuse_export.h"
#include "export/nbd/nbd_server.h"

using namespace udm;
using namespace udm::contract;
using namespace udm::test;

namespace {

class ContractE2E : public testing::TestWithParam<const Case*> {
 protected:
  void SetUp() override {
    if (!is_root()) GTEST_SKIP() << "needs root for FUSE and loop devices";
    for (auto t : {"qemu-io", "blkdiscard", "fallocate", "losetup"})
      if (!have_tool(t)) GTEST_SKIP() << t << " not installed";
    env_ = std::make_unique<Env>(true);
    auto b = GetParam()->make(*env_);
    ASSERT_TRUE(b.ok()) << b.status().to_string();
    built_ = std::move(*b);
    provider_.add("dev", built_.dev);
    mnt_ = tmp_.file("fuse");
    mkdir(mnt_.c_str(), 0755);
    fuse_ = std::make_unique<FuseExport>(provider_, mnt_);
    ASSERT_TRUE(fuse_->start().ok());
    sock_ = tmp_.file("nbd.sock");
    NbdServerOptions o;
    o.unix_path = sock_;
    o.workers = 4;
    nbd_ = std::make_unique<NbdServer>(provider_, o);
    ASSERT_TRUE(nbd_->start().ok());
    model_.resize(kDevSize);
    if (built_.kind != Kind::kErrors) {
      ASSERT_TRUE(built_.dev->read(0, model_).ok());
    }
  }
  void TearDown() override {
    if (nbd_) nbd_->stop();
    if (fuse_) fuse_->stop();
    provider_.remove("dev");
    if (built_.check) {
      EXPECT_EQ(built_.check(), "");
    }
    built_ = Built{};
    env_.reset();
  }
  Kind kind() const { return built_.kind; }
  std::string file() const { return mnt_ + "/dev"; }

  // The device (read directly) equals the model.
  void expect_model(const std::string& when) {
    std::vector<uint8_t> got(kDevSize);
    ASSERT_TRUE(built_.dev->read(0, got).ok());
    for (size_t i = 0; i < got.size(); i++)
      ASSERT_EQ(got[i], model_[i]) << when << ": byte " << i << " (device read directly)";
  }
  // What `path` (FUSE file or loop device, O_DIRECT when asked) reads at off.
  void expect_path(const std::string& path, uint64_t off, uint64_t len, bool direct, const std::string& when) {
    int fd = open(path.c_str(), O_RDONLY | (direct ? O_DIRECT : 0));
    ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
    void* p = nullptr;
    ASSERT_EQ(posix_memalign(&p, 4096, len), 0);
    ssize_t n = pread(fd, p, len, static_cast<off_t>(off));
    close(fd);
    std::vector<uint8_t> got(static_cast<uint8_t*>(p), static_cast<uint8_t*>(p) + std::max<ssize_t>(n, 0));
    free(p);
    ASSERT_EQ(n, static_cast<ssize_t>(len)) << when << ": " << strerror(errno);
    for (size_t i = 0; i < len; i++)
      ASSERT_EQ(got[i], model_[off + i]) << when << ": byte " << off + i << " through " << path;
  }
  void put(uint64_t off, const std::vector<uint8_t>& d) { std::copy(d.begin(), d.end(), model_.begin() + off); }
  void zero(uint64_t off, uint64_t len) { std::fill(model_.begin() + off, model_.begin() + off + len, 0); }

  CmdResult qemu_io(std::vector<std::string> cmds) {
    std::vector<std::string> argv = {"qemu-io", "-f", "raw"};
    for (auto& c : cmds) {
      argv.push_back("-c");
      argv.push_back(c);
    }
    argv.push_back("nbd:unix:" + sock_ + ":exportname=dev");
    return run(argv);
  }
  static bool clean(const CmdResult& r) {
    return r.ok() && r.out.find("fail") == std::string::npos && r.err.find("fail") == std::string::npos;
  }

  TempDir tmp_;
  std::unique_ptr<Env> env_;
  Built built_;
  StaticExportProvider provider_;
  std::string mnt_, sock_;
  std::unique_ptr<FuseExport> fuse_;
  std::unique_ptr<NbdServer> nbd_;
  std::vector<uint8_t> model_;
};

std::string case_name(const testing::TestParamInfo<const Case*>& i) { return i.param->name; }
std::vector<const Case*> cases() {
  std::vector<const Case*> out;
  for (const auto& c : contract_cases()) out.push_back(&c);
  return out;
}

TEST_P(ContractE2E, FuseFilePunchZeroAndPreallocate) {
  if (kind() == Kind::kErrors) {
    int fd = open(file().c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    char b[512];
    EXPECT_EQ(pread(fd, b, sizeof b, 0), -1);
    EXPECT_EQ(errno, EIO);
    close(fd);
    return;
  }
  if (kind() == Kind::kReadOnly) {
    EXPECT_LT(open(file().c_str(), O_RDWR), 0);
    EXPECT_EQ(errno, EROFS);
    ASSERT_NO_FATAL_FAILURE(expect_path(file(), 0, kDevSize, false, "read-only"));
    return;
  }
  const bool drops = kind() == Kind::kDropsWrites;
  int fd = open(file().c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << strerror(errno);
  auto data = random_bytes(256 * 1024, 31);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 65536), static_cast<ssize_t>(data.size()));
  if (!drops) put(65536, data);
  // Punch-hole at offsets inside blocks/chunks: reads zero (loop sends both
  // discard and zero-out this way).
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 65536 + 1536, 20480), 0) << strerror(errno);
  zero(65536 + 1536, 20480);
  ASSERT_NO_FATAL_FAILURE(expect_path(file(), 0, kDevSize, false, "after punch-hole"));
  // A whole-block punch too (the cheap path where a target can unmap).
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 131072, 65536), 0) << strerror(errno);
  zero(131072, 65536);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 65536 + 100000, 12345), 0) << strerror(errno);
  zero(65536 + 100000, 12345);
  ASSERT_NO_FATAL_FAILURE(expect_path(file(), 0, kDevSize, false, "after zero-range"));
  // Preallocation keeps working and changes nothing.
  ASSERT_EQ(fallocate(fd, 0, 0, kDevSize), 0) << strerror(errno);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_KEEP_SIZE, 4096, 8192), 0) << strerror(errno);
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
  ASSERT_NO_FATAL_FAILURE(expect_path(file(), 0, kDevSize, false, "after preallocation"));
  ASSERT_NO_FATAL_FAILURE(expect_model("FUSE steps"));
}

TEST_P(ContractE2E, LoopDeviceDiscardAndZeroOut) {
  if (kind() == Kind::kErrors) GTEST_SKIP() << "every I/O fails by design";
  LoopDevice loop(file(), kind() == Kind::kReadOnly);
  ASSERT_FALSE(loop.device().empty()) << loop.error();
  const std::string& ld = loop.device();
  if (kind() == Kind::kReadOnly) {
    ASSERT_NO_FATAL_FAILURE(expect_path(ld, 0, kDevSize, true, "read-only loop"));
    EXPECT_FALSE(run({"blkdiscard", "-o", "0", "-l", "65536", ld}).ok());
    ASSERT_NO_FATAL_FAILURE(expect_model("refused discard"));
    return;
  }
  const bool drops = kind() == Kind::kDropsWrites;
  int fd = open(ld.c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0) << strerror(errno);
  void* p = nullptr;
  ASSERT_EQ(posix_memalign(&p, 4096, 512 * 1024), 0);
  auto data = random_bytes(512 * 1024, 41);
  memcpy(p, data.data(), data.size());
  ASSERT_EQ(pwrite(fd, p, data.size(), 262144), static_cast<ssize_t>(data.size())) << strerror(errno);
  free(p);
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
  if (!drops) put(262144, data);
  struct Step {
    std::vector<std::string> argv;
    uint64_t off, len;
  };
  const Step steps[] = {
      {{"blkdiscard", "-o", "266240", "-l", "36864", ld}, 266240, 36864},            // REQ_OP_DISCARD
      {{"blkdiscard", "-z", "-o", "327680", "-l", "20480", ld}, 327680, 20480},      // zero-out, NOUNMAP
      {{"fallocate", "-p", "-o", "401408", "-l", "65536", ld}, 401408, 65536},       // zero-out, unmap allowed
      {{"fallocate", "-z", "-o", "512000", "-l", "4096", ld}, 512000, 4096},         // zero-out, NOUNMAP
      {{"blkdiscard", "-o", "655360", "-l", "131072", ld}, 655360, 131072},
  };
  for (const auto& s : steps) {
    auto r = run(s.argv);
    ASSERT_TRUE(r.ok()) << s.argv[0] << " " << s.argv[1] << ": " << r.describe();
    zero(s.off, s.len);
    ASSERT_NO_FATAL_FAILURE(expect_path(ld, 0, kDevSize, true, s.argv[0] + " " + s.argv[1] + " " + s.argv[2]));
  }
  ASSERT_NO_FATAL_FAILURE(expect_model("loop steps"));
}

TEST_P(ContractE2E, NbdWriteZeroesAndDiscard) {
  if (kind() == Kind::kErrors) {
    auto r = qemu_io({"read 0 4k"});
    EXPECT_FALSE(clean(r)) << r.describe();
    return;
  }
  if (kind() == Kind::kReadOnly) {
    auto r = qemu_io({"write -P 0x11 0 4k"});
    EXPECT_FALSE(clean(r)) << "a write to a read-only export succeeded: " << r.describe();
    r = qemu_io({"write -z 0 64k"});
    EXPECT_FALSE(clean(r)) << r.describe();
    ASSERT_NO_FATAL_FAILURE(expect_model("refused NBD writes"));
    return;
  }
  const bool drops = kind() == Kind::kDropsWrites;
  auto r = qemu_io({"write -P 0x5a 0 256k", "write -z 4608 9216", "write -z -u 65536 65536",
                    "write -z -u 140800 3584", "discard 196608 16384"});
  ASSERT_TRUE(clean(r)) << r.describe();
  if (!drops) {
    std::fill(model_.begin(), model_.begin() + 262144, 0x5a);
    zero(4608, 9216);
    zero(65536, 65536);
    zero(140800, 3584);
  }
  // Discard is advisory: the range reads zero only where caps promise it.
  if (!built_.dev->caps().trim_zeroes && !drops) {
    std::vector<uint8_t> got(16384);
    ASSERT_TRUE(built_.dev->read(196608, got).ok());
    std::copy(got.begin(), got.end(), model_.begin() + 196608);
  } else {
    zero(196608, 16384);
  }
  r = qemu_io({"read -P 0 4608 9216", "read -P 0 65536 65536", "read -P 0 140800 3584",
               drops ? "read -P 0 0 4096" : "read -P 0x5a 0 4096", drops ? "read -P 0 144384 4096" : "read -P 0x5a 144384 4096"});
  ASSERT_TRUE(clean(r)) << r.describe();
  ASSERT_NO_FATAL_FAILURE(expect_model("NBD steps"));
}

INSTANTIATE_TEST_SUITE_P(AllTargets, ContractE2E, testing::ValuesIn(cases()), case_name);

}  // namespace
