// Root-hash signatures made at test time with the openssl command (RSA-2048
// and P-256, `openssl smime -sign -nocerts -noattr -binary`, as systemd and
// the kernel docs do): accepted with the right certificate (file or verity.d
// style directory), refused with a stranger's certificate, over hex+newline,
// uppercase hex, the binary digest, another root, truncated or padded DER;
// the target's root_hash_sig option and --require-signatures policy; the
// kernel keyring path (root_hash_sig_key_desc) where keyrings are usable.
#include <gtest/gtest.h>
#include <linux/keyctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/sys_util.h"
#include "device/mapped_device.h"
#include "device/table.h"
#include "io/memory_device.h"
#include "verity/format.h"
#include "verity/signature.h"

using namespace udm;
using namespace udm::verity;
using namespace udm::test;

namespace {

class MapResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool) override {
    auto it = devs.find(spec);
    if (it == devs.end()) return Status::Error(ENXIO, "no device " + spec);
    return it->second;
  }
};

struct Keys {
  TempDir t;
  bool ok = false;
  std::string err;
  Keys() {
    if (!have_tool("openssl")) {
      err = "openssl command not installed";
      return;
    }
    for (auto [name, newkey] : {std::pair{"rsa", "-newkey rsa:2048"},
                                std::pair{"ec", "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1"},
                                std::pair{"stranger", "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1"}}) {
      auto r = sh(std::string("cd ") + t.path() + " && openssl req -x509 " + newkey +
                  " -nodes -days 3650 -subj '/CN=udm verity test " + name +
                  "' -addext keyUsage=critical,digitalSignature -keyout " + name + ".key -out " + name +
                  ".crt 2>&1");
      if (!r.ok()) {
        err = r.describe();
        return;
      }
    }
    ok = true;
  }
  // Signs exactly `content` with key `who`; returns the DER bytes.
  std::vector<uint8_t> sign(const std::string& who, const std::string& content) {
    std::string in = t.file("content"), out = t.file("sig.p7s");
    write_file(in, std::vector<uint8_t>(content.begin(), content.end()));
    auto r = sh("openssl smime -sign -nocerts -noattr -binary -in " + in + " -inkey " + t.file(who + ".key") +
                " -signer " + t.file(who + ".crt") + " -outform der -out " + out + " 2>&1");
    EXPECT_TRUE(r.ok()) << r.describe();
    return read_file(out);
  }
  std::string crt(const std::string& who) { return t.file(who + ".crt"); }
};

const std::string kRoot = "177efab624e6ae4efd9026708271c513f0ff76c14b13f5398c3c1d8be46f67f7";

TEST(VeritySignature, AcceptedAndRefused) {
  Keys k;
  if (!k.ok) GTEST_SKIP() << k.err;
  for (std::string who : {"rsa", "ec"}) {
    SCOPED_TRACE(who);
    auto sig = k.sign(who, kRoot);
    EXPECT_TRUE(verify_root_signature(sig, kRoot, {k.crt(who)}).ok());
    // A verity.d-style directory holding several certificates.
    std::string dir = k.t.file("verity.d");
    sh("mkdir -p " + dir + " && cp " + k.crt("rsa") + " " + k.crt("ec") + " " + dir + "/");
    EXPECT_TRUE(verify_root_signature(sig, kRoot, {dir}).ok());
    Status s = verify_root_signature(sig, kRoot, {k.crt("stranger")});
    EXPECT_EQ(s.code(), EKEYREJECTED) << s.message();
    std::string other = kRoot;
    other[0] = '0';
    EXPECT_EQ(verify_root_signature(sig, other, {k.crt(who)}).code(), EKEYREJECTED) << "another root";
    EXPECT_EQ(verify_root_signature(k.sign(who, kRoot + "\n"), kRoot, {k.crt(who)}).code(), EKEYREJECTED)
        << "hex + newline";
    std::string upper = kRoot;
    for (auto& c : upper) c = static_cast<char>(toupper(c));
    EXPECT_EQ(verify_root_signature(k.sign(who, upper), kRoot, {k.crt(who)}).code(), EKEYREJECTED) << "uppercase";
    auto bin = *from_hex(kRoot, "root");
    EXPECT_EQ(verify_root_signature(k.sign(who, std::string(bin.begin(), bin.end())), kRoot, {k.crt(who)}).code(),
              EKEYREJECTED)
        << "binary digest";
    auto trunc = sig;
    trunc.resize(sig.size() - 10);
    EXPECT_EQ(verify_root_signature(trunc, kRoot, {k.crt(who)}).code(), EBADMSG) << "truncated DER";
    auto padded = sig;
    padded.push_back(0);
    EXPECT_EQ(verify_root_signature(padded, kRoot, {k.crt(who)}).code(), EBADMSG) << "trailing bytes";
    EXPECT_EQ(verify_root_signature({}, kRoot, {k.crt(who)}).code(), EBADMSG);
    EXPECT_EQ(verify_root_signature(sig, kRoot, {k.t.file("nonexistent.crt")}).code(), ENOKEY);
  }
}

