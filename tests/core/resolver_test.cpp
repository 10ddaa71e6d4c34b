#include <gtest/gtest.h>

#include "common/sys_util.h"
#include "io/memory_device.h"
#include "io/resolver.h"

using namespace udm;

TEST(Resolver, SpecKinds) {
  EXPECT_EQ(spec_kind("/dev/sda"), SpecKind::kPath);
  EXPECT_EQ(spec_kind("http://h/x"), SpecKind::kUri);
  EXPECT_EQ(spec_kind("oci://reg:5000/a/b@sha256:00"), SpecKind::kUri);
  EXPECT_EQ(spec_kind("vol-1"), SpecKind::kName);
  EXPECT_EQ(spec_kind("://x"), SpecKind::kName);
  EXPECT_EQ(spec_kind("1http://x"), SpecKind::kName);
  EXPECT_EQ(spec_scheme("https://x/y"), "https");
  EXPECT_TRUE(validate_device_name("a.b+c_d-1").ok());
  EXPECT_FALSE(validate_device_name("a/b").ok());
  EXPECT_FALSE(validate_device_name("..").ok());
  EXPECT_FALSE(validate_device_name(std::string(128, 'a')).ok());
}

TEST(Resolver, PathsSchemesAndNames) {
  udm::test::TempDir t;
  udm::test::write_file(t.file("f"), std::vector<uint8_t>(4096, 1));
  SchemeRegistry schemes;
  int opened = 0;
  schemes.add("mem", [&](const std::string& uri, bool) -> Result<DevicePtr> {
    opened++;
    if (uri != "mem://x") return Status::Error(ENOENT, "no such object");
    return DevicePtr(std::make_shared<MemoryDevice>(8192));
  }, "mem://x");
  {
    Resolver r({}, &schemes);
    auto f = r.open(t.file("f"), true);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ((*f)->size(), 4096u);
    auto m = r.open("mem://x", false);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ((*m)->size(), 8192u);
    auto bad = r.open("mem://y", false);
    EXPECT_EQ(bad.status().code(), ENOENT);
    EXPECT_NE(bad.status().message().find("mem://y"), std::string::npos) << bad.status().message();
    auto unknown = r.open("ftp://x/y", false);
    EXPECT_EQ(unknown.status().code(), EINVAL);
    EXPECT_NE(unknown.status().message().find("no backing source handles ftp:// (known: mem)"), std::string::npos)
        << unknown.status().message();
    auto name = r.open("vol", false);
    EXPECT_NE(name.status().message().find("device names need the udm daemon"), std::string::npos);
  }
  Resolver withnames([](const std::string& n, bool) -> Result<DevicePtr> {
    return DevicePtr(std::make_shared<MemoryDevice>(512 * (n == "a" ? 1 : 2)));
  }, &schemes);
  auto a = withnames.open("a", true);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->size(), 512u);
  EXPECT_EQ(withnames.open("a:b", true).status().code(), EINVAL);
  EXPECT_EQ(opened, 2);
}

TEST(Resolver, IdentityFollowsTheDevice) {
  udm::test::TempDir t;
  udm::test::write_file(t.file("f"), std::vector<uint8_t>(512, 1));
  Resolver r;
  auto a = r.identity(t.file("f"));
  auto b = r.identity(t.path() + "/./f");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(*r.identity("vol"), "udm:vol");
  EXPECT_EQ(*r.identity("http://h/x"), "uri:http://h/x");
  EXPECT_EQ(r.identity(t.file("missing")).status().code(), ENOENT);
}
