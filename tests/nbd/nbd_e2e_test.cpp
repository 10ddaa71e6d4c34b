// The NBD server against real clients (qemu-io, qemu-img, nbdinfo, nbdcopy)
// and against a hostile one speaking raw bytes.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "common/sys_util.h"
#include "nbd/nbd_raw_client.h"
#include "export/nbd/nbd_proto.h"
#include "export/nbd/nbd_server.h"
#include "io/fault_device.h"
#include "io/file_device.h"
#include "io/memory_device.h"

using namespace udm;
using namespace udm::test;
using namespace udm::nbd;

namespace {

constexpr uint64_t kSize = 16 << 20;

class NbdE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto t : {"qemu-io", "qemu-img", "nbdinfo", "nbdcopy"})
      if (!have_tool(t)) GTEST_SKIP() << t << " missing (scripts/setup installs it)";
    disk_ = tmp_.file("disk.img");
    write_file(disk_, random_bytes(kSize, 7));
    ro_ = tmp_.file("ro.img");
    write_file(ro_, random_bytes(1 << 20, 8));
    auto f = FileDevice::open(disk_);
    ASSERT_TRUE(f.ok());
    provider_.add("disk", *f);
    auto r = FileDevice::open(ro_, {.writable = false});
    ASSERT_TRUE(r.ok());
    provider_.add("ro", *r);
    sock_ = tmp_.file("nbd.sock");
    NbdServerOptions o;
    o.unix_path = sock_;
    o.tcp_address = "127.0.0.1:0";
    o.workers = 4;
    server_ = std::make_unique<NbdServer>(provider_, o);
    ASSERT_TRUE(server_->start().ok());
  }
  void TearDown() override {
    if (server_) server_->stop();
  }
  std::string qemu(const std::string& name) const { return "nbd:unix:" + sock_ + ":exportname=" + name; }
  std::string uri(const std::string& name) const { return "nbd+unix:///" + name + "?socket=" + sock_; }
  CmdResult qemu_io(const std::string& name, std::vector<std::string> cmds) {
    std::vector<std::string> argv = {"qemu-io", "-f", "raw"};
    for (auto& c : cmds) {
      argv.push_back("-c");
      argv.push_back(c);
    }
    argv.push_back(qemu(name));
    return run(argv);
  }
  // qemu-io prints "Pattern verification failed" but may exit 0.
  static bool clean(const CmdResult& r) {
    return r.ok() && r.out.find("fail") == std::string::npos && r.err.find("fail") == std::string::npos;
  }
  TempDir tmp_;
  std::string disk_, ro_, sock_;
  StaticExportProvider provider_;
  std::unique_ptr<NbdServer> server_;
};

}  // namespace

TEST_F(NbdE2E, NbdinfoListSizesAndConstraints) {
  auto r = run({"nbdinfo", "--list", "nbd+unix://?socket=" + sock_});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("export=\"disk\""), std::string::npos);
  EXPECT_NE(r.out.find("export=\"ro\""), std::string::npos);
  r = run({"nbdinfo", "--json", uri("disk")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("\"export-size\": " + std::to_string(kSize)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"block_size_minimum\": 512"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"block_size_preferred\": 4096"), std::string::npos);
  EXPECT_NE(r.out.find("\"block_size_maximum\": 33554432"), std::string::npos);
  EXPECT_NE(r.out.find("\"can_multi_conn\": true"), std::string::npos);
  EXPECT_NE(r.out.find("\"is_read_only\": false"), std::string::npos);
  r = run({"nbdinfo", "--json", uri("ro")});
  EXPECT_NE(r.out.find("\"is_read_only\": true"), std::string::npos) << r.out;
  r = run({"nbdinfo", uri("nosuch")});
  EXPECT_FALSE(r.ok());
}

