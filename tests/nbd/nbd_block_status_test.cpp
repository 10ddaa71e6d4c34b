// NBD allocation maps: NBD_OPT_LIST/SET_META_CONTEXT and NBD_CMD_BLOCK_STATUS
// (base:allocation, qemu:allocation-depth) against real clients (nbdinfo
// --map, qemu-img map/convert, nbdcopy) and a raw client that abuses them;
// and requests above the advertised 32 MiB from a client that never saw it.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "common/sys_util.h"
#include "device/mapped_device.h"
#include "device/table.h"
#include "export/nbd/nbd_proto.h"
#include "export/nbd/nbd_server.h"
#include "io/file_device.h"
#include "io/grow_file.h"
#include "io/memory_device.h"
#include "io/resolver.h"
#include "nbd/nbd_raw_client.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/writer.h"
#include "update/differ.h"

using namespace udm;
using namespace udm::test;
using namespace udm::nbd;

namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kSparseSize = 64 * kMiB;
constexpr uint64_t kLsmtSize = 8 * kMiB;

std::vector<uint8_t> meta_data(const std::string& name, const std::vector<std::string>& qs) {
  std::vector<uint8_t> v;
  put_be32(v, static_cast<uint32_t>(name.size()));
  v.insert(v.end(), name.begin(), name.end());
  put_be32(v, static_cast<uint32_t>(qs.size()));
  for (auto& q : qs) {
    put_be32(v, static_cast<uint32_t>(q.size()));
    v.insert(v.end(), q.begin(), q.end());
  }
  return v;
}

// Option replies up to the final one: (type, data) of each.
std::vector<std::pair<uint32_t, std::vector<uint8_t>>> replies(int fd) {
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> out;
  for (;;) {
    auto h = recv_n(fd, 20);
    if (h.size() != 20) return out;
    uint32_t type = get_be32(h.data() + 12), len = get_be32(h.data() + 16);
    out.emplace_back(type, recv_n(fd, len));
    if (type == kRepAck || (type & kRepErrBit)) return out;
  }
}

struct Chunk {
  uint16_t flags = 0, type = 0;
  uint64_t cookie = 0;
  std::vector<uint8_t> data;
};
Chunk chunk(int fd) {
  Chunk c;
  auto h = recv_n(fd, 20);
  if (h.size() != 20 || get_be32(h.data()) != kStructuredReplyMagic) return c;
  c.flags = get_be16(h.data() + 4);
  c.type = get_be16(h.data() + 6);
  c.cookie = get_be64(h.data() + 8);
  c.data = recv_n(fd, get_be32(h.data() + 16));
  return c;
}
// (length, status) descriptors of a BLOCK_STATUS chunk.
std::vector<std::pair<uint32_t, uint32_t>> descriptors(const Chunk& c) {
  std::vector<std::pair<uint32_t, uint32_t>> v;
  for (size_t i = 4; i + 8 <= c.data.size(); i += 8)
    v.emplace_back(get_be32(c.data.data() + i), get_be32(c.data.data() + i + 4));
  return v;
}

// nbdinfo --map output as (offset, length, type) triples.
std::vector<std::tuple<uint64_t, uint64_t, int>> parse_map(const std::string& out) {
  std::istringstream in(out);
  std::vector<std::tuple<uint64_t, uint64_t, int>> got;
  uint64_t off, len;
  int type;
  std::string rest;
  while (in >> off >> len >> type) {
    std::getline(in, rest);
    got.emplace_back(off, len, type);
  }
  return got;
}

