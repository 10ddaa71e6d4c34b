// The NBD export's exposure controls: TLS (X.509 and PSK) against the real
// clients (nbdinfo, nbdcopy, qemu-img, qemu-io) and against hostile raw
// clients, the --nbd-export allow-list, the per-client connection limit and
// the loopback default of the TCP listener.
#include <gnutls/gnutls.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>

#include <thread>

#include "common/sys_util.h"
#include "export/nbd/nbd_server.h"
#include "io/file_device.h"
#include "nbd/nbd_raw_client.h"

using namespace udm;
using namespace udm::test;
using namespace udm::nbd;

namespace {

constexpr uint64_t kSize = 8 << 20;

NbdServerOptions options(const std::string& unix_path, const std::string& tcp, unsigned workers) {
  NbdServerOptions o;
  o.unix_path = unix_path;
  o.tcp_address = tcp;
  o.workers = workers;
  return o;
}

// A CA, a server certificate (localhost, 127.0.0.1), a client certificate
// signed by the CA, a second CA with its own client certificate (a stranger),
// and a PSK file: made with the openssl and psktool commands at test time.
struct Pki {
  std::string dir, client_dir, stranger_dir, psk, bad_psk, qemu_psk_dir;
  std::string error;
};

Pki make_pki(const TempDir& tmp) {
  Pki p;
  p.dir = tmp.file("pki");
  p.client_dir = tmp.file("client");
  p.stranger_dir = tmp.file("stranger");
  p.psk = tmp.file("keys.psk");
  p.bad_psk = tmp.file("bad.psk");
  p.qemu_psk_dir = tmp.file("qpsk");
  const std::string script = R"(set -e
cd ")" + tmp.path() + R"("
mkdir -p pki client stranger qpsk
cat > ext.cnf <<'EOF'
[req]
distinguished_name=dn
[dn]
[ca]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
[srv]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
[cli]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
mkca() { openssl req -x509 -new -newkey rsa:2048 -nodes -keyout $1-key.pem -out $1-cert.pem -days 2 -subj "/CN=$1" -config ext.cnf -extensions ca 2>/dev/null; }
mkcert() { # name ca ext cn
  openssl req -new -newkey rsa:2048 -nodes -keyout $1-key.pem -out $1.csr -subj "/CN=$4" -config ext.cnf 2>/dev/null
  openssl x509 -req -in $1.csr -CA $2-cert.pem -CAkey $2-key.pem -CAcreateserial -out $1-cert.pem -days 2 -extfile ext.cnf -extensions $3 2>/dev/null; }
mkca ca; mkca otherca
mkcert server ca srv localhost
mkcert client ca cli client
mkcert stranger otherca cli stranger
cp ca-cert.pem pki/ca-cert.pem; cp server-cert.pem pki/server-cert.pem; cp server-key.pem pki/server-key.pem
cp ca-cert.pem client/ca-cert.pem; cp client-cert.pem client/client-cert.pem; cp client-key.pem client/client-key.pem
cp ca-cert.pem stranger/ca-cert.pem; cp stranger-cert.pem stranger/client-cert.pem; cp stranger-key.pem stranger/client-key.pem
psktool -u alice -p keys.psk >/dev/null
psktool -u alice -p bad.psk >/dev/null
cp keys.psk qpsk/keys.psk
)";
  auto r = sh(script);
  if (!r.ok()) p.error = r.describe();
  return p;
}

std::string bound_port(const NbdServer& s) {
  auto a = s.tcp_bound_address();
  return a.substr(a.rfind(':') + 1);
}

