#include <gtest/gtest.h>

#include "export/nbd/nbd_proto.h"

using namespace udm::nbd;

namespace {
std::vector<uint8_t> header(uint32_t magic, uint16_t flags, uint16_t type, uint64_t cookie,
                            uint64_t off, uint32_t len) {
  std::vector<uint8_t> v;
  put_be32(v, magic);
  put_be16(v, flags);
  put_be16(v, type);
  put_be64(v, cookie);
  put_be64(v, off);
  put_be32(v, len);
  return v;
}
}  // namespace

TEST(NbdProto, DecodeRequest) {
  auto h = header(kRequestMagic, kCmdFlagFua, kCmdWrite, 0x1122334455667788ull, 4096, 512);
  auto r = decode_request(h);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->type, kCmdWrite);
  EXPECT_EQ(r->flags, kCmdFlagFua);
  EXPECT_EQ(r->cookie, 0x1122334455667788ull);
  EXPECT_EQ(r->offset, 4096u);
  EXPECT_EQ(r->length, 512u);
  h[0] ^= 1;
  EXPECT_FALSE(decode_request(h).ok());
  EXPECT_FALSE(decode_request(std::span<const uint8_t>(h.data(), 27)).ok());
}

TEST(NbdProto, CheckRequest) {
  ExportLimits lim{1 << 20, false, false};
  Request r;
  r.type = kCmdRead;
  r.offset = (1 << 20) - 512;
  r.length = 512;
  EXPECT_EQ(check_request(r, lim).error, 0u);
  r.length = 1024;
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r.offset = UINT64_MAX - 10;  // overflow must not wrap into range
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r = {};
  r.type = kCmdRead;
  r.length = kMaxPayload + 1;  // above the advertised maximum, still served (in pieces)
  EXPECT_EQ(check_request(r, {UINT64_MAX, false, false}).error, 0u);
  r.length = kMaxRequest;
  EXPECT_EQ(check_request(r, {UINT64_MAX, false, false}).error, 0u);
  r.type = kCmdWrite;
  EXPECT_EQ(check_request(r, {UINT64_MAX, false, false}).error, 0u);
  EXPECT_FALSE(check_request(r, {UINT64_MAX, false, false}).close);
  r.type = kCmdRead;
  r.length = kMaxRequest + 1;
  EXPECT_EQ(check_request(r, {UINT64_MAX, false, false}).error, kEinval);
  EXPECT_FALSE(check_request(r, {UINT64_MAX, false, false}).close);
  r.type = kCmdWrite;
  EXPECT_TRUE(check_request(r, {UINT64_MAX, false, false}).close);
  r.length = 512;
  EXPECT_EQ(check_request(r, {1 << 20, true, false}).error, kEperm);
  r.offset = 1 << 20;
  EXPECT_EQ(check_request(r, lim).error, kEnospc);
  r = {};
  r.type = kCmdRead;
  r.flags = kCmdFlagDf;
  r.length = 512;
  EXPECT_EQ(check_request(r, lim).error, kEinval);  // DF needs structured replies
  EXPECT_EQ(check_request(r, {1 << 20, false, true}).error, 0u);
  r.flags = 0x8000;
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r = {};
  r.type = kCmdFlush;
  r.length = 1;
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r.type = 99;
  r.length = 0;
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r.type = kCmdTrim;
  EXPECT_EQ(check_request(r, {1 << 20, true, false}).error, kEperm);
}

TEST(NbdProto, InfoRequestParsing) {
  std::vector<uint8_t> d;
  put_be32(d, 3);
  d.insert(d.end(), {'v', 'o', 'l'});
  put_be16(d, 2);
  put_be16(d, kInfoBlockSize);
  put_be16(d, kInfoName);
  auto r = parse_info_request(d);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->name, "vol");
  EXPECT_EQ(r->infos, (std::vector<uint16_t>{kInfoBlockSize, kInfoName}));
  d[3] = 200;  // name length beyond the option
  EXPECT_FALSE(parse_info_request(d).ok());
  d[3] = 3;
  d.push_back(0);  // trailing byte: count does not match
  EXPECT_FALSE(parse_info_request(d).ok());
  EXPECT_FALSE(parse_info_request(std::vector<uint8_t>(5)).ok());
}