class NbdBlockStatus : public ::testing::Test {
 protected:
  void SetUp() override {
    // sparse: 64 MiB file, data at [1M,2M) and [40M,40M+64K), holes elsewhere.
    sparse_path_ = tmp_.file("sparse.img");
    {
      auto f = FileDevice::open(sparse_path_, {.writable = true, .create = true, .create_size = kSparseSize});
      ASSERT_TRUE(f.ok()) << f.status().to_string();
      ASSERT_TRUE((*f)->write(kMiB, random_bytes(kMiB, 1)).ok());
      ASSERT_TRUE((*f)->write(40 * kMiB, random_bytes(65536, 2)).ok());
      ASSERT_TRUE((*f)->flush().ok());
      AllocMap m;
      ASSERT_TRUE((*f)->allocation(0, kSparseSize, m).ok());
      if (m.size() != 5) GTEST_SKIP() << "the temp directory's file system does not report holes";
      sparse_ = *f;
      provider_.add("sparse", sparse_);
    }
    // lsmt: base layer with data [0,1M); RW layer on top: data [2M,3M),
    // zeroed [0,512K).
    {
      using namespace udm::obd;
      std::vector<uint8_t> raw(kLsmtSize, 0);
      auto a = random_bytes(kMiB, 3);
      std::copy(a.begin(), a.end(), raw.begin());
      auto out = std::make_shared<MemGrowFile>();
      auto sink = file_sink(out, false);
      MemoryDevice rd(raw, true);
      ASSERT_TRUE(raw_to_layer(rd, *sink, CommitOptions{}).ok());
      auto layer = open_lsmt_layer(std::make_shared<MemoryDevice>(out->contents(), true), "base");
      ASSERT_TRUE(layer.ok()) << layer.status().to_string();
      auto d = std::make_shared<MemGrowFile>(), i = std::make_shared<MemGrowFile>();
      ASSERT_TRUE(create_rw_layer(*d, *i, kLsmtSize, "", "").ok());
      std::vector<LsmtLayer> layers;
      layers.push_back(std::move(*layer));
      auto dev = LsmtDevice::open(std::move(layers), RwLayerFiles{d, i});
      ASSERT_TRUE(dev.ok()) << dev.status().to_string();
      ASSERT_TRUE((*dev)->write(2 * kMiB, random_bytes(kMiB, 4)).ok());
      ASSERT_TRUE((*dev)->write_zeroes(0, kMiB / 2, false, true).ok());
      lsmt_ = *dev;
      provider_.add("lsmt", lsmt_);
    }
    provider_.add("mem", std::make_shared<MemoryDevice>(96 * kMiB));
    sock_ = tmp_.file("nbd.sock");
    NbdServerOptions o;
    o.unix_path = sock_;
    o.workers = 4;
    server_ = std::make_unique<NbdServer>(provider_, o);
    ASSERT_TRUE(server_->start().ok());
  }
  void TearDown() override {
    if (server_) server_->stop();
  }
  std::string uri(const std::string& name) const { return "nbd+unix:///" + name + "?socket=" + sock_; }
  std::string qemu(const std::string& name) const { return "nbd:unix:" + sock_ + ":exportname=" + name; }
  // Handshake, structured replies, SET_META_CONTEXT for `set_for` with `qs`, GO `name`.
  int negotiate(const std::string& name, const std::vector<std::string>& qs, std::string set_for = "") {
    if (set_for.empty()) set_for = name;
    int fd = handshake(sock_);
    send_all(fd, option(kOptStructuredReply, {}));
    EXPECT_EQ(read_until_final(fd), kRepAck);
    send_all(fd, option(kOptSetMetaContext, meta_data(set_for, qs)));
    auto r = replies(fd);
    EXPECT_FALSE(r.empty());
    EXPECT_EQ(r.back().first, kRepAck);
    send_all(fd, option(kOptGo, go_data(name)));
    EXPECT_EQ(read_until_final(fd), kRepAck);
    return fd;
  }

  TempDir tmp_;
  std::string sparse_path_, sock_;
  DevicePtr sparse_, lsmt_;
  StaticExportProvider provider_;
  std::unique_ptr<NbdServer> server_;
};

}  // namespace