TEST_F(NbdE2E, QemuIoPatternsVerifiedByteForByte) {
  auto r = qemu_io("disk", {"write -P 0xa5 0 1M", "write -P 0x5a 1M 4k", "discard 2M 1M",
                            "write -z 4M 512k", "write -z -u 5M 64k", "aio_write -P 0x11 8M 64k",
                            "aio_write -P 0x22 9M 64k", "aio_flush", "write -f -P 0x33 10M 4k",
                            "flush", "read -P 0xa5 0 1M", "read -P 0x5a 1M 4k",
                            "read -P 0 4M 512k", "read -P 0x11 8M 64k", "read -P 0x22 9M 64k"});
  ASSERT_TRUE(clean(r)) << r.describe();
  auto img = read_file(disk_);
  auto orig = random_bytes(kSize, 7);
  auto expect_fill = [&](uint64_t off, uint64_t len, uint8_t v) {
    for (uint64_t i = off; i < off + len; i++) ASSERT_EQ(img[i], v) << "at " << i;
  };
  expect_fill(0, 1 << 20, 0xa5);
  expect_fill(1 << 20, 4096, 0x5a);
  expect_fill(4 << 20, 512 << 10, 0);
  expect_fill(5 << 20, 64 << 10, 0);
  expect_fill(8 << 20, 64 << 10, 0x11);
  expect_fill(9 << 20, 64 << 10, 0x22);
  expect_fill(10 << 20, 4096, 0x33);
  expect_fill(2 << 20, 1 << 20, 0);  // file device: punched holes read as zeroes
  // Untouched bytes kept their contents.
  EXPECT_TRUE(std::equal(img.begin() + (12 << 20), img.end(), orig.begin() + (12 << 20)));
  // Out of range: an error, not a crash, and the export keeps working.
  r = qemu_io("disk", {"read 16M 512"});
  EXPECT_NE(r.out + r.err, "");
  r = qemu_io("disk", {"read -P 0xa5 0 4k"});
  EXPECT_TRUE(clean(r)) << r.describe();
}

TEST_F(NbdE2E, ReadOnlyExportRefusesWrites) {
  // qemu sees the READ_ONLY flag and refuses to open read-write...
  auto r = qemu_io("ro", {"write -P 1 0 4k"});
  EXPECT_NE((r.out + r.err).find("Permission denied"), std::string::npos) << r.describe();
  r = run({"qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", qemu("ro")});
  EXPECT_TRUE(clean(r)) << r.describe();
  // ...and a client that writes anyway gets EPERM for write, trim and zero.
  int fd = go(sock_, "ro");
  ASSERT_GE(fd, 0);
  send_all(fd, request(kCmdWrite, 0, 512, 1));
  send_all(fd, std::vector<uint8_t>(512, 0xcc));
  send_all(fd, request(kCmdTrim, 0, 4096, 2));
  send_all(fd, request(kCmdWriteZeroes, 0, 4096, 3));
  // Requests run in parallel, so replies may arrive in any order: match them by cookie.
  std::set<uint64_t> cookies;
  for (int i = 0; i < 3; i++) {
    auto rep = recv_n(fd, 16);
    ASSERT_EQ(rep.size(), 16u);
    EXPECT_EQ(get_be32(rep.data() + 4), kEperm);
    cookies.insert(get_be64(rep.data() + 8));
  }
  EXPECT_EQ(cookies, (std::set<uint64_t>{1, 2, 3}));
  close(fd);
  EXPECT_EQ(read_file(ro_), random_bytes(1 << 20, 8));
}

