// oci:// blobs from Debian's docker-registry 2.8.2, anonymous and with token
// auth (python3-jwt token server), token expiry, credentials, digest checks.
#include <fstream>
#include <thread>

#include "remote/auth.h"
#include "remote_util.h"

namespace udm::test {
namespace {

std::string ref(const Registry& r, const std::string& repo, const std::string& hex) {
  return "oci://" + r.authority() + "/" + repo + "@sha256:" + hex;
}

TEST(RemoteOci, AnonymousRegistryBlob) {
  std::string err;
  auto reg = Registry::start(false, 0, &err);
  if (!reg) GTEST_SKIP() << err;
  TempDir t, cache;
  auto data = random_bytes(3000000, 11);
  write_file(t.file("blob"), data);
  std::string hex = reg->push_blob("test/img", t.file("blob"));
  ASSERT_FALSE(hex.empty());
  set_remote(cache.path());
  auto d = remote::open_remote(ref(*reg, "test/img", hex), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ((*d)->size(), data.size());
  std::mt19937_64 rng(3);
  for (int i = 0; i < 40; i++) {
    uint64_t len = 1 + rng() % 300000, off = rng() % (data.size() - len);
    std::vector<uint8_t> b(len);
    ASSERT_TRUE((*d)->read(off, b).ok());
    ASSERT_TRUE(std::equal(b.begin(), b.end(), data.begin() + long(off)));
  }
  auto h = as_http(*d);
  std::vector<uint8_t> all(data.size());
  ASSERT_TRUE((*d)->read(0, all).ok());
  expect_same(all, data, "whole blob");
  EXPECT_NE(h->stats_json().find("\"verified\":true"), std::string::npos) << h->stats_json();
  // Fully cached and verified: a new open needs no request (the registry can be gone).
  reg.reset();
  auto again = remote::open_remote("oci://127.0.0.1:" + std::to_string(free_port()) + "/test/img@sha256:" + hex, false);
  ASSERT_TRUE(again.ok()) << again.status().message();
  std::vector<uint8_t> all2(data.size());
  ASSERT_TRUE((*again)->read(0, all2).ok());
  expect_same(all2, data, "offline from the cache");
  // Unknown blob: a clear error.
  auto reg2 = Registry::start(false, 0, &err);
  ASSERT_TRUE(reg2) << err;
  auto missing = remote::open_remote(ref(*reg2, "test/img", std::string(64, '0')), false);
  EXPECT_EQ(missing.status().code(), ENOENT) << missing.status().message();
}

TEST(RemoteOci, TokenAuthExpiryAndCredentials) {
  std::string err;
  auto reg = Registry::start(true, 5, &err);
  if (!reg) GTEST_SKIP() << err;
  TempDir t, cache;
  auto data = random_bytes(2000000, 12);
  write_file(t.file("blob"), data);
  std::string hex = reg->push_blob("test/img", t.file("blob"));
  ASSERT_FALSE(hex.empty());
  // Credentials from a docker config.json: the token server sees user udm.
  std::ofstream(t.file("auth.json")) << R"({"auths":{")" << reg->authority() << R"(":{"auth":")"
                                     << remote::base64_encode("udm:secret") << R"("}}})";
  auto c = set_remote(cache.path());
  c.registry_auth = t.file("auth.json");
  remote::set_config(c);
  auto d = remote::open_remote(ref(*reg, "test/img", hex), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::vector<uint8_t> b(100000);
  ASSERT_TRUE((*d)->read(0, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), data.begin()));
  EXPECT_NE(reg->token_log().find("token udm repository:test/img:pull"), std::string::npos) << reg->token_log();
  // The token expires (TTL 5 s): reads go on, with a new token.
  std::this_thread::sleep_for(std::chrono::milliseconds(6500));
  ASSERT_TRUE((*d)->read(1500000, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), data.begin() + 1500000));
  std::string log = reg->token_log();
  size_t n = 0;
  for (size_t p = 0; (p = log.find("token udm", p)) != std::string::npos; p++) n++;
  EXPECT_GE(n, 2u) << log;
  // Wrong password: a clear refusal, nothing read.
  std::ofstream(t.file("bad.json")) << R"({"auths":{")" << reg->authority() << R"(":{"username":"udm","password":"nope"}}})";
  TempDir cache2;
  c = set_remote(cache2.path());
  c.registry_auth = t.file("bad.json");
  remote::set_config(c);
  auto bad = remote::open_remote(ref(*reg, "test/img", hex), false);
  EXPECT_EQ(bad.status().code(), EACCES) << bad.status().message();
  EXPECT_NE(bad.status().message().find("refused the credentials of udm"), std::string::npos) << bad.status().message();
  // Anonymous pull (no credentials) works through the token server too.
  set_remote(cache2.path());
  auto anon = remote::open_remote(ref(*reg, "test/img", hex), false);
  ASSERT_TRUE(anon.ok()) << anon.status().message();
  ASSERT_TRUE((*anon)->read(4096, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), data.begin() + 4096));
}

TEST(RemoteOci, BlobNotMatchingItsDigestIsAnError) {
  // A "registry" (the fault server, on loopback) serving other bytes under a digest.
  TempDir www, cache;
  auto data = random_bytes(600000, 13);
  std::string hex(64, 'e');
  ::mkdir(www.file("r").c_str(), 0755);
  ::mkdir(www.file("r/blobs").c_str(), 0755);
  write_file(www.file("r/blobs/sha256:" + hex), data);
  std::string err;
  auto fs = FaultServer::start(www.path(), &err);
  if (!fs) GTEST_SKIP() << err;
  set_remote(cache.path());
  auto d = remote::open_remote("oci://127.0.0.1:" + std::to_string(fs->port) + "/r@sha256:" + hex, false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::vector<uint8_t> all(data.size());
  Status st = (*d)->read(0, all);
  EXPECT_EQ(st.code(), EIO);
  EXPECT_NE(st.message().find("does not match its digest"), std::string::npos) << st.message();
  EXPECT_EQ(as_http(*d)->bytes_cached(), 0u);  // the cached copy is dropped
}

}  // namespace
}  // namespace udm::test