class NbdTls : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto t : {"qemu-io", "qemu-img", "nbdinfo", "nbdcopy", "openssl", "psktool"})
      if (!have_tool(t)) GTEST_SKIP() << t << " missing (scripts/setup installs it)";
    pki_ = make_pki(tmp_);
    ASSERT_EQ(pki_.error, "");
    disk_ = tmp_.file("disk.img");
    write_file(disk_, random_bytes(kSize, 3));
    auto f = FileDevice::open(disk_);
    ASSERT_TRUE(f.ok());
    provider_.add("disk", *f);
    sock_ = tmp_.file("nbd.sock");
  }
  void start(TlsMode mode, bool certs, bool psk, bool verify_peer = false) {
    NbdServerOptions o = options(sock_, "127.0.0.1:0", 4);
    o.tls.mode = mode;
    if (certs) o.tls.certificates_dir = pki_.dir;
    if (psk) o.tls.psk_file = pki_.psk;
    o.tls.verify_peer = verify_peer;
    server_ = std::make_unique<NbdServer>(provider_, o);
    auto st = server_->start();
    ASSERT_TRUE(st.ok()) << st.to_string();
  }
  void TearDown() override {
    if (server_) server_->stop();
  }
  std::string x509_uri(const std::string& dir) const {
    return "nbds+unix:///disk?socket=" + sock_ + "&tls-certificates=" + dir;
  }
  std::string psk_uri(const std::string& file) const {
    return "nbds+unix://alice@/disk?socket=" + sock_ + "&tls-psk-file=" + file;
  }
  std::string plain_uri() const { return "nbd+unix:///disk?socket=" + sock_; }
  // qemu over TCP (its X.509 client checks the server name against 127.0.0.1).
  std::vector<std::string> qemu_opts(bool psk) const {
    std::string obj = psk ? "tls-creds-psk,id=tls0,endpoint=client,dir=" + pki_.qemu_psk_dir + ",username=alice"
                          : "tls-creds-x509,id=tls0,endpoint=client,dir=" + pki_.client_dir;
    return {"--object", obj, "--image-opts",
            "driver=nbd,host=127.0.0.1,port=" + bound_port(*server_) + ",export=disk,tls-creds=tls0"};
  }
  TempDir tmp_;
  Pki pki_;
  std::string disk_, sock_;
  StaticExportProvider provider_;
  std::unique_ptr<NbdServer> server_;
};

}  // namespace

