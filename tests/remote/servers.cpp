#include "servers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

namespace udm::test {

int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t l = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
  int p = ntohs(a.sin_port);
  ::close(s);
  return p;
}

bool wait_port(int port, int timeout_ms) {
  for (int i = 0; i < timeout_ms / 20; i++) {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(uint16_t(port));
    bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(s);
    if (ok) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

Proc::Proc(const std::vector<std::string>& argv, const std::string& log_path, const std::string& cwd) {
  // Built before fork: the child of a multithreaded process may only make
  // async-signal-safe calls until exec (no malloc).
  std::vector<char*> a;
  for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  pid_ = ::fork();
  if (pid_ == 0) {
    int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    int nul = ::open("/dev/null", O_RDONLY);
    ::dup2(nul, 0);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) _exit(126);
    ::execvp(a[0], a.data());
    _exit(127);
  }
}

void Proc::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  for (int i = 0; i < 250; i++) {
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

static std::string slurp(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::unique_ptr<TestCa> TestCa::make(std::string* error, const std::string& dns_name) {
  if (!have_tool("openssl")) {
    *error = "openssl not installed";
    return nullptr;
  }
  std::unique_ptr<TestCa> ca(new TestCa());
  ::chmod(ca->dir.path().c_str(), 0755);  // nginx workers read the key and certificate
  std::string d = ca->dir.path();
  std::ofstream(d + "/server.ext") << "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                                      "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
                                   << (dns_name.empty() ? "" : ",DNS:" + dns_name) << "\n";
  std::vector<std::vector<std::string>> steps = {
      {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d + "/ca.key", "-out", d + "/ca.pem",
       "-days", "2", "-subj", "/CN=udm test CA", "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign"},
      {"openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", d + "/server.key", "-out", d + "/server.csr",
       "-subj", "/CN=127.0.0.1"},
      {"openssl", "x509", "-req", "-in", d + "/server.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key",
       "-CAcreateserial", "-out", d + "/server.pem", "-days", "2", "-extfile", d + "/server.ext"}};
  for (auto& s : steps) {
    auto r = run(s);
    if (!r.ok()) {
      *error = "openssl " + s[1] + ": " + r.describe();
      return nullptr;
    }
  }
  ::chmod((d + "/server.key").c_str(), 0644);
  return ca;
}

std::unique_ptr<Nginx> Nginx::start(const std::string& root, std::string* error, const TestCa* tls) {
  if (!have_tool("nginx") && ::access("/usr/sbin/nginx", X_OK) != 0) {
    *error = "nginx not installed (scripts/setup installs nginx-light)";
    return nullptr;
  }
  std::unique_ptr<Nginx> n(new Nginx());
  std::string d = n->dir_.path();
  ::chmod(d.c_str(), 0755);
  ::mkdir((d + "/tmp").c_str(), 0755);
  n->port = free_port();
  n->tls = tls != nullptr;
  std::string listen = "127.0.0.1:" + std::to_string(n->port);
  if (tls) listen += " ssl http2; ssl_certificate " + tls->cert_pem() + "; ssl_certificate_key " + tls->key_pem();
  std::ofstream(d + "/nginx.conf") << "worker_processes 1; pid " << d << "/nginx.pid; error_log " << d
                                   << "/error.log warn;\n"
                                      "events { worker_connections 256; }\nhttp {\n"
                                      "  log_format rng '$request_method $uri \"$http_range\" $status $body_bytes_sent $server_protocol';\n"
                                      "  access_log "
                                   << d << "/access.log rng;\n  client_body_temp_path " << d
                                   << "/tmp/body; proxy_temp_path " << d << "/tmp/proxy; fastcgi_temp_path " << d
                                   << "/tmp/fcgi; uwsgi_temp_path " << d << "/tmp/uwsgi; scgi_temp_path " << d
                                   << "/tmp/scgi;\n  keepalive_requests 100000;\n  server { listen "
                                   << listen << "; root " << root << "; }\n}\n";
  std::string bin = have_tool("nginx") ? "nginx" : "/usr/sbin/nginx";
  n->proc_ = std::make_unique<Proc>(std::vector<std::string>{bin, "-c", d + "/nginx.conf", "-p", d, "-e",
                                                             d + "/error.log", "-g", "daemon off;"},
                                    d + "/stderr.log");
  if (!wait_port(n->port)) {
    *error = "nginx did not start: " + slurp(d + "/error.log") + slurp(d + "/stderr.log");
    return nullptr;
  }
  return n;
}

std::string Nginx::url(const std::string& name) const {
  return std::string(tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(port) + "/" + name;
}

std::vector<Nginx::Hit> Nginx::log() const {
  // nginx logs a request after the reply went out: wait until the log stops growing.
  std::string text = slurp(dir_.path() + "/access.log");
  for (int i = 0; i < 20; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::string again = slurp(dir_.path() + "/access.log");
    if (again == text && !text.empty()) break;
    text = again;
  }
  std::vector<Hit> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    Hit h;
    std::istringstream ls(line);
    ls >> h.method >> h.uri;
    size_t q1 = line.find('"'), q2 = line.find('"', q1 + 1);
    h.range = line.substr(q1 + 1, q2 - q1 - 1);
    std::istringstream rest(line.substr(q2 + 1));
    rest >> h.status >> h.bytes >> h.protocol;
    out.push_back(h);
  }
  return out;
}

void Nginx::clear_log() const { std::ofstream(dir_.path() + "/access.log", std::ios::trunc); }

std::unique_ptr<FaultServer> FaultServer::start(const std::string& root, std::string* error) {
  if (::access("/usr/bin/python3", X_OK) != 0) {
    *error = "python3 not installed";
    return nullptr;
  }
  std::unique_ptr<FaultServer> f(new FaultServer());
  f->port = free_port();
  f->proc_ = std::make_unique<Proc>(std::vector<std::string>{"/usr/bin/python3", source_dir() + "/tests/remote/fault_server.py",
                                                             std::to_string(f->port), root},
                                    f->dir_.file("log"));
  if (!wait_port(f->port)) {
    *error = "fault server did not start: " + slurp(f->dir_.file("log"));
    return nullptr;
  }
  return f;
}

std::string FaultServer::url(const std::string& mode, const std::string& name) const {
  return "http://127.0.0.1:" + std::to_string(port) + "/" + mode + "/" + name;
}

std::string FaultServer::get(const std::string& path) const {
  auto r = run({"curl", "-s", "http://127.0.0.1:" + std::to_string(port) + path});
  return r.out;
}

static const char* kTokServer = R"PY(
import base64, hashlib, json, sys, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography import x509
PORT = int(sys.argv[1]); TTL = int(sys.argv[2])
KEY = open("key.pem", "rb").read()
cert = x509.load_pem_x509_certificate(open("cert.pem", "rb").read())
der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
raw = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
KID = ":".join(raw[i:i+4] for i in range(0, len(raw), 4))
USERS = {"udm": "secret"}
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        q = parse_qs(urlparse(self.path).query); user = ""
        a = self.headers.get("Authorization", "")
        if a.startswith("Basic "):
            name, _, pw = base64.b64decode(a[6:]).decode().partition(":")
            if USERS.get(name) != pw:
                print("refused", name, flush=True); self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
            user = name
        access = []
        for s in q.get("scope", []):
            typ, name, acts = s.split(":"); acts = acts.split(",")
            access.append({"type": typ, "name": name, "actions": acts if user else [x for x in acts if x == "pull"]})
        now = int(time.time())
        claims = {"iss": "udm-test-issuer", "sub": user, "aud": q.get("service", [""])[0],
                  "exp": now + TTL - (60 if TTL < 60 else 0), "nbf": now - 1, "iat": now, "jti": str(uuid.uuid4()), "access": access}
        tok = jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": KID})
        body = json.dumps({"token": tok, "access_token": tok, "expires_in": TTL}).encode()
        print("token", user or "-", q.get("scope", [""])[0], flush=True)
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
)PY";

std::unique_ptr<Registry> Registry::start(bool token, int ttl, std::string* error, const TestCa* tls) {
  if (::access("/usr/bin/docker-registry", X_OK) != 0) {
    *error = "docker-registry not installed (scripts/setup installs it)";
    return nullptr;
  }
  std::unique_ptr<Registry> r(new Registry());
  std::string d = r->dir_.path();
  r->port = free_port();
  r->token = token;
  std::string auth;
  if (token) {
    auto py = run({"/usr/bin/python3", "-c", "import jwt, cryptography"});
    if (!py.ok()) {
      *error = "python3-jwt/python3-cryptography missing: " + py.err;
      return nullptr;
    }
    auto k = run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d + "/key.pem", "-out",
                  d + "/cert.pem", "-days", "2", "-subj", "/CN=udm-test-token"});
    if (!k.ok()) {
      *error = "openssl: " + k.describe();
      return nullptr;
    }
    std::ofstream(d + "/tok.py") << kTokServer;
    r->token_port = free_port();
    r->tok_ = std::make_unique<Proc>(std::vector<std::string>{"/usr/bin/python3", d + "/tok.py",
                                                              std::to_string(r->token_port), std::to_string(ttl)},
                                     d + "/tok.log", d);
    if (!wait_port(r->token_port)) {
      *error = "token server did not start: " + slurp(d + "/tok.log");
      return nullptr;
    }
    auth = "auth: {token: {realm: http://127.0.0.1:" + std::to_string(r->token_port) +
           "/token, service: udm-test, issuer: udm-test-issuer, rootcertbundle: " + d + "/cert.pem}}\n";
  }
  ::mkdir((d + "/data").c_str(), 0755);
  std::ofstream(d + "/config.yml") << "version: 0.1\nlog: {level: error, accesslog: {disabled: false}}\n"
                                      "storage:\n  cache: {blobdescriptor: inmemory}\n  filesystem: {rootdirectory: "
                                   << d << "/data}\n  delete: {enabled: true}\nhttp: {addr: 127.0.0.1:" << r->port
                                   << (tls ? ", tls: {certificate: " + tls->cert_pem() + ", key: " + tls->key_pem() + "}" : "")
                                   << "}\n"
                                   << auth;
  if (tls) r->ca_pem = tls->ca_pem();
  r->reg_ = std::make_unique<Proc>(std::vector<std::string>{"/usr/bin/docker-registry", "serve", d + "/config.yml"},
                                   d + "/registry.log");
  if (!wait_port(r->port)) {
    *error = "registry did not start: " + slurp(d + "/registry.log");
    return nullptr;
  }
  return r;
}