TEST_F(NbdE2E, QemuImgAndNbdcopyRoundTrips) {
  auto src = tmp_.file("src.img");
  write_file(src, random_bytes(kSize, 99));
  auto r = run({"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, qemu("disk")});
  ASSERT_TRUE(r.ok()) << r.describe();
  r = run({"qemu-img", "compare", "-f", "raw", "-F", "raw", src, qemu("disk")});
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(disk_), read_file(src));
  auto out = tmp_.file("out.img");
  r = run({"nbdcopy", uri("disk"), out});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(out), read_file(src));
  auto src2 = tmp_.file("src2.img");
  write_file(src2, random_bytes(kSize, 100));
  r = run({"nbdcopy", "--connections=4", "--requests=16", src2, uri("disk")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(disk_), read_file(src2));
}

TEST_F(NbdE2E, ConcurrentConnectionsWriteTheirOwnRanges) {
  std::vector<std::thread> ts;
  std::vector<CmdResult> results(6);
  for (int i = 0; i < 6; i++) {
    ts.emplace_back([&, i] {
      std::string off = std::to_string(i * 2) + "M";
      results[i] = qemu_io("disk", {"aio_write -P " + std::to_string(i + 1) + " " + off + " 1M",
                                    "aio_write -P " + std::to_string(i + 0x41) + " " +
                                        std::to_string(i * 2 + 1) + "M 1M",
                                    "aio_flush", "read -P " + std::to_string(i + 1) + " " + off + " 1M"});
    });
  }
  for (auto& t : ts) t.join();
  for (auto& r : results) EXPECT_TRUE(clean(r)) << r.describe();
  auto img = read_file(disk_);
  for (int i = 0; i < 6; i++) {
    EXPECT_EQ(img[(i * 2) << 20], i + 1);
    EXPECT_EQ(img[((i * 2 + 1) << 20) + 12345], i + 0x41);
  }
  // TCP listener serves the same exports.
  auto r = run({"nbdinfo", "--size", "nbd://" + server_->tcp_bound_address() + "/disk"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, std::to_string(kSize) + "\n");
}

// CAN_MULTI_CONN's promise (docs/nbd.md): a flush on one connection makes
// durable the writes completed on every connection. The export is a device
// with a volatile write cache (FaultDevice: durable_image() is what survives
// a power cut now): connection A writes, B flushes, C reads back; a write
// A completes after the flush stays volatile (so the check can fail).
TEST_F(NbdE2E, MultiConnFlushOnOneConnectionCoversAnothersWrites) {
  constexpr uint64_t kVolSize = 1 << 20;
  auto vol = std::make_shared<FaultDevice>(random_bytes(kVolSize, 21));
  provider_.add("volatile", vol);
  auto r = run({"nbdinfo", "--json", uri("volatile")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("\"can_multi_conn\": true"), std::string::npos) << r.out;
  int a = go(sock_, "volatile"), b = go(sock_, "volatile"), c = go(sock_, "volatile");
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  ASSERT_GE(c, 0);
  auto reply_ok = [](int fd, uint64_t cookie) {
    auto rep = recv_n(fd, 16);
    return rep.size() == 16 && get_be32(rep.data() + 4) == 0 && get_be64(rep.data() + 8) == cookie;
  };
  auto write = [&](int fd, uint64_t off, const std::vector<uint8_t>& data, uint64_t cookie) {
    auto req = request(kCmdWrite, off, static_cast<uint32_t>(data.size()), cookie);
    req.insert(req.end(), data.begin(), data.end());
    ASSERT_TRUE(send_all(fd, req));
    ASSERT_TRUE(reply_ok(fd, cookie));
  };
  const auto first = random_bytes(65536, 22), later = random_bytes(65536, 23);
  ASSERT_NO_FATAL_FAILURE(write(a, 128 * 1024, first, 1));
  auto before = vol->durable_image();
  EXPECT_NE(std::vector<uint8_t>(before.begin() + 128 * 1024, before.begin() + 192 * 1024), first)
      << "the write was durable before any flush: this device cannot tell";
  ASSERT_TRUE(send_all(b, request(kCmdFlush, 0, 0, 2)));
  ASSERT_TRUE(reply_ok(b, 2));
  ASSERT_NO_FATAL_FAILURE(write(a, 512 * 1024, later, 3));
  auto durable = vol->durable_image();
  EXPECT_EQ(std::vector<uint8_t>(durable.begin() + 128 * 1024, durable.begin() + 192 * 1024), first)
      << "B's flush did not cover A's completed write";
  EXPECT_NE(std::vector<uint8_t>(durable.begin() + 512 * 1024, durable.begin() + 576 * 1024), later);
  // C sees both writes.
  ASSERT_TRUE(send_all(c, request(kCmdRead, 128 * 1024, 65536, 4)));
  ASSERT_TRUE(reply_ok(c, 4));
  EXPECT_EQ(recv_n(c, 65536), first);
  ASSERT_TRUE(send_all(c, request(kCmdRead, 512 * 1024, 65536, 5)));
  ASSERT_TRUE(reply_ok(c, 5));
  EXPECT_EQ(recv_n(c, 65536), later);
  for (int fd : {a, b, c}) close(fd);
}

TEST_F(NbdE2E, HostileClientsNeverTakeTheServerDown) {
  // 1. Garbage instead of client flags / option magic.
  int fd = connect_unix(sock_);
  recv_n(fd, 18);
  send_all(fd, std::vector<uint8_t>(64, 0xff));
  EXPECT_TRUE(closed_by_peer(fd));
  close(fd);
  fd = handshake(sock_);
  send_all(fd, std::vector<uint8_t>(16, 0x42));
  EXPECT_TRUE(closed_by_peer(fd));
  close(fd);
  // 2. Oversized option length: closed, not buffered.
  fd = handshake(sock_);
  std::vector<uint8_t> big;
  put_be64(big, kOptMagic);
  put_be32(big, kOptGo);
  put_be32(big, 0xffffffffu);
  send_all(fd, big);
  EXPECT_TRUE(closed_by_peer(fd));
  close(fd);
  // 3. Unknown option, malformed GO, unknown export: error replies, session continues.
  fd = handshake(sock_);
  send_all(fd, option(4242, {1, 2, 3}));
  EXPECT_EQ(read_until_final(fd), kRepErrUnsup);
  send_all(fd, option(kOptGo, {0, 0, 0, 99, 'x'}));
  EXPECT_EQ(read_until_final(fd), kRepErrInvalid);
  send_all(fd, option(kOptGo, go_data("nosuch")));
  EXPECT_EQ(read_until_final(fd), kRepErrUnknown);
  send_all(fd, option(kOptList, {1}));
  EXPECT_EQ(read_until_final(fd), kRepErrInvalid);
  send_all(fd, option(kOptGo, go_data("disk")));
  EXPECT_EQ(read_until_final(fd), kRepAck);
  // 4. Transmission: out-of-range and oversized reads get EINVAL, connection lives.
  send_all(fd, request(kCmdRead, kSize, 512, 7));
  auto rep = recv_n(fd, 16);
  ASSERT_EQ(rep.size(), 16u);
  EXPECT_EQ(get_be32(rep.data() + 4), kEinval);
  EXPECT_EQ(get_be64(rep.data() + 8), 7u);
  send_all(fd, request(kCmdRead, 0, (64u << 20) + 512, 8));
  rep = recv_n(fd, 16);
  EXPECT_EQ(get_be32(rep.data() + 4), kEinval);
  send_all(fd, request(kCmdWrite, kSize - 512, 1024, 9));  // beyond end: payload skipped
  send_all(fd, std::vector<uint8_t>(1024, 0));
  rep = recv_n(fd, 16);
  EXPECT_EQ(get_be32(rep.data() + 4), kEnospc);
  send_all(fd, request(77, 0, 0, 10));
  rep = recv_n(fd, 16);
  EXPECT_EQ(get_be32(rep.data() + 4), kEinval);
  send_all(fd, request(kCmdRead, 0, 4096, 11));
  rep = recv_n(fd, 16 + 4096);
  ASSERT_EQ(rep.size(), 16u + 4096);
  EXPECT_EQ(get_be32(rep.data() + 4), 0u);
  EXPECT_TRUE(std::equal(rep.begin() + 16, rep.end(), read_file(disk_).begin()));
  // 5. Oversized write: closed (we accept up to 64 MiB).
  send_all(fd, request(kCmdWrite, 0, (64u << 20) + 512, 12));
  EXPECT_TRUE(closed_by_peer(fd));
  close(fd);
  // 6. Client vanishes mid-payload and mid-handshake.
  fd = go(sock_, "disk");
  ASSERT_GE(fd, 0);
  send_all(fd, request(kCmdWrite, 0, 65536, 13));
  send_all(fd, std::vector<uint8_t>(1000, 0xee));
  close(fd);
  fd = connect_unix(sock_);
  close(fd);
  // 7. Bad request magic: closed.
  fd = go(sock_, "disk");
  ASSERT_GE(fd, 0);
  send_all(fd, std::vector<uint8_t>(28, 0));
  EXPECT_TRUE(closed_by_peer(fd));
  close(fd);
  // The half-sent write changed nothing; the server still serves a good client.
  auto img = read_file(disk_);
  EXPECT_NE(img[0], 0xee);
  auto r = qemu_io("disk", {"write -P 0x77 0 4k", "read -P 0x77 0 4k"});
  EXPECT_TRUE(clean(r)) << r.describe();
}

namespace {
// One READ over a raw connection: the payload (simple or structured reply),
// or empty if the reply was not a well-formed success.
std::vector<uint8_t> raw_read(int fd, bool structured, uint64_t off, uint32_t len, uint64_t cookie) {
  if (!send_all(fd, request(kCmdRead, off, len, cookie))) return {};
  if (structured) {
    auto h = recv_n(fd, 20);
    if (h.size() != 20 || get_be32(h.data()) != kStructuredReplyMagic || get_be64(h.data() + 8) != cookie ||
        get_be16(h.data() + 6) != kReplyTypeOffsetData || get_be32(h.data() + 16) != len + 8 ||
        !(get_be16(h.data() + 4) & kReplyFlagDone))
      return {};
    auto o = recv_n(fd, 8);
    if (o.size() != 8 || get_be64(o.data()) != off) return {};
  } else {
    auto h = recv_n(fd, 16);
    if (h.size() != 16 || get_be32(h.data()) != kSimpleReplyMagic || get_be32(h.data() + 4) != 0 ||
        get_be64(h.data() + 8) != cookie)
      return {};
  }
  return recv_n(fd, len);
}
}  // namespace

// READs of a file-backed export at any offset and size are the file's bytes,
// with simple and structured replies, after writes (checked against the
// file too), and from a device that has no file (memory).
TEST_F(NbdE2E, ReadsAtAnyOffsetAreTheFilesBytes) {
  provider_.add("mem", std::make_shared<MemoryDevice>(random_bytes(4 << 20, 31)));
  for (bool structured : {false, true}) {
    int fd = handshake(sock_);
    ASSERT_GE(fd, 0);
    if (structured) {
      ASSERT_TRUE(send_all(fd, option(kOptStructuredReply, {})));
      ASSERT_EQ(read_until_final(fd), kRepAck);
    }
    ASSERT_TRUE(send_all(fd, option(kOptGo, go_data("disk"))));
    ASSERT_EQ(read_until_final(fd), kRepAck);
    auto img = read_file(disk_);
    uint64_t cookie = 100;
    for (auto [off, len] : {std::pair<uint64_t, uint32_t>{0, 1 << 20}, {12345, 777777}, {kSize - 65536, 65536},
                            {4095, 4097}, {kSize - (3 << 20) - 1, 3 << 20}}) {
      auto got = raw_read(fd, structured, off, len, ++cookie);
      ASSERT_EQ(got.size(), len) << "read " << len << " at " << off << (structured ? " (structured)" : "");
      EXPECT_TRUE(std::equal(got.begin(), got.end(), img.begin() + static_cast<long>(off)))
          << "read " << len << " at " << off;
    }
    // A write, then a read of it; the file holds it too.
    auto w = random_bytes(200000, structured ? 41 : 42);
    std::vector<uint8_t> req = request(kCmdWrite, 333333, static_cast<uint32_t>(w.size()), 7);
    req.insert(req.end(), w.begin(), w.end());
    ASSERT_TRUE(send_all(fd, req));
    auto wr = recv_n(fd, structured ? 20 : 16);
    ASSERT_EQ(wr.size(), structured ? 20u : 16u);
    if (!structured) {
      EXPECT_EQ(get_be32(wr.data() + 4), 0u);
    }
    auto got = raw_read(fd, structured, 333333, static_cast<uint32_t>(w.size()), 8);
    EXPECT_TRUE(got == w);
    img = read_file(disk_);
    EXPECT_TRUE(std::equal(w.begin(), w.end(), img.begin() + 333333));
    close(fd);
  }
  // No file under the device: same bytes.
  int fd = go(sock_, "mem");
  ASSERT_GE(fd, 0);
  auto mem = random_bytes(4 << 20, 31);
  auto got = raw_read(fd, false, 1000, 1 << 20, 9);
  ASSERT_EQ(got.size(), 1u << 20);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), mem.begin() + 1000));
  close(fd);
  // qemu-io with pattern checks, many requests in flight.
  auto r = qemu_io("disk", {"write -P 0x6b 1M 2M", "aio_read -P 0x6b 1M 1M", "aio_read -P 0x6b 2M 1M",
                            "aio_read -P 0x6b 1536k 1M", "aio_flush", "read -P 0x6b 1M 2M"});
  EXPECT_TRUE(clean(r)) << r.describe();
}