TEST_F(NbdTls, X509AndPskWithEveryClient) {
  start(TlsMode::Require, /*certs=*/true, /*psk=*/true);
  // nbdinfo: both credential kinds, over TLS.
  for (const auto& uri : {x509_uri(pki_.client_dir), psk_uri(pki_.psk)}) {
    auto r = run({"nbdinfo", uri});
    ASSERT_TRUE(r.ok()) << uri << ": " << r.describe();
    EXPECT_NE(r.out.find("with TLS"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("export-size: " + std::to_string(kSize)), std::string::npos) << r.out;
  }
  // nbdcopy in (X.509) and out (PSK) over TCP: byte for byte.
  auto src = tmp_.file("src.bin"), back = tmp_.file("back.bin");
  auto data = random_bytes(kSize, 11);
  write_file(src, data);
  const std::string port = bound_port(*server_);
  auto r = run({"nbdcopy", src, "nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + pki_.client_dir});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(disk_), data);
  r = run({"nbdcopy", "nbds://alice@127.0.0.1:" + port + "/disk?tls-psk-file=" + pki_.psk, back});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(back), data);
  // qemu-img and qemu-io, both credential kinds.
  auto a = qemu_opts(false);
  std::vector<std::string> argv = {"qemu-img", "info"};
  argv.insert(argv.end(), a.begin(), a.end());
  r = run(argv);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find(std::to_string(kSize) + " bytes"), std::string::npos) << r.out;
  for (bool psk : {false, true}) {
    argv = {"qemu-io"};
    auto o = qemu_opts(psk);
    argv.insert(argv.end(), o.begin(), o.end());
    const std::string pat = psk ? "0x5a" : "0xa5";
    for (std::string c : {"write -P " + pat + " 1M 64k", std::string("flush"), "read -P " + pat + " 1M 64k"}) {
      argv.push_back("-c");
      argv.push_back(c);
    }
    r = run(argv);
    ASSERT_TRUE(r.ok() && (r.out + r.err).find("fail") == std::string::npos) << r.describe();
    auto img = read_file(disk_);
    EXPECT_EQ(img[(1 << 20) + 100], psk ? 0x5a : 0xa5);
  }
}

TEST_F(NbdTls, WrongCredentialsAreRefused) {
  start(TlsMode::Require, /*certs=*/true, /*psk=*/true, /*verify_peer=*/true);
  // Right client certificate: accepted.
  auto r = run({"nbdinfo", x509_uri(pki_.client_dir)});
  EXPECT_TRUE(r.ok()) << r.describe();
  // A certificate from another CA: refused by the server.
  r = run({"nbdinfo", x509_uri(pki_.stranger_dir)});
  EXPECT_FALSE(r.ok()) << r.describe();
  // No client certificate at all: refused (verify-peer).
  TempDir nocert;
  sh("cp " + pki_.client_dir + "/ca-cert.pem " + nocert.path() + "/");
  r = run({"nbdinfo", x509_uri(nocert.path())});
  EXPECT_FALSE(r.ok()) << r.describe();
  // A PSK with the right name and the wrong key: refused.
  r = run({"nbdinfo", psk_uri(pki_.bad_psk)});
  EXPECT_FALSE(r.ok()) << r.describe();
  // A client that does not trust the server's CA: it refuses us.
  r = run({"nbdinfo", x509_uri(pki_.stranger_dir)});
  EXPECT_FALSE(r.ok());
  // The server still serves good clients after all of that.
  r = run({"nbdinfo", psk_uri(pki_.psk)});
  EXPECT_TRUE(r.ok()) << r.describe();
}

TEST_F(NbdTls, RequireRefusesPlaintextAndOnAllowsIt) {
  start(TlsMode::Require, true, true);
  // Clients without TLS: refused by every client tool (downgrade refused).
  auto r = run({"nbdinfo", plain_uri()});
  EXPECT_FALSE(r.ok()) << r.describe();
  r = run({"qemu-img", "info", "nbd:unix:" + sock_ + ":exportname=disk"});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("TLS"), std::string::npos) << r.err;
  // Raw: LIST, INFO, GO and STRUCTURED_REPLY all get NBD_REP_ERR_TLS_REQD.
  int fd = handshake(sock_);
  ASSERT_GE(fd, 0);
  for (uint32_t opt : {uint32_t(kOptList), uint32_t(kOptStructuredReply)}) {
    ASSERT_TRUE(send_all(fd, option(opt, {})));
    EXPECT_EQ(read_until_final(fd), kRepErrTlsReqd) << "option " << opt;
  }
  for (uint32_t opt : {uint32_t(kOptInfo), uint32_t(kOptGo)}) {
    ASSERT_TRUE(send_all(fd, option(opt, go_data("disk"))));
    EXPECT_EQ(read_until_final(fd), kRepErrTlsReqd) << "option " << opt;
  }
  // STARTTLS with a payload is malformed.
  ASSERT_TRUE(send_all(fd, option(kOptStartTls, {1, 2, 3})));
  EXPECT_EQ(read_until_final(fd), kRepErrInvalid);
  // EXPORT_NAME (no error reply possible): the connection is closed.
  std::vector<uint8_t> name = {'d', 'i', 's', 'k'};
  ASSERT_TRUE(send_all(fd, option(kOptExportName, name)));
  EXPECT_TRUE(closed_by_peer(fd));
  close(fd);
  server_->stop();
  // --tls on: plaintext and TLS clients both served.
  start(TlsMode::On, true, false);
  r = run({"nbdinfo", plain_uri()});
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("without TLS"), std::string::npos) << r.out;
  r = run({"nbdinfo", x509_uri(pki_.client_dir)});
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("with TLS"), std::string::npos) << r.out;
  server_->stop();
  // --tls off: STARTTLS is refused by policy and a TLS client cannot connect.
  start(TlsMode::Off, false, false);
  r = run({"nbdinfo", x509_uri(pki_.client_dir)});
  EXPECT_FALSE(r.ok());
}