std::string Registry::push_blob(const std::string& repo, const std::string& file) const {
  std::string hex = sha256_file(file);
  std::string base = (ca_pem.empty() ? "http://" : "https://") + authority();
  std::vector<std::string> tls;
  if (!ca_pem.empty()) tls = {"--cacert", ca_pem};
  std::string hdr;
  if (token) {
    auto t = run({"curl", "-s", "-u", "udm:secret",
                  "http://127.0.0.1:" + std::to_string(token_port) + "/token?service=udm-test&scope=repository:" +
                      repo + ":pull,push"});
    auto p = t.out.find("\"token\": \"");
    if (p == std::string::npos) return "";
    std::string tok = t.out.substr(p + 10, t.out.find('"', p + 10) - p - 10);
    hdr = "Authorization: Bearer " + tok;
  }
  std::vector<std::string> post{"curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST", base + "/v2/" + repo + "/blobs/uploads/"};
  if (token) post.insert(post.begin() + 1, {"-H", hdr});
  post.insert(post.begin() + 1, tls.begin(), tls.end());
  auto r = run(post);
  std::string lower = r.out;  // over TLS the registry speaks HTTP/2: header names in lowercase
  for (auto& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  auto l = lower.find("location: ");
  if (l == std::string::npos) return "";
  std::string loc = r.out.substr(l + 10, r.out.find('\r', l) - l - 10);
  if (loc.rfind("http", 0) != 0) loc = base + loc;
  std::vector<std::string> put{"curl", "-s", "-f", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                               "--data-binary", "@" + file, loc + (loc.find('?') == std::string::npos ? "?" : "&") +
                                                                "digest=sha256:" + hex};
  if (token) put.insert(put.begin() + 1, {"-H", hdr});
  put.insert(put.begin() + 1, tls.begin(), tls.end());
  auto p = run(put);
  return p.ok() ? hex : "";
}

std::string Registry::token_log() const { return slurp(dir_.path() + "/tok.log"); }

std::string Registry::log() const { return slurp(dir_.path() + "/registry.log"); }

}  // namespace udm::test