TEST_F(NbdBlockStatus, MetaContextNegotiationAndAbuse) {
  int fd = handshake(sock_);
  // LIST works without structured replies: every context, or a namespace's.
  send_all(fd, option(kOptListMetaContext, meta_data("sparse", {})));
  auto r = replies(fd);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].first, kRepMetaContext);
  EXPECT_EQ(std::string(r[0].second.begin() + 4, r[0].second.end()), "base:allocation");
  EXPECT_EQ(std::string(r[1].second.begin() + 4, r[1].second.end()), "qemu:allocation-depth");
  send_all(fd, option(kOptListMetaContext, meta_data("sparse", {"base:", "nosuch:"})));
  r = replies(fd);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(get_be32(r[0].second.data()), kMetaBaseAllocation);
  // SET needs structured replies first.
  send_all(fd, option(kOptSetMetaContext, meta_data("sparse", {"base:allocation"})));
  EXPECT_EQ(read_until_final(fd), kRepErrInvalid);
  send_all(fd, option(kOptStructuredReply, {}));
  EXPECT_EQ(read_until_final(fd), kRepAck);
  // Unknown export, malformed payloads, oversized queries.
  send_all(fd, option(kOptSetMetaContext, meta_data("nosuch", {"base:allocation"})));
  EXPECT_EQ(read_until_final(fd), kRepErrUnknown);
  send_all(fd, option(kOptSetMetaContext, {0, 0, 0, 9, 'x'}));
  EXPECT_EQ(read_until_final(fd), kRepErrInvalid);
  auto lie = meta_data("sparse", {"base:allocation"});
  lie[16] = 0xff;  // the query's length runs past the option
  send_all(fd, option(kOptSetMetaContext, lie));
  EXPECT_EQ(read_until_final(fd), kRepErrInvalid);
  send_all(fd, option(kOptSetMetaContext, meta_data("sparse", {std::string(5000, 'b')})));
  EXPECT_EQ(read_until_final(fd), kRepErrTooBig);
  send_all(fd, option(kOptListMetaContext, meta_data("sparse", std::vector<std::string>(1000, "base:"))));
  EXPECT_EQ(read_until_final(fd), kRepErrTooBig);
  // Bad names select nothing: ACK with no context, and then BLOCK_STATUS is refused.
  send_all(fd, option(kOptSetMetaContext, meta_data("sparse", {"base:", "BASE:allocation", "x", ""})));
  r = replies(fd);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].first, kRepAck);
  send_all(fd, option(kOptGo, go_data("sparse")));
  ASSERT_EQ(read_until_final(fd), kRepAck);
  send_all(fd, request(kCmdBlockStatus, 0, 4096, 5));
  Chunk c = chunk(fd);
  EXPECT_EQ(c.type, kReplyTypeError);
  EXPECT_EQ(c.cookie, 5u);
  ASSERT_GE(c.data.size(), 4u);
  EXPECT_EQ(get_be32(c.data.data()), kEinval);
  // The connection lives on.
  send_all(fd, request(kCmdRead, kMiB, 512, 6));
  c = chunk(fd);
  EXPECT_EQ(c.type, kReplyTypeOffsetData);
  EXPECT_EQ(c.data.size(), 8u + 512);
  close(fd);

  // Contexts set for another export do not carry over to the one chosen.
  fd = negotiate("lsmt", {"base:allocation"}, "sparse");
  send_all(fd, request(kCmdBlockStatus, 0, 4096, 7));
  c = chunk(fd);
  EXPECT_EQ(c.type, kReplyTypeError);
  close(fd);
}

TEST_F(NbdBlockStatus, RawBlockStatusRepliesAndRefusals) {
  int fd = negotiate("sparse", {"qemu:allocation-depth", "base:allocation"});
  send_all(fd, request(kCmdBlockStatus, 0, kSparseSize, 1));
  // One chunk per context, in id order, DONE on the last.
  Chunk a = chunk(fd), b = chunk(fd);
  EXPECT_EQ(a.type, kReplyTypeBlockStatus);
  EXPECT_EQ(a.flags & kReplyFlagDone, 0);
  EXPECT_EQ(b.flags & kReplyFlagDone, kReplyFlagDone);
  ASSERT_GE(a.data.size(), 4u);
  EXPECT_EQ(get_be32(a.data.data()), kMetaBaseAllocation);
  EXPECT_EQ(get_be32(b.data.data()), kMetaQemuAllocationDepth);
  using D = std::vector<std::pair<uint32_t, uint32_t>>;
  const uint32_t hz = kStateHole | kStateZero;
  EXPECT_EQ(descriptors(a), (D{{kMiB, hz}, {kMiB, 0}, {38 * kMiB, hz}, {65536, 0}, {24 * kMiB - 65536, hz}}));
  EXPECT_EQ(descriptors(b), (D{{kMiB, 0}, {kMiB, 1}, {38 * kMiB, 0}, {65536, 1}, {24 * kMiB - 65536, 0}}));
  // REQ_ONE, an unaligned range.
  send_all(fd, request(kCmdBlockStatus, kMiB - 100, 4096, 2, kCmdFlagReqOne));
  a = chunk(fd);
  b = chunk(fd);
  EXPECT_EQ(descriptors(a), (D{{100, hz}}));
  EXPECT_EQ(descriptors(b), (D{{100, 0}}));
  // Out of range, zero length, bad flags: EINVAL, connection kept.
  for (auto [off, len, flags] : {std::tuple{kSparseSize - 512, 1024u, 0}, std::tuple{kSparseSize, 1u, 0},
                                 std::tuple{uint64_t{UINT64_MAX}, 2u, 0}, std::tuple{uint64_t{0}, 0u, 0},
                                 std::tuple{uint64_t{0}, 512u, int{kCmdFlagFua}}}) {
    send_all(fd, request(kCmdBlockStatus, off, len, 3, static_cast<uint16_t>(flags)));
    Chunk e = chunk(fd);
    EXPECT_EQ(e.type, kReplyTypeError) << off << "+" << len;
    ASSERT_GE(e.data.size(), 4u);
    EXPECT_EQ(get_be32(e.data.data()), kEinval);
    EXPECT_EQ(e.flags & kReplyFlagDone, kReplyFlagDone);
  }
  send_all(fd, request(kCmdBlockStatus, 40 * kMiB, 4096, 4));
  a = chunk(fd);
  EXPECT_EQ(descriptors(a), (D{{4096, 0}}));
  chunk(fd);
  close(fd);
  // The lsmt stack: depth 1 = RW layer, 2 = base.
  fd = negotiate("lsmt", {"base:allocation", "qemu:allocation-depth"});
  send_all(fd, request(kCmdBlockStatus, 0, kLsmtSize, 9));
  a = chunk(fd);
  b = chunk(fd);
  EXPECT_EQ(descriptors(a), (D{{kMiB / 2, kStateZero}, {kMiB / 2, 0}, {kMiB, hz}, {kMiB, 0}, {5 * kMiB, hz}}));
  EXPECT_EQ(descriptors(b), (D{{kMiB / 2, 1}, {kMiB / 2, 2}, {kMiB, 0}, {kMiB, 1}, {5 * kMiB, 0}}));
  close(fd);
}