TEST(VeritySignature, TargetOptionAndPolicy) {
  Keys k;
  if (!k.ok) GTEST_SKIP() << k.err;
  auto data = random_bytes(64 * 4096, 3);
  Params p;
  p.data_blocks = 64;
  auto tree = *build_tree_mem(p, data);
  std::string root = to_hex(tree.root);
  MapResolver res;
  res.devs["d"] = std::make_shared<MemoryDevice>(data);
  res.devs["h"] = std::make_shared<MemoryDevice>(tree.blocks);
  std::string good = k.t.file("good.p7s"), bad = k.t.file("bad.p7s");
  write_file(good, k.sign("rsa", root));
  write_file(bad, k.sign("stranger", root));
  auto build = [&](const std::string& opts) {
    auto spec = parse_table("0 512 verity 1 d h 4096 4096 64 0 sha256 " + root + " -" + opts);
    EXPECT_TRUE(spec.ok());
    return Table::build(*spec, res, TargetRegistry::builtin(), "v");
  };
  set_sig_policy({{k.crt("rsa")}, false});
  auto t1 = build(" 2 root_hash_sig " + good);
  ASSERT_TRUE(t1.ok()) << t1.status().message();
  EXPECT_NE((*t1)->segments()[0].target->status().find("sig=verified"), std::string::npos);
  auto t2 = build(" 2 root_hash_sig " + bad);
  ASSERT_FALSE(t2.ok());
  EXPECT_NE(t2.status().message().find("rejected"), std::string::npos) << t2.status().message();
  EXPECT_TRUE(build("").ok()) << "unsigned tables pass without --require-signatures";
  set_sig_policy({{k.crt("rsa")}, true});
  auto t3 = build("");
  ASSERT_FALSE(t3.ok());
  EXPECT_NE(t3.status().message().find("require"), std::string::npos);
  EXPECT_TRUE(build(" 2 root_hash_sig " + good).ok());
  // The kernel way: the signature in a user key.
  long id = syscall(SYS_add_key, "user", "udm-verity-test", read_file(good).data(), read_file(good).size(),
                    KEY_SPEC_PROCESS_KEYRING);
  if (id < 0) {
    set_sig_policy({});
    GTEST_SKIP() << "kernel keyrings not usable here (add_key: " << strerror(errno) << ")";
  }
  auto t4 = build(" 2 root_hash_sig_key_desc udm-verity-test");
  EXPECT_TRUE(t4.ok()) << t4.status().message();
  auto t5 = build(" 2 root_hash_sig_key_desc udm-verity-nokey");
  ASSERT_FALSE(t5.ok());
  EXPECT_EQ(t5.status().code(), ENOKEY);
  syscall(SYS_keyctl, KEYCTL_INVALIDATE, id);
  set_sig_policy({});
}

}  // namespace