namespace {
// A GnuTLS PSK client on an already-negotiated socket (after STARTTLS's ACK).
struct PskClient {
  gnutls_session_t s = nullptr;
  gnutls_psk_client_credentials_t cred = nullptr;
  ~PskClient() {
    if (s) gnutls_deinit(s);
    if (cred) gnutls_psk_free_client_credentials(cred);
  }
  bool handshake(int fd, const std::string& psk_line) {
    auto colon = psk_line.find(':');
    std::string user = psk_line.substr(0, colon), hex = psk_line.substr(colon + 1);
    gnutls_psk_allocate_client_credentials(&cred);
    gnutls_datum_t key{reinterpret_cast<unsigned char*>(hex.data()), static_cast<unsigned>(hex.size())};
    if (gnutls_psk_set_client_credentials(cred, user.c_str(), &key, GNUTLS_PSK_KEY_HEX) < 0) return false;
    gnutls_init(&s, GNUTLS_CLIENT);
    gnutls_priority_set_direct(s, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", nullptr);
    gnutls_credentials_set(s, GNUTLS_CRD_PSK, cred);
    gnutls_transport_set_int(s, fd);
    gnutls_handshake_set_timeout(s, 10000);
    int rc;
    do rc = gnutls_handshake(s);
    while (rc < 0 && !gnutls_error_is_fatal(rc));
    return rc == 0;
  }
  bool send(const std::vector<uint8_t>& v) { return gnutls_record_send(s, v.data(), v.size()) == ssize_t(v.size()); }
  std::vector<uint8_t> recv(size_t n) {
    std::vector<uint8_t> v(n);
    size_t got = 0;
    while (got < n) {
      ssize_t r = gnutls_record_recv(s, v.data() + got, n - got);
      if (r <= 0) break;
      got += size_t(r);
    }
    v.resize(got);
    return v;
  }
  uint32_t final_reply() {
    for (;;) {
      auto h = recv(20);
      if (h.size() != 20) return 0;
      uint32_t type = get_be32(h.data() + 12), len = get_be32(h.data() + 16);
      recv(len);
      if (type == kRepAck || (type & kRepErrBit)) return type;
    }
  }
};

std::string first_line(const std::string& path) {
  auto b = read_file(path);
  std::string s(b.begin(), b.end());
  return s.substr(0, s.find('\n'));
}
}  // namespace

TEST_F(NbdTls, HostileClientsDoNotHurtTheServer) {
  signal(SIGPIPE, SIG_IGN);  // our raw writes may meet a socket the server closed
  start(TlsMode::Require, true, true);
  // STARTTLS twice: the second, inside TLS, is refused; the session goes on.
  {
    int fd = handshake(sock_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, option(kOptStartTls, {})));
    ASSERT_EQ(read_until_final(fd), kRepAck);
    PskClient c;
    ASSERT_TRUE(c.handshake(fd, first_line(pki_.psk)));
    ASSERT_TRUE(c.send(option(kOptStartTls, {})));
    EXPECT_EQ(c.final_reply(), kRepErrInvalid);
    ASSERT_TRUE(c.send(option(kOptGo, go_data("disk"))));
    EXPECT_EQ(c.final_reply(), kRepAck);
    // A read over TLS returns the disk's bytes.
    ASSERT_TRUE(c.send(request(kCmdRead, 4096, 512, 77)));
    auto rep = c.recv(16 + 512);
    ASSERT_EQ(rep.size(), 16u + 512);
    EXPECT_EQ(get_be32(rep.data() + 4), 0u);
    auto disk = read_file(disk_);
    EXPECT_TRUE(std::equal(rep.begin() + 16, rep.end(), disk.begin() + 4096));
    close(fd);
  }
  // Garbage instead of a ClientHello after STARTTLS: closed.
  {
    int fd = handshake(sock_);
    ASSERT_TRUE(send_all(fd, option(kOptStartTls, {})));
    ASSERT_EQ(read_until_final(fd), kRepAck);
    std::vector<uint8_t> junk(300, 0x41);
    send_all(fd, junk);
    EXPECT_TRUE(closed_by_peer(fd));
    close(fd);
  }
  // A client that drops mid-handshake (half a ClientHello, then gone).
  {
    int fd = handshake(sock_);
    ASSERT_TRUE(send_all(fd, option(kOptStartTls, {})));
    ASSERT_EQ(read_until_final(fd), kRepAck);
    std::vector<uint8_t> partial = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00};
    send_all(fd, partial);
    close(fd);
  }
  // A plaintext NBD request where option haggling is expected: closed.
  {
    int fd = handshake(sock_);
    send_all(fd, request(kCmdRead, 0, 512));
    EXPECT_TRUE(closed_by_peer(fd));
    close(fd);
  }
  // Still serving.
  auto r = run({"nbdinfo", psk_uri(pki_.psk)});
  EXPECT_TRUE(r.ok()) << r.describe();
}

