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
  r.length = kMaxPayload + 1;
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
