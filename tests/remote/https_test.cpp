// https:// sources against nginx serving TLS + HTTP/2 with a throwaway CA made
// by the test (servers.h TestCa): bytes compared with the file, the protocol
// taken from nginx's access log ($server_protocol) and from libcurl's own
// report (the source's stats), and an untrusted certificate refused.
// oci:// over https: Debian's docker-registry with its own TLS config and a
// certificate for a registry name (registry.udm.test) that --remote-resolve
// points at 127.0.0.1 (a loopback address itself would be plain HTTP).
#include <sys/stat.h>

#include "remote/cache_store.h"
#include "remote_util.h"

namespace udm::test {
namespace {

struct HttpsFixture {
  TempDir www, cache;
  std::unique_ptr<TestCa> ca;
  std::unique_ptr<Nginx> ngx;
  std::vector<uint8_t> data;
  std::string skip;
  explicit HttpsFixture(size_t size) {
    public_dir(www);
    data = random_bytes(size, 11);
    write_file(www.file("disk.img"), data);
    ::chmod(www.file("disk.img").c_str(), 0644);
    ca = TestCa::make(&skip);
    if (ca) ngx = Nginx::start(www.path(), &skip, ca.get());
  }
};

TEST(RemoteHttps, RandomRangesOverHttp2WithTestCa) {
  HttpsFixture f((3u << 20) + 777);
  if (!f.ngx) GTEST_SKIP() << f.skip;
  auto c = set_remote(f.cache.path());
  c.ca_file = f.ca->ca_pem();
  remote::set_config(c);
  std::string url = f.ngx->url("disk.img");
  ASSERT_EQ(url.rfind("https://127.0.0.1:", 0), 0u) << url;
  auto d = remote::open_remote(url, false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ((*d)->size(), f.data.size());
  std::mt19937_64 rng(13);
  std::vector<std::pair<uint64_t, uint64_t>> cases = {{0, 1}, {f.data.size() - 1, 1}, {f.data.size() - 4000, 4000}};
  for (int i = 0; i < 120; i++) {
    uint64_t len = 1 + rng() % (i % 4 == 0 ? 400000 : 9000);
    cases.push_back({rng() % (f.data.size() - len + 1), len});
  }
  for (auto [off, len] : cases) {
    std::vector<uint8_t> buf(len);
    ASSERT_TRUE((*d)->read(off, buf).ok()) << off << "+" << len;
    ASSERT_TRUE(std::equal(buf.begin(), buf.end(), f.data.begin() + long(off))) << "bytes differ at " << off << "+" << len;
  }
  // The whole object, then every byte compared.
  std::vector<uint8_t> all(f.data.size());
  ASSERT_TRUE((*d)->read(0, all).ok());
  expect_same(all, f.data, "whole object over https");
  // nginx saw only exact ranges, every one over HTTP/2 (ALPN h2 on the TLS connection).
  auto log = f.ngx->log();
  ASSERT_GE(log.size(), 2u);  // the probe and at least one data fetch
  for (auto& h : log) {
    EXPECT_EQ(h.protocol, "HTTP/2.0") << h.method << " " << h.range;
    EXPECT_EQ(h.status, 206) << h.range;
    uint64_t a = 0, b = 0;
    ASSERT_EQ(sscanf(h.range.c_str(), "bytes=%lu-%lu", &a, &b), 2) << h.range;
    EXPECT_EQ(h.bytes, b - a + 1) << h.range;
  }
  // libcurl's side of the same answer.
  auto s = as_http(*d);
  EXPECT_EQ(s->stats().http_version.load(), 3L /* CURL_HTTP_VERSION_2_0 */);
  EXPECT_NE(s->stats_json().find("\"http_version\":\"2\""), std::string::npos) << s->stats_json();
  EXPECT_EQ(s->stats().errors.load(), 0u);
  EXPECT_EQ(s->stats().bytes_fetched.load(), f.data.size() + 1);  // each byte once + the probe
}

TEST(RemoteHttps, UntrustedCertificateIsRefusedNamingTheUrl) {
  HttpsFixture f(1u << 20);
  if (!f.ngx) GTEST_SKIP() << f.skip;
  std::string url = f.ngx->url("disk.img");
  // No --remote-ca: the system CAs do not know the test CA.
  set_remote(f.cache.path(), 1ull << 30, 3);
  auto d = remote::open_remote(url, false);
  ASSERT_FALSE(d.ok()) << "an untrusted https server was accepted";
  std::string m = d.status().message();
  EXPECT_NE(m.find(url), std::string::npos) << m;
  EXPECT_NE(m.find("TLS certificate not accepted"), std::string::npos) << m;
  EXPECT_NE(m.find("--remote-ca"), std::string::npos) << m;
  EXPECT_EQ(m.find("gave up after"), std::string::npos) << "a certificate error was retried: " << m;
  // Another CA (a --remote-ca that did not sign the server's certificate): refused too, naming the file.
  std::string err;
  auto other = TestCa::make(&err);
  ASSERT_TRUE(other) << err;
  auto c = set_remote(f.cache.path(), 1ull << 30, 3);
  c.ca_file = other->ca_pem();
  remote::set_config(c);
  d = remote::open_remote(url, false);
  ASSERT_FALSE(d.ok()) << "a certificate from another CA was accepted";
  m = d.status().message();
  EXPECT_NE(m.find(url), std::string::npos) << m;
  EXPECT_NE(m.find(other->ca_pem()), std::string::npos) << m;
  // A --remote-ca file that is not there: refused at once, naming it (never "no CA, so no check").
  c.ca_file = f.cache.file("no-such-ca.pem");
  remote::set_config(c);
  d = remote::open_remote(url, false);
  ASSERT_FALSE(d.ok()) << "a missing --remote-ca file was ignored";
  m = d.status().message();
  EXPECT_NE(m.find(url), std::string::npos) << m;
  EXPECT_NE(m.find("no-such-ca.pem"), std::string::npos) << m;
  EXPECT_EQ(m.find("gave up after"), std::string::npos) << "retried: " << m;
  // No request reached nginx: the handshake failed before any HTTP was sent.
  EXPECT_TRUE(f.ngx->log().empty());
  // The right CA: the same URL opens and reads correctly (nothing was cached by the refusals).
  c.ca_file = f.ca->ca_pem();
  remote::set_config(c);
  d = remote::open_remote(url, false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::vector<uint8_t> b(70000);
  ASSERT_TRUE((*d)->read(500000, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), f.data.begin() + 500000));
}

// A TLS registry holding one blob, reached by name through --remote-resolve.
struct TlsRegistryFixture {
  static constexpr const char* kName = "registry.udm.test";
  TempDir t, cache;
  std::unique_ptr<TestCa> ca;
  std::unique_ptr<Registry> reg;
  std::vector<uint8_t> data;
  std::string hex, skip;
  explicit TlsRegistryFixture(size_t size) {
    ca = TestCa::make(&skip, kName);
    if (!ca) return;
    reg = Registry::start(false, 0, &skip, ca.get());
    if (!reg) return;
    data = random_bytes(size, 21);
    write_file(t.file("blob"), data);
    hex = reg->push_blob("test/img", t.file("blob"));
  }
  std::string resolve(const std::string& name = kName) const {
    return name + ":" + std::to_string(reg->port) + ":127.0.0.1";
  }
  std::string spec(const std::string& name = kName) const {
    return "oci://" + name + ":" + std::to_string(reg->port) + "/test/img@sha256:" + hex;
  }
  std::string blob_url(const std::string& name = kName) const {
    return "https://" + name + ":" + std::to_string(reg->port) + "/v2/test/img/blobs/sha256:" + hex;
  }
  int blob_gets() const {
    int n = 0;
    std::string log = reg->log(), needle = "\"GET /v2/test/img/blobs/sha256:" + hex;
    for (size_t p = log.find(needle); p != std::string::npos; p = log.find(needle, p + 1)) n++;
    return n;
  }
};

TEST(RemoteHttps, OciBlobFromTlsRegistryWithTestCa) {
  TlsRegistryFixture f((2u << 20) + 4321);
  if (!f.reg) GTEST_SKIP() << f.skip;
  ASSERT_EQ(f.hex.size(), 64u) << "push over https failed";
  // The registry speaks TLS only: a plain-HTTP request is not served.
  auto plain = run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:" + std::to_string(f.reg->port) + "/v2/"});
  EXPECT_NE(plain.out, "200") << plain.describe();
  auto c = set_remote(f.cache.path());
  c.ca_file = f.ca->ca_pem();
  c.resolve = {f.resolve()};
  remote::set_config(c);
  auto d = remote::open_remote(f.spec(), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ((*d)->size(), f.data.size());
  std::mt19937_64 rng(5);
  for (int i = 0; i < 60; i++) {
    uint64_t len = 1 + rng() % (i % 3 ? 7000 : 300000), off = rng() % (f.data.size() - len + 1);
    std::vector<uint8_t> b(len);
    ASSERT_TRUE((*d)->read(off, b).ok()) << off << "+" << len;
    ASSERT_TRUE(std::equal(b.begin(), b.end(), f.data.begin() + long(off))) << "bytes differ at " << off << "+" << len;
  }
  std::vector<uint8_t> all(f.data.size());
  ASSERT_TRUE((*d)->read(0, all).ok());
  expect_same(all, f.data, "whole blob over https");
  auto h = as_http(*d);
  std::string js = h->stats_json();
  EXPECT_NE(js.find("\"verified\":true"), std::string::npos) << js;  // hashed against its digest once whole
  EXPECT_EQ(h->stats().errors.load(), 0u) << js;
  EXPECT_EQ(h->stats().bytes_fetched.load(), f.data.size() + 1) << js;  // each byte once + the probe
  // The bytes came from this registry, which serves TLS only (its access log has the blob GETs).
  EXPECT_GE(f.blob_gets(), 2) << f.reg->log();
  // Go's net/http offers h2 over TLS, and libcurl takes it (CURL_HTTP_VERSION_2TLS).
  EXPECT_NE(js.find("\"http_version\":\"2\""), std::string::npos) << js;
  EXPECT_NE(f.reg->log().find("HTTP/2.0\" 206"), std::string::npos) << f.reg->log();
}

TEST(RemoteHttps, OciTlsRegistryWithUntrustedCertificateIsRefused) {
  TlsRegistryFixture f(1u << 20);
  if (!f.reg) GTEST_SKIP() << f.skip;
  ASSERT_EQ(f.hex.size(), 64u) << "push over https failed";
  int gets_before = f.blob_gets();
  auto expect_refused = [&](const std::string& spec, const std::string& url, const std::string& names, const char* why) {
    auto d = remote::open_remote(spec, false);
    ASSERT_FALSE(d.ok()) << why << ": accepted";
    std::string m = d.status().message();
    EXPECT_NE(m.find(url), std::string::npos) << why << ": " << m;
    EXPECT_NE(m.find("TLS certificate not accepted"), std::string::npos) << why << ": " << m;
    EXPECT_NE(m.find(names), std::string::npos) << why << ": " << m;
    EXPECT_EQ(m.find("gave up after"), std::string::npos) << why << ": a certificate error was retried: " << m;
  };
  // System CAs only: the test CA is unknown.
  auto c = set_remote(f.cache.path());
  c.resolve = {f.resolve()};
  remote::set_config(c);
  expect_refused(f.spec(), f.blob_url(), "--remote-ca FILE", "untrusted CA");
  // Another CA as --remote-ca: refused, naming that file.
  std::string err;
  auto other = TestCa::make(&err, TlsRegistryFixture::kName);
  ASSERT_TRUE(other) << err;
  c.ca_file = other->ca_pem();
  remote::set_config(c);
  expect_refused(f.spec(), f.blob_url(), other->ca_pem(), "a CA that did not sign the certificate");
  // The right CA but a name the certificate does not carry: host name checked.
  c.ca_file = f.ca->ca_pem();
  c.resolve = {f.resolve(), f.resolve("other.udm.test")};
  remote::set_config(c);
  expect_refused(f.spec("other.udm.test"), f.blob_url("other.udm.test"), f.ca->ca_pem(), "name mismatch");
  // No request reached the registry's HTTP layer, and nothing was cached.
  EXPECT_EQ(f.blob_gets(), gets_before) << f.reg->log();
  {
    auto store = remote::CacheStore::open(f.cache.path(), 1ull << 30);
    ASSERT_TRUE(store.ok() && *store);
    EXPECT_EQ((*store)->existing("sha256:" + f.hex), nullptr) << "a refused source left a cache object";
    EXPECT_EQ((*store)->used_bytes(), 0u);
  }
  // Trusted and named right: the same blob reads correctly.
  auto d = remote::open_remote(f.spec(), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::vector<uint8_t> b(300000);
  ASSERT_TRUE((*d)->read(123456, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), f.data.begin() + 123456));
}

}  // namespace
}  // namespace udm::test