TEST(NbdTlsConfig, BadCredentialsAreClearErrors) {
  TempDir tmp;
  StaticExportProvider p;
  auto try_start = [&](TlsOptions t) {
    NbdServerOptions o = options(tmp.file("s"), "", 1);
    o.tls = t;
    NbdServer s(p, o);
    return s.start();
  };
  auto st = try_start({TlsMode::Require, "", "", false});
  EXPECT_NE(st.message().find("needs --tls-certificates DIR or --tls-psk FILE"), std::string::npos) << st.message();
  st = try_start({TlsMode::On, tmp.path(), "", false});
  EXPECT_NE(st.message().find("cannot read " + tmp.file("server-cert.pem")), std::string::npos) << st.message();
  write_file(tmp.file("k.psk"), {'a', 'l', 'i', 'c', 'e', ':', 'x', 'y', '\n'});
  st = try_start({TlsMode::On, "", tmp.file("k.psk"), false});
  EXPECT_NE(st.message().find("line 1: the key is not an even number of hex digits"), std::string::npos)
      << st.message();
  st = try_start({TlsMode::On, "", tmp.file("none.psk"), false});
  EXPECT_NE(st.message().find("cannot read"), std::string::npos) << st.message();
  EXPECT_FALSE(parse_tls_mode("maybe").ok());
}

// ----------------------------------------------------------------- exposure

class NbdExposure : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_tool("nbdinfo") || !have_tool("qemu-io")) GTEST_SKIP() << "nbdinfo/qemu-io missing";
    for (auto n : {"a", "b", "c"}) {
      auto path = tmp_.file(std::string(n) + ".img");
      write_file(path, random_bytes(1 << 20, n[0]));
      auto f = FileDevice::open(path);
      ASSERT_TRUE(f.ok());
      provider_.add(n, *f);
    }
    sock_ = tmp_.file("nbd.sock");
  }
  void TearDown() override {
    if (server_) server_->stop();
  }
  TempDir tmp_;
  std::string sock_;
  StaticExportProvider provider_;
  std::unique_ptr<NbdServer> server_;
};