TEST_F(NbdBlockStatus, RealClientsSeeTheMap) {
  for (auto t : {"nbdinfo", "qemu-img", "nbdcopy"})
    if (!have_tool(t)) GTEST_SKIP() << t << " missing";
  // nbdinfo --map: base:allocation.
  auto r = run({"nbdinfo", "--map", uri("sparse")});
  ASSERT_TRUE(r.ok()) << r.describe();
  auto expect_map = [&](const std::string& out, const std::vector<std::tuple<uint64_t, uint64_t, int>>& want) {
    std::istringstream in(out);
    std::vector<std::tuple<uint64_t, uint64_t, int>> got;
    uint64_t off, len;
    int type;
    std::string rest;
    while (in >> off >> len >> type) {
      std::getline(in, rest);
      got.emplace_back(off, len, type);
    }
    EXPECT_EQ(got, want) << out;
  };
  expect_map(r.out, {{0, kMiB, 3}, {kMiB, kMiB, 0}, {2 * kMiB, 38 * kMiB, 3}, {40 * kMiB, 65536, 0},
                     {40 * kMiB + 65536, 24 * kMiB - 65536, 3}});
  r = run({"nbdinfo", "--map", uri("lsmt")});
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_map(r.out, {{0, kMiB / 2, 2}, {kMiB / 2, kMiB / 2, 0}, {kMiB, kMiB, 3}, {2 * kMiB, kMiB, 0},
                     {3 * kMiB, 5 * kMiB, 3}});
  r = run({"nbdinfo", "--map=qemu:allocation-depth", uri("lsmt")});
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_map(r.out, {{0, kMiB / 2, 1}, {kMiB / 2, kMiB / 2, 2}, {kMiB, kMiB, 0}, {2 * kMiB, kMiB, 1},
                     {3 * kMiB, 5 * kMiB, 0}});

  // qemu-img map: data and zero flags per extent.
  r = run({"qemu-img", "map", "--output=json", "-f", "raw", qemu("sparse")});
  ASSERT_TRUE(r.ok()) << r.describe();
  auto j = nlohmann::json::parse(r.out);
  std::vector<std::tuple<uint64_t, uint64_t, bool, bool>> got;
  for (auto& e : j) got.emplace_back(e["start"], e["length"], e["data"], e["zero"]);
  std::vector<std::tuple<uint64_t, uint64_t, bool, bool>> want = {
      {0, kMiB, false, true}, {kMiB, kMiB, true, false}, {2 * kMiB, 38 * kMiB, false, true},
      {40 * kMiB, 65536, true, false}, {40 * kMiB + 65536, 24 * kMiB - 65536, false, true}};
  EXPECT_EQ(got, want) << r.out;

  // A sparse nbdcopy of the lsmt stack and of the file: equal bytes, holes kept.
  for (auto [name, size, data] : {std::tuple{"lsmt", kLsmtSize, 1.5 * kMiB}, std::tuple{"sparse", kSparseSize, kMiB + 65536.0}}) {
    std::string out = tmp_.file(std::string(name) + ".copy");
    r = run({"nbdcopy", uri(name), out});
    ASSERT_TRUE(r.ok()) << r.describe();
    std::vector<uint8_t> want_bytes(size);
    DevicePtr dev = std::string(name) == "lsmt" ? lsmt_ : sparse_;
    ASSERT_TRUE(dev->read(0, want_bytes).ok());
    EXPECT_EQ(read_file(out), want_bytes) << name;
    struct stat st;
    ASSERT_EQ(::stat(out.c_str(), &st), 0);
    EXPECT_LE(uint64_t(st.st_blocks) * 512, uint64_t(data) + 256 * 1024) << name << ": the copy is not sparse";
  }

  // qemu-img convert -O qcow2 of the sparse export: a small qcow2 with the same bytes.
  std::string q = tmp_.file("sparse.qcow2");
  r = run({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", qemu("sparse"), q});
  ASSERT_TRUE(r.ok()) << r.describe();
  struct stat st;
  ASSERT_EQ(::stat(q.c_str(), &st), 0);
  EXPECT_LT(uint64_t(st.st_size), 4 * kMiB) << "qcow2 of a 64 MiB export with 1.06 MiB of data";
  r = run({"qemu-img", "compare", "-f", "qcow2", "-F", "raw", q, sparse_path_});
  EXPECT_TRUE(r.ok()) << r.describe();
}

// A fresh snapshot of a sparse origin and an update device over a sparse
// system file, built from table lines as the daemon builds them, exported
// and mapped by nbdinfo and qemu-img: the origin's holes come through the
// snapshot (data one layer down, its own exceptions on top), the update's
// unchanged blocks are the system file's holes, its ZERO operation a zero
// extent; a sparse nbdcopy of each equals its full read.
TEST_F(NbdBlockStatus, SnapshotAndUpdateDevicesShowTheirHoles) {
  for (auto t : {"nbdinfo", "qemu-img", "nbdcopy"})
    if (!have_tool(t)) GTEST_SKIP() << t << " missing";
  constexpr uint64_t kSize = 64 * kMiB, kKiB = 1024;
  // origin / old image: data at [1M, 2M), holes elsewhere.
  auto old_data = random_bytes(kMiB, 11);
  auto sparse_with = [&](const std::string& p) {
    auto f = FileDevice::open(p, {.writable = true, .create = true, .create_size = kSize});
    EXPECT_TRUE(f.ok());
    EXPECT_TRUE((*f)->write(kMiB, old_data).ok());
    EXPECT_TRUE((*f)->flush().ok());
  };
  std::string origin = tmp_.file("origin.img"), cow = tmp_.file("cow.img"), sys = tmp_.file("sys.img");
  sparse_with(origin);
  sparse_with(sys);
  { auto f = FileDevice::open(cow, {.writable = true, .create = true, .create_size = kSize}); ASSERT_TRUE(f.ok()); }
  // new image: the block at 1M+4K zeroed, one at 40M written.
  std::vector<uint8_t> old_img(kSize, 0);
  std::copy(old_data.begin(), old_data.end(), old_img.begin() + kMiB);
  auto new_img = old_img;
  std::fill(new_img.begin() + kMiB + 4096, new_img.begin() + kMiB + 8192, 0);
  auto w = random_bytes(4096, 12);
  std::copy(w.begin(), w.end(), new_img.begin() + 40 * kMiB);
  write_file(tmp_.file("old.img"), old_img);
  write_file(tmp_.file("new.img"), new_img);
  update::DiffV1Options o;
  o.progress = false;
  o.level = 3;
  auto st = update::make_diff_v1(tmp_.file("old.img"), tmp_.file("new.img"), tmp_.file("diff.img"), o);
  ASSERT_TRUE(st.ok()) << st.status().to_string();

  Resolver res;
  std::vector<MappedDevicePtr> devs;
  auto make = [&](const std::string& name, const std::string& line) {
    auto spec = parse_table(line);
    ASSERT_TRUE(spec.ok()) << spec.status().to_string();
    auto t = Table::build(*spec, res, TargetRegistry::builtin(), name);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    devs.push_back(std::make_shared<MappedDevice>(name, *t));
    provider_.add(name, devs.back());
  };
  const uint64_t sectors = kSize / 512;
  ASSERT_NO_FATAL_FAILURE(make("origin", fmt::format("0 {} snapshot-origin {}", sectors, origin)));
  ASSERT_NO_FATAL_FAILURE(make("snap", fmt::format("0 {} snapshot {} {} P 8", sectors, origin, cow)));
  ASSERT_NO_FATAL_FAILURE(make("upd", fmt::format("0 {} update {} {} 1 no_bg_update", sectors, sys, tmp_.file("diff.img"))));
  // The snapshot gets an exception of its own at 8M.
  ASSERT_TRUE(devs[1]->write(8 * kMiB, random_bytes(64 * kKiB, 13)).ok());

  auto r = run({"nbdinfo", "--map", uri("snap")});
  ASSERT_TRUE(r.ok()) << r.describe();
  using M = std::vector<std::tuple<uint64_t, uint64_t, int>>;
  EXPECT_EQ(parse_map(r.out), (M{{0, kMiB, 3}, {kMiB, kMiB, 0}, {2 * kMiB, 6 * kMiB, 3}, {8 * kMiB, 64 * kKiB, 0},
                                 {8 * kMiB + 64 * kKiB, 56 * kMiB - 64 * kKiB, 3}}))
      << r.out;
  r = run({"nbdinfo", "--map=qemu:allocation-depth", uri("snap")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(parse_map(r.out), (M{{0, kMiB, 0}, {kMiB, kMiB, 2}, {2 * kMiB, 6 * kMiB, 0}, {8 * kMiB, 64 * kKiB, 1},
                                 {8 * kMiB + 64 * kKiB, 56 * kMiB - 64 * kKiB, 0}}))
      << r.out;
  r = run({"nbdinfo", "--map", uri("origin")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(parse_map(r.out), (M{{0, kMiB, 3}, {kMiB, kMiB, 0}, {2 * kMiB, 62 * kMiB, 3}})) << r.out;
  r = run({"nbdinfo", "--map", uri("upd")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(parse_map(r.out), (M{{0, kMiB, 3}, {kMiB, 4096, 0}, {kMiB + 4096, 4096, 2}, {kMiB + 8192, kMiB - 8192, 0},
                                 {2 * kMiB, 38 * kMiB, 3}, {40 * kMiB, 4096, 0}, {40 * kMiB + 4096, 24 * kMiB - 4096, 3}}))
      << r.out;
  // qemu-img map of the update device: the ZERO block is a zero extent.
  r = run({"qemu-img", "map", "--output=json", "-f", "raw", qemu("upd")});
  ASSERT_TRUE(r.ok()) << r.describe();
  auto j = nlohmann::json::parse(r.out);
  std::vector<std::tuple<uint64_t, uint64_t, bool, bool>> got;
  for (auto& e : j) got.emplace_back(e["start"], e["length"], e["data"], e["zero"]);
  std::vector<std::tuple<uint64_t, uint64_t, bool, bool>> want = {
      {0, kMiB, false, true},           {kMiB, 4096, true, false},
      {kMiB + 4096, 4096, true, true},  {kMiB + 8192, kMiB - 8192, true, false},
      {2 * kMiB, 38 * kMiB, false, true}, {40 * kMiB, 4096, true, false},
      {40 * kMiB + 4096, 24 * kMiB - 4096, false, true}};
  EXPECT_EQ(got, want) << r.out;
  // Sparse copies: equal bytes, holes kept.
  for (auto [name, idx, data] : {std::tuple{"snap", 1, kMiB + 64 * kKiB}, std::tuple{"upd", 2, kMiB + 4096}}) {
    std::string out = tmp_.file(std::string(name) + ".copy");
    r = run({"nbdcopy", uri(name), out});
    ASSERT_TRUE(r.ok()) << r.describe();
    std::vector<uint8_t> want_bytes(kSize);
    ASSERT_TRUE(devs[idx]->read(0, want_bytes).ok());
    EXPECT_EQ(read_file(out), want_bytes) << name;
    struct stat sb;
    ASSERT_EQ(::stat(out.c_str(), &sb), 0);
    EXPECT_LE(uint64_t(sb.st_blocks) * 512, data + 256 * 1024) << name << ": the copy is not sparse";
  }
  EXPECT_EQ(read_file(tmp_.file("upd.copy")), new_img);
  for (auto n : {"upd", "snap", "origin"}) provider_.remove(n);
}

// A client that enters with NBD_OPT_EXPORT_NAME never sees the 32 MiB
// maximum: 48 MiB writes and reads are served (in pieces), 64 MiB + 1 is not.
TEST_F(NbdBlockStatus, LargeRequestsFromAnExportNameClient) {
  const uint32_t n = 48 * kMiB;
  auto data = random_bytes(n, 77);
  int fd = handshake(sock_);
  send_all(fd, option(kOptExportName, {'m', 'e', 'm'}));
  auto info = recv_n(fd, 10);  // size + flags (NO_ZEROES)
  ASSERT_EQ(info.size(), 10u);
  EXPECT_EQ(get_be64(info.data()), 96 * kMiB);
  auto w = request(kCmdWrite, 4 * kMiB + 512, n, 1, kCmdFlagFua);
  w.insert(w.end(), data.begin(), data.end());
  ASSERT_TRUE(send_all(fd, w));
  auto rep = recv_n(fd, 16);
  ASSERT_EQ(rep.size(), 16u);
  EXPECT_EQ(get_be32(rep.data() + 4), 0u);
  EXPECT_EQ(get_be64(rep.data() + 8), 1u);
  send_all(fd, request(kCmdRead, 4 * kMiB + 512, n, 2));
  rep = recv_n(fd, 16 + n);
  ASSERT_EQ(rep.size(), 16u + n);
  EXPECT_EQ(get_be32(rep.data() + 4), 0u);
  EXPECT_EQ(get_be64(rep.data() + 8), 2u);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), rep.begin() + 16));
  // Reads beyond 64 MiB are refused and logged; the connection lives.
  send_all(fd, request(kCmdRead, 0, (64u << 20) + 1, 3));
  rep = recv_n(fd, 16);
  EXPECT_EQ(get_be32(rep.data() + 4), kEinval);
  send_all(fd, request(kCmdRead, 95 * kMiB, 40 * kMiB, 4));  // large and out of range
  rep = recv_n(fd, 16);
  EXPECT_EQ(get_be32(rep.data() + 4), kEinval);
  send_all(fd, request(kCmdRead, 0, 4096, 5));
  rep = recv_n(fd, 16 + 4096);
  ASSERT_EQ(rep.size(), 16u + 4096);
  EXPECT_EQ(get_be32(rep.data() + 4), 0u);
  // A 64 MiB + 512 write cannot be taken: closed.
  send_all(fd, request(kCmdWrite, 0, (64u << 20) + 512, 6));
  EXPECT_TRUE(closed_by_peer(fd));
  close(fd);

  // With structured replies a 48 MiB read arrives as several OFFSET_DATA
  // chunks (each <= 32 MiB) and a final DONE; with DF it is EOVERFLOW.
  fd = negotiate("mem", {});
  send_all(fd, request(kCmdRead, 4 * kMiB + 512, n, 8));
  std::vector<uint8_t> got(n);
  uint64_t seen = 0;
  for (;;) {
    Chunk c = chunk(fd);
    ASSERT_EQ(c.cookie, 8u);
    if (c.type == kReplyTypeOffsetData) {
      ASSERT_GE(c.data.size(), 8u);
      uint64_t off = get_be64(c.data.data()) - (4 * kMiB + 512);
      ASSERT_LE(off + c.data.size() - 8, n);
      EXPECT_LE(c.data.size() - 8, 32 * kMiB);
      std::copy(c.data.begin() + 8, c.data.end(), got.begin() + off);
      seen += c.data.size() - 8;
    } else {
      ASSERT_EQ(c.type, kReplyTypeNone);
    }
    if (c.flags & kReplyFlagDone) break;
  }
  EXPECT_EQ(seen, n);
  EXPECT_EQ(got, data);
  send_all(fd, request(kCmdRead, 0, n, 9, kCmdFlagDf));
  Chunk c = chunk(fd);
  EXPECT_EQ(c.type, kReplyTypeError);
  ASSERT_GE(c.data.size(), 4u);
  EXPECT_EQ(get_be32(c.data.data()), kEoverflow);
  close(fd);
}