TEST(NbdProto, ErrnoMapping) {
  EXPECT_EQ(errno_to_nbd(0), 0u);
  EXPECT_EQ(errno_to_nbd(EROFS), kEperm);
  EXPECT_EQ(errno_to_nbd(ENOSPC), kEnospc);
  EXPECT_EQ(errno_to_nbd(EINVAL), kEinval);
  EXPECT_EQ(errno_to_nbd(EOPNOTSUPP), kEnotsup);
  EXPECT_EQ(errno_to_nbd(EUCLEAN), kEio);
}

TEST(NbdProto, BlockStatusRequests) {
  ExportLimits lim{1 << 20, true, true, true};
  Request r;
  r.type = kCmdBlockStatus;
  r.offset = 4096;
  r.length = (1 << 20) - 4096;
  EXPECT_EQ(check_request(r, lim).error, 0u);
  r.flags = kCmdFlagReqOne;
  EXPECT_EQ(check_request(r, lim).error, 0u);
  r.flags = kCmdFlagFua;
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r.flags = 0;
  r.length += 1;  // past the end
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r.offset = UINT64_MAX;
  r.length = 2;
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r.offset = 0;
  r.length = 0;
  EXPECT_EQ(check_request(r, lim).error, kEinval);
  r.length = 512;
  EXPECT_FALSE(check_request(r, lim).close);
  EXPECT_EQ(check_request(r, {1 << 20, true, true, false}).error, kEinval);  // no context set
  EXPECT_EQ(check_request(r, {1 << 20, true, false, true}).error, kEinval);  // no structured replies
  // REQ_ONE belongs to block status only.
  r.type = kCmdRead;
  r.flags = kCmdFlagReqOne;
  EXPECT_EQ(check_request(r, lim).error, kEinval);
}

namespace {
std::vector<uint8_t> meta_req(const std::string& name, const std::vector<std::string>& qs) {
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
}  // namespace

TEST(NbdProto, MetaContextRequests) {
  auto r = parse_meta_context_request(meta_req("disk", {"base:allocation", "qemu:"}));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->name, "disk");
  ASSERT_EQ(r->queries.size(), 2u);
  EXPECT_EQ(r->queries[1], "qemu:");
  r = parse_meta_context_request(meta_req("", {}));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->name.empty());
  EXPECT_TRUE(r->queries.empty());
  // Malformed: short, lengths beyond the option, trailing bytes.
  auto good = meta_req("disk", {"base:allocation"});
  for (size_t cut = 0; cut < good.size(); cut++) {
    auto part = std::vector<uint8_t>(good.begin(), good.begin() + cut);
    EXPECT_FALSE(parse_meta_context_request(part).ok()) << cut;
  }
  auto extra = good;
  extra.push_back(0);
  EXPECT_EQ(parse_meta_context_request(extra).status().code(), EINVAL);
  auto lie = meta_req("disk", {"base:allocation"});
  lie[11] = 2;  // claims two queries
  EXPECT_EQ(parse_meta_context_request(lie).status().code(), EINVAL);
  // Too big: a query over 4096 bytes, too many queries, a huge name.
  EXPECT_EQ(parse_meta_context_request(meta_req("disk", {std::string(4097, 'a')})).status().code(), E2BIG);
  EXPECT_TRUE(parse_meta_context_request(meta_req("disk", {std::string(4096, 'a')})).ok());
  EXPECT_EQ(parse_meta_context_request(meta_req("disk", std::vector<std::string>(129, "x"))).status().code(),
            E2BIG);
  EXPECT_EQ(parse_meta_context_request(meta_req(std::string(5000, 'n'), {})).status().code(), E2BIG);

  using V = std::vector<uint32_t>;
  EXPECT_EQ(select_meta_contexts({}, true), (V{kMetaBaseAllocation, kMetaQemuAllocationDepth}));
  EXPECT_EQ(select_meta_contexts({}, false), V{});
  EXPECT_EQ(select_meta_contexts({"base:"}, true), V{kMetaBaseAllocation});
  EXPECT_EQ(select_meta_contexts({"base:"}, false), V{});
  EXPECT_EQ(select_meta_contexts({"qemu:"}, true), V{kMetaQemuAllocationDepth});
  EXPECT_EQ(select_meta_contexts({"base:allocation", "base:allocation", "nosuch:x", "base:alloc", ""}, false),
            V{kMetaBaseAllocation});
  EXPECT_EQ(select_meta_contexts({"qemu:allocation-depth", "base:allocation"}, false),
            (V{kMetaBaseAllocation, kMetaQemuAllocationDepth}));
  EXPECT_EQ(select_meta_contexts({"BASE:allocation", std::string("base:allocation\0", 16), "base:allocation "}, false), V{});
  auto rep = meta_context_reply(kMetaBaseAllocation);
  EXPECT_EQ(get_be32(rep.data()), kMetaBaseAllocation);
  EXPECT_EQ(std::string(rep.begin() + 4, rep.end()), "base:allocation");
}