// Many requests pipelined on one connection (reads, writes, refused requests,
// flushes), with a client that does not read its replies for a while: the
// server's receive buffer splits the byte stream into requests, replies are
// combined into few sendmsg calls and, once 8 MiB of them wait, threads block
// on the socket instead of queueing more. Every request must get exactly one
// whole reply, in either reply mode, with the right bytes.
TEST_F(NbdE2E, PipelinedBurstsGetOneWholeReplyPerRequest) {
  const auto orig = random_bytes(kSize, 7);
  for (bool structured : {false, true}) {
    SCOPED_TRACE(structured ? "structured replies" : "simple replies");
    int fd = handshake(sock_);
    ASSERT_GE(fd, 0);
    if (structured) {
      send_all(fd, option(kOptStructuredReply, {}));
      ASSERT_EQ(read_until_final(fd), kRepAck);
    }
    send_all(fd, option(kOptGo, go_data("disk")));
    ASSERT_EQ(read_until_final(fd), kRepAck);

    constexpr uint64_t kRequests = 4000;
    enum Kind : uint8_t { kRead, kWrite, kRefused, kFlush };
    std::vector<Kind> kind(kRequests);
    std::vector<uint64_t> offset(kRequests);
    std::mt19937_64 rng(structured ? 2 : 1);
    uint64_t writes = 0;
    std::vector<uint8_t> stream;
    for (uint64_t i = 0; i < kRequests; i++) {
      if (i % 500 == 499) {
        kind[i] = kFlush;
        auto q = request(kCmdFlush, 0, 0, i);
        stream.insert(stream.end(), q.begin(), q.end());
      } else if (i % 10 == 9) {
        kind[i] = kRefused;  // past the end: EINVAL before the device sees it
        auto q = request(kCmdRead, kSize, 4096, i);
        stream.insert(stream.end(), q.begin(), q.end());
      } else if (i % 10 >= 7) {
        kind[i] = kWrite;  // each to its own block of the last 4 MiB
        offset[i] = (12 << 20) + writes++ * 4096;
        auto q = request(kCmdWrite, offset[i], 4096, i);
        stream.insert(stream.end(), q.begin(), q.end());
        std::vector<uint8_t> data(4096, static_cast<uint8_t>(i * 7 + 1));
        std::memcpy(data.data(), &i, sizeof i);
        stream.insert(stream.end(), data.begin(), data.end());
      } else {
        kind[i] = kRead;  // unaligned, from the first 8 MiB, which nothing writes
        offset[i] = rng() % ((8 << 20) - 4096);
        auto q = request(kCmdRead, offset[i], 4096, i);
        stream.insert(stream.end(), q.begin(), q.end());
      }
    }
    // The client reads replies only after a while, on its own thread.
    std::vector<int> answered(kRequests, 0);
    std::vector<std::string> bad;
    std::thread reader([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      for (uint64_t got = 0; got < kRequests; got++) {
        uint64_t cookie;
        uint32_t error = 0;
        std::vector<uint8_t> data;
        if (!structured) {
          auto h = recv_n(fd, 16);
          if (h.size() != 16 || get_be32(h.data()) != kSimpleReplyMagic) {
            bad.push_back("bad simple reply header after " + std::to_string(got) + " replies");
            return;
          }
          error = get_be32(h.data() + 4);
          cookie = get_be64(h.data() + 8);
          if (cookie >= kRequests) {
            bad.push_back("unknown cookie " + std::to_string(cookie));
            return;
          }
          if (kind[cookie] == kRead && error == 0) data = recv_n(fd, 4096);
        } else {
          auto h = recv_n(fd, 20);
          if (h.size() != 20 || get_be32(h.data()) != kStructuredReplyMagic) {
            bad.push_back("bad structured reply header after " + std::to_string(got) + " replies");
            return;
          }
          uint16_t flags = get_be16(h.data() + 4), type = get_be16(h.data() + 6);
          cookie = get_be64(h.data() + 8);
          auto body = recv_n(fd, get_be32(h.data() + 16));
          if (cookie >= kRequests || !(flags & kReplyFlagDone)) {
            bad.push_back("cookie " + std::to_string(cookie) + " flags " + std::to_string(flags));
            return;
          }
          if (type == kReplyTypeError) {
            error = body.size() >= 4 ? get_be32(body.data()) : 0;
          } else if (type == kReplyTypeOffsetData) {
            if (body.size() < 8 || get_be64(body.data()) != offset[cookie]) {
              bad.push_back("cookie " + std::to_string(cookie) + ": data chunk at the wrong offset");
              return;
            }
            data.assign(body.begin() + 8, body.end());
          } else if (type != kReplyTypeNone) {
            bad.push_back("cookie " + std::to_string(cookie) + ": reply type " + std::to_string(type));
            return;
          }
        }
        answered[cookie]++;
        const uint64_t c = cookie;
        if (kind[c] == kRefused) {
          if (error != kEinval) bad.push_back("refused " + std::to_string(c) + ": error " + std::to_string(error));
        } else if (error != 0) {
          bad.push_back("request " + std::to_string(c) + ": error " + std::to_string(error));
        } else if (kind[c] == kRead &&
                   (data.size() != 4096 || !std::equal(data.begin(), data.end(), orig.begin() + offset[c]))) {
          bad.push_back("read " + std::to_string(c) + " at " + std::to_string(offset[c]) + ": wrong bytes");
        }
      }
    });
    // Sent in pieces of a few dozen requests, as a client's writes would.
    for (size_t pos = 0; pos < stream.size();) {
      size_t n = std::min<size_t>(stream.size() - pos, 200000);
      ssize_t w = ::send(fd, stream.data() + pos, n, MSG_NOSIGNAL);
      ASSERT_GT(w, 0) << strerror(errno);
      pos += static_cast<size_t>(w);
    }
    reader.join();
    EXPECT_TRUE(bad.empty()) << bad.size() << " problems, first: " << bad.front();
    uint64_t unanswered = 0, twice = 0;
    for (int a : answered) {
      unanswered += a == 0;
      twice += a > 1;
    }
    EXPECT_EQ(unanswered, 0u);
    EXPECT_EQ(twice, 0u);
    send_all(fd, request(kCmdDisc, 0, 0, 0));
    close(fd);
    // Every write reached its own block of the file.
    ASSERT_LE(writes, 1024u);
    auto img = read_file(disk_);
    for (uint64_t i = 0; i < kRequests; i++) {
      if (kind[i] != kWrite) continue;
      uint64_t tag;
      std::memcpy(&tag, img.data() + offset[i], sizeof tag);
      EXPECT_EQ(tag, i) << "block at " << offset[i];
    }
  }
}
