// Pure parts: reply checks, challenges, OCI references, credentials, sizes.
#include <gtest/gtest.h>

#include "remote/auth.h"
#include "remote/config.h"
#include "remote/http_check.h"
#include "remote/http_device.h"
#include "remote/oci_image.h"

using namespace udm::remote;

TEST(RemoteCheck, ContentRange) {
  auto r = parse_content_range("bytes 0-4095/10000");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 0u);
  EXPECT_EQ(r->last, 4095u);
  EXPECT_EQ(*r->total, 10000u);
  EXPECT_FALSE(parse_content_range("bytes 10-5/100"));
  EXPECT_FALSE(parse_content_range("bytes 0-100/100"));  // last beyond total
  EXPECT_FALSE(parse_content_range("bytes -1-5/100"));
  EXPECT_FALSE(parse_content_range("items 0-1/100"));
  EXPECT_FALSE(parse_content_range("bytes 0-99999999999999999999999/1"));
  EXPECT_TRUE(parse_content_range("bytes 0-1/*"));
  EXPECT_EQ(parse_unsatisfied_range("bytes */3000000"), 3000000u);
  EXPECT_EQ(parse_retry_after("3", 0), 3u);
  EXPECT_EQ(parse_retry_after("100000", 0, 60), 60u);
  EXPECT_FALSE(parse_retry_after("soon", 0));
  EXPECT_EQ(parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 4), 6u);
}

TEST(RemoteCheck, RangedReplyMustMatchExactly) {
  RangeExpect e{4096, 4096, 10000, "\"v1\""};
  Headers ok{{"content-range", "bytes 4096-8191/10000"}, {"etag", "\"v1\""}};
  const std::string u = "http://h/x";
  EXPECT_TRUE(check_range_reply(206, ok, 4096, e, u).ok());
  auto msg = [&](long st, Headers h, size_t n) { return check_range_reply(st, h, n, e, u).message(); };
  EXPECT_NE(msg(200, ok, 10000).find("ignores Range"), std::string::npos);
  EXPECT_NE(msg(206, ok, 4000).find("body has 4000 bytes"), std::string::npos);
  Headers shifted{{"content-range", "bytes 4097-8192/10000"}};
  EXPECT_NE(msg(206, shifted, 4096).find("another range"), std::string::npos);
  Headers bigger{{"content-range", "bytes 4096-8191/20000"}};
  EXPECT_NE(msg(206, bigger, 4096).find("object changed"), std::string::npos);
  Headers etag{{"content-range", "bytes 4096-8191/10000"}, {"etag", "\"v2\""}};
  EXPECT_NE(msg(206, etag, 4096).find("ETag changed"), std::string::npos);
  EXPECT_NE(msg(206, Headers{}, 4096).find("without Content-Range"), std::string::npos);
  Headers multi{{"content-range", "bytes 4096-8191/10000"}, {"content-type", "multipart/byteranges; boundary=x"}};
  EXPECT_NE(msg(206, multi, 4096).find("multipart"), std::string::npos);
  Headers r416{{"content-range", "bytes */5000"}};
  EXPECT_NE(msg(416, r416, 0).find("size 5000"), std::string::npos);
  EXPECT_NE(msg(404, {}, 0).find("HTTP 404"), std::string::npos);
  EXPECT_NE(msg(404, {}, 0).find("http://h/x: bytes 4096-8191"), std::string::npos);
  EXPECT_TRUE(retryable_status(503));
  EXPECT_FALSE(retryable_status(404));
}

TEST(RemoteCheck, Challenges) {
  auto c = parse_challenge(R"(Bearer realm="http://127.0.0.1:5072/token",service="udm-test",scope="repository:a/b:pull",error="invalid_token")");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->scheme, "bearer");
  EXPECT_EQ(c->params["realm"], "http://127.0.0.1:5072/token");
  EXPECT_EQ(c->params["scope"], "repository:a/b:pull");
  EXPECT_EQ(c->params["error"], "invalid_token");
  auto b = parse_challenge("Basic realm=\"Registry\"");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->scheme, "basic");
  EXPECT_FALSE(parse_challenge("Bearer realm=\"unterminated"));
  EXPECT_FALSE(parse_challenge(""));
}