TEST_F(NbdExposure, AllowListHidesAndMakesReadOnly) {
  NbdServerOptions o = options(sock_, "", 2);
  o.exports = {{"a", false}, {"b", true}};
  server_ = std::make_unique<NbdServer>(provider_, o);
  ASSERT_TRUE(server_->start().ok());
  auto r = run({"nbdinfo", "--list", "nbd+unix://?socket=" + sock_});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("export=\"a\""), std::string::npos);
  EXPECT_NE(r.out.find("export=\"b\""), std::string::npos);
  EXPECT_EQ(r.out.find("export=\"c\""), std::string::npos) << r.out;
  // c exists but is hidden: same answer as a name that does not exist.
  r = run({"nbdinfo", "nbd+unix:///c?socket=" + sock_});
  EXPECT_FALSE(r.ok());
  r = run({"nbdinfo", "--json", "nbd+unix:///b?socket=" + sock_});
  EXPECT_NE(r.out.find("\"is_read_only\": true"), std::string::npos) << r.out;
  // Writes to the read-only export are refused on the wire; the file is unchanged.
  auto before = read_file(tmp_.file("b.img"));
  int fd = go(sock_, "b");
  ASSERT_GE(fd, 0);
  auto req = request(kCmdWrite, 0, 512, 9);
  req.resize(req.size() + 512, 0xee);
  ASSERT_TRUE(send_all(fd, req));
  auto rep = recv_n(fd, 16);
  ASSERT_EQ(rep.size(), 16u);
  EXPECT_EQ(get_be32(rep.data() + 4), kEperm);
  close(fd);
  EXPECT_EQ(read_file(tmp_.file("b.img")), before);
  // a stays writable.
  r = run({"qemu-io", "-f", "raw", "-c", "write -P 0x42 0 4k", "nbd:unix:" + sock_ + ":exportname=a"});
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(tmp_.file("a.img"))[100], 0x42);
}

TEST_F(NbdExposure, PerClientConnectionLimit) {
  NbdServerOptions o = options(sock_, "", 2);
  o.max_client_connections = 3;
  server_ = std::make_unique<NbdServer>(provider_, o);
  ASSERT_TRUE(server_->start().ok());
  std::vector<int> fds;
  for (int i = 0; i < 3; i++) {
    int fd = go(sock_, "a");
    ASSERT_GE(fd, 0) << "connection " << i;
    fds.push_back(fd);
  }
  // The fourth from the same client (uid) is closed at once.
  int extra = connect_unix(sock_);
  ASSERT_GE(extra, 0);
  EXPECT_TRUE(closed_by_peer(extra));
  close(extra);
  // Closing one makes room again.
  close(fds.back());
  fds.pop_back();
  int again = -1;
  for (int tries = 0; tries < 100 && again < 0; tries++) {
    again = go(sock_, "a");
    if (again < 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GE(again, 0);
  if (again >= 0) close(again);
  for (int fd : fds) close(fd);
}

TEST(NbdListen, NoHostMeansLoopback) {
  auto a = nbd_listen_address("10809");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->first, "127.0.0.1");
  EXPECT_EQ(a->second, "10809");
  a = nbd_listen_address(":10809");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->first, "127.0.0.1");
  a = nbd_listen_address("0.0.0.0:10809");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->first, "0.0.0.0");
  a = nbd_listen_address("[::1]:7");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->first, "::1");
  EXPECT_FALSE(nbd_listen_address("host:").ok());
  EXPECT_FALSE(nbd_listen_address("host:99999").ok());
  EXPECT_FALSE(nbd_listen_address("host:http").ok());
  // A server started with a port only listens on 127.0.0.1.
  StaticExportProvider p;
  NbdServer s(p, options("", "0", 1));
  ASSERT_TRUE(s.start().ok());
  EXPECT_EQ(s.tcp_bound_address().rfind("127.0.0.1:", 0), 0u) << s.tcp_bound_address();
  s.stop();
}

TEST(NbdExportRule, Parse) {
  auto r = parse_export_rule("vol");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->name, "vol");
  EXPECT_FALSE(r->read_only);
  r = parse_export_rule("vol:ro");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->name, "vol");
  EXPECT_TRUE(r->read_only);
  EXPECT_FALSE(parse_export_rule("vol:rw").ok());
  EXPECT_FALSE(parse_export_rule(":ro").ok());
  EXPECT_FALSE(parse_export_rule("").ok());
  EXPECT_FALSE(parse_export_rule("a/b").ok());
}