TEST(NbdProto, BlockStatusChunks) {
  using udm::AllocKind;
  udm::AllocMap m = {{4096, AllocKind::kData, 1}, {8192, AllocKind::kData, 3}, {512, AllocKind::kZero, 2},
                {1024, AllocKind::kHole, 0}};
  auto c = block_status_chunk(9, true, kMetaBaseAllocation, m, false);
  // header(20) + id(4) + 3 descriptors: data runs of any depth merge.
  ASSERT_EQ(c.size(), 24u + 3 * 8);
  EXPECT_EQ(get_be32(c.data()), kStructuredReplyMagic);
  EXPECT_EQ(get_be16(c.data() + 4), kReplyFlagDone);
  EXPECT_EQ(get_be16(c.data() + 6), kReplyTypeBlockStatus);
  EXPECT_EQ(get_be64(c.data() + 8), 9u);
  EXPECT_EQ(get_be32(c.data() + 16), 4u + 3 * 8);
  EXPECT_EQ(get_be32(c.data() + 20), kMetaBaseAllocation);
  EXPECT_EQ(get_be32(c.data() + 24), 12288u);
  EXPECT_EQ(get_be32(c.data() + 28), 0u);
  EXPECT_EQ(get_be32(c.data() + 32), 512u);
  EXPECT_EQ(get_be32(c.data() + 36), kStateZero);
  EXPECT_EQ(get_be32(c.data() + 40), 1024u);
  EXPECT_EQ(get_be32(c.data() + 44), kStateHole | kStateZero);
  // allocation-depth: the layer, 0 for holes; not done.
  c = block_status_chunk(9, false, kMetaQemuAllocationDepth, m, false);
  ASSERT_EQ(c.size(), 24u + 4 * 8);
  EXPECT_EQ(get_be16(c.data() + 4), 0u);
  EXPECT_EQ(get_be32(c.data() + 28), 1u);
  EXPECT_EQ(get_be32(c.data() + 36), 3u);
  EXPECT_EQ(get_be32(c.data() + 44), 2u);
  EXPECT_EQ(get_be32(c.data() + 52), 0u);
  // REQ_ONE: only the first.
  c = block_status_chunk(9, true, kMetaBaseAllocation, m, true);
  ASSERT_EQ(c.size(), 24u + 8);
  EXPECT_EQ(get_be32(c.data() + 24), 12288u);
}