TEST(RemoteCheck, OciReferencesAndCredentials) {
  std::string hex(64, 'a');
  auto r = parse_oci_blob_ref("oci://127.0.0.1:5000/test/img@sha256:" + hex);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->authority, "127.0.0.1:5000");
  EXPECT_EQ(r->repo, "test/img");
  EXPECT_TRUE(r->plain_http);
  EXPECT_EQ(r->blob_url(), "http://127.0.0.1:5000/v2/test/img/blobs/sha256:" + hex);
  auto remote = parse_oci_blob_ref("oci://registry.example.com/a/b@sha256:" + hex);
  ASSERT_TRUE(remote.ok());
  EXPECT_FALSE(remote->plain_http);  // HTTPS unless loopback or --insecure-registry
  EXPECT_EQ(remote->blob_url().rfind("https://", 0), 0u);
  EXPECT_FALSE(parse_oci_blob_ref("oci://h/a/b@sha256:" + hex.substr(1)).ok());
  EXPECT_FALSE(parse_oci_blob_ref("oci://h/A/b@sha256:" + hex).ok());
  EXPECT_FALSE(parse_oci_blob_ref("oci://h/a/b:tag").ok());
  EXPECT_FALSE(parse_oci_blob_ref("oci://h/a@md5:" + hex).ok());
  auto e = parse_oci_blob_ref("oci:///a@sha256:" + hex);
  EXPECT_NE(e.status().message().find("oci://HOST[:PORT]/REPO@sha256:HEX"), std::string::npos);

  std::string cfg = R"({"auths": {"127.0.0.1:5000": {"auth": ")" + base64_encode("udm:pa:ss") +
                    R"("}, "https://reg.example.com/v2/": {"username": "u", "password": "p"}}})";
  auto c = find_credentials(cfg, "127.0.0.1:5000");
  ASSERT_TRUE(c.ok() && c->has_value());
  EXPECT_EQ((*c)->user, "udm");
  EXPECT_EQ((*c)->password, "pa:ss");
  auto c2 = find_credentials(cfg, "reg.example.com");
  ASSERT_TRUE(c2.ok() && c2->has_value());
  EXPECT_EQ((*c2)->user, "u");
  auto none = find_credentials(cfg, "other:1");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_FALSE(find_credentials("{not json", "x").ok());
  EXPECT_FALSE(find_credentials(R"({"auths":{"h":{"auth":"!!!"}}})", "h").ok());
  EXPECT_EQ(*parse_byte_size("4G"), 4ull << 30);
  EXPECT_EQ(*parse_byte_size("1048576"), 1048576u);
  EXPECT_FALSE(parse_byte_size("4X").ok());
  EXPECT_FALSE(parse_on_error("maybe").ok());
}

TEST(RemoteCheck, ManifestParserAndImageRefs) {
  std::string d = "sha256:" + std::string(64, 'b');
  std::string m = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":")" +
                  d + R"(","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":")" + d +
                  R"(","size":123,"annotations":{"containerd.io/snapshot/overlaybd/blob-digest":")" + d + R"("}}]})";
  auto p = parse_manifest(m, "", "M");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_FALSE(p->is_index);
  ASSERT_EQ(p->layers.size(), 1u);
  EXPECT_EQ(p->layers[0].size, 123u);
  EXPECT_EQ(p->layers[0].annotations[kObdDigest], d);
  std::string idx = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
                    d + R"(","size":5,"platform":{"os":"linux","architecture":"arm64"}}]})";
  auto i = parse_manifest(idx, "", "I");
  ASSERT_TRUE(i.ok()) << i.status().message();
  EXPECT_TRUE(i->is_index);
  EXPECT_EQ(i->manifests[0].arch, "arm64");
  auto msg = [](const std::string& s) { return parse_manifest(s, "", "M").status().message(); };
  EXPECT_NE(msg("{").find("not a JSON object"), std::string::npos);
  EXPECT_NE(msg(R"({"schemaVersion":1})").find("schemaVersion must be 2"), std::string::npos);
  std::string badd = m;
  badd.replace(badd.find("bbbb"), 4, "BBBB");
  EXPECT_NE(msg(badd).find("sha256:<64 lowercase hex>"), std::string::npos);
  std::string neg = m;
  neg.replace(neg.find("123"), 3, "-1");
  EXPECT_NE(msg(neg).find("non-negative"), std::string::npos);
  EXPECT_NE(msg(R"({"schemaVersion":2,"mediaType":"text/plain"})").find("unsupported manifest type"), std::string::npos);
  EXPECT_NE(msg(R"({"schemaVersion":2,"config":)" + std::string("{}") + "}").find("M: config"), std::string::npos);

  auto r = parse_image_ref("127.0.0.1:5000/test/img:v1");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->repo, "test/img");
  EXPECT_EQ(r->tag, "v1");
  EXPECT_EQ(r->base(), "http://127.0.0.1:5000/v2/test/img");
  auto r2 = parse_image_ref("oci://reg.example.com/a/b@" + d);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->reference(), d);
  EXPECT_EQ(r2->base(), "https://reg.example.com/v2/a/b");
  EXPECT_EQ(parse_image_ref("127.0.0.1:5000/test/img")->tag, "latest");
  EXPECT_FALSE(parse_image_ref("img").ok());
  EXPECT_FALSE(parse_image_ref("h/Img:x").ok());
  EXPECT_FALSE(parse_image_ref("h/img@sha256:12").ok());
}

TEST(RemoteCheck, RemoteResolveEntries) {
  for (const char* ok : {"registry.udm.test:443:127.0.0.1", "a-b.example:5000:10.0.0.5", "h:1:[::1]"})
    EXPECT_TRUE(check_resolve(ok).ok()) << ok;
  for (const char* bad : {"", "host", "host:443", "host:443:", ":443:1.2.3.4", "host::1.2.3.4", "host:0:1.2.3.4",
                          "host:70000:1.2.3.4", "host:44x:1.2.3.4", "ho st:443:1.2.3.4", "host:443:evil;rm"}) {
    auto st = check_resolve(bad);
    EXPECT_FALSE(st.ok()) << bad;
    EXPECT_NE(st.message().find("HOST:PORT:ADDR"), std::string::npos) << st.message();
  }
}
