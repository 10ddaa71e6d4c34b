#include "common/sys_util.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace udm::test {
namespace fs = std::filesystem;

std::string CmdResult::field(const std::string& name) const {
  std::istringstream s(out);
  std::string line;
  while (std::getline(s, line))
    if (line.rfind(name, 0) == 0) return line.substr(line.find_last_of(" \t") + 1);
  return "";
}

std::string CmdResult::describe() const {
  return "exit " + std::to_string(exit_code) + "; stdout: " + out.substr(0, 4000) +
         "; stderr: " + err.substr(0, 4000);
}

CmdResult run(const std::vector<std::string>& argv, const std::string& stdin_data) {
  CmdResult r;
  int out_p[2], err_p[2], in_p[2];
  if (pipe2(out_p, O_CLOEXEC) || pipe2(err_p, O_CLOEXEC) || pipe2(in_p, O_CLOEXEC)) {
    r.err = "pipe failed";
    return r;
  }
  // Everything the child needs is built before fork: the child of a
  // multithreaded process may only make async-signal-safe calls until exec
  // (a malloc there can wait forever for an allocator lock another thread
  // held at the fork - seen under ASan).
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in_p[0], 0);
    dup2(out_p[1], 1);
    dup2(err_p[1], 2);
    execvp(args[0], args.data());
    static const char msg[] = "exec failed\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(127);
  }
  close(in_p[0]);
  close(out_p[1]);
  close(err_p[1]);
  // Feed stdin and drain both outputs without deadlocking.
  size_t in_off = 0;
  if (stdin_data.empty()) {
    close(in_p[1]);
    in_p[1] = -1;
  }
  bool out_open = true, err_open = true;
  char buf[65536];
  while (out_open || err_open || in_p[1] >= 0) {
    pollfd fds[3];
    int n = 0;
    int io = -1, ie = -1, ii = -1;
    if (out_open) { fds[n] = {out_p[0], POLLIN, 0}; io = n++; }
    if (err_open) { fds[n] = {err_p[0], POLLIN, 0}; ie = n++; }
    if (in_p[1] >= 0) { fds[n] = {in_p[1], POLLOUT, 0}; ii = n++; }
    if (poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (io >= 0 && fds[io].revents) {
      ssize_t k = read(out_p[0], buf, sizeof buf);
      if (k <= 0) out_open = false; else r.out.append(buf, k);
    }
    if (ie >= 0 && fds[ie].revents) {
      ssize_t k = read(err_p[0], buf, sizeof buf);
      if (k <= 0) err_open = false; else r.err.append(buf, k);
    }
    if (ii >= 0 && fds[ii].revents) {
      ssize_t k = write(in_p[1], stdin_data.data() + in_off, stdin_data.size() - in_off);
      if (k > 0) in_off += k;
      if (k <= 0 || in_off == stdin_data.size()) {
        close(in_p[1]);
        in_p[1] = -1;
      }
    }
  }
  close(out_p[0]);
  close(err_p[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

CmdResult sh(const std::string& script) { return run({"/bin/sh", "-c", script}); }

bool have_tool(const std::string& name) {
  return sh("command -v '" + name + "' >/dev/null 2>&1").ok();
}

bool is_root() { return geteuid() == 0; }

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/udm-test-XXXXXX";
  std::vector<char> b(tmpl.begin(), tmpl.end());
  b.push_back(0);
  if (!mkdtemp(b.data())) throw std::runtime_error("mkdtemp failed");
  path_ = b.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void write_file(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!f) throw std::runtime_error("write " + path);
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("open " + path);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void make_sparse_file(const std::string& path, uint64_t size) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0)
    throw std::runtime_error("create " + path);
  close(fd);
}

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x = rng();
    std::memcpy(&v[i], &x, 8);
  }
  for (; i < n; i++) v[i] = static_cast<uint8_t>(rng());
  return v;
}

std::string sha256_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("open " + path);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (f.gcount() > 0) EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(f.gcount()));
  }
  unsigned char md[32];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; i++) {
    s += hex[md[i] >> 4];
    s += hex[md[i] & 15];
  }
  return s;
}

LoopDevice::LoopDevice(const std::string& file, bool read_only, int sector_size) {
  std::vector<std::string> argv = {"losetup", "-f", "--show"};
  if (read_only) argv.push_back("-r");
  if (sector_size) argv.push_back("--sector-size=" + std::to_string(sector_size));
  argv.push_back(file);
  // losetup can race with other tests grabbing the same free loop device.
  for (int attempt = 0; attempt < 5; attempt++) {
    auto r = run(argv);
    if (r.ok()) {
      dev_ = r.out.substr(0, r.out.find('\n'));
      err_.clear();
      return;
    }
    err_ = r.describe();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

LoopDevice::~LoopDevice() {
  if (!dev_.empty()) {
    for (int i = 0; i < 20; i++) {
      if (run({"losetup", "-d", dev_}).ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

Mount::Mount(const std::string& dev, const std::string& dir, const std::string& opts) : dir_(dir) {
  std::vector<std::string> argv = {"mount"};
  if (!opts.empty()) {
    argv.push_back("-o");
    argv.push_back(opts);
  }
  argv.push_back(dev);
  argv.push_back(dir);
  auto r = run(argv);
  ok_ = r.ok();
  if (!ok_) err_ = r.describe();
}

bool Mount::unmount() {
  if (!ok_) return true;
  for (int i = 0; i < 50; i++) {
    if (run({"umount", dir_}).ok()) {
      ok_ = false;
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

Mount::~Mount() {
  if (ok_ && !unmount()) run({"umount", "-l", dir_});
}

std::string udm_bin() {
  const char* e = std::getenv("UDM_BIN");
  return e && *e ? e : UDM_DEFAULT_BIN;
}

std::string shared_dir() {
  const char* e = std::getenv("UDM_SHARED");
  return e && *e ? e : UDM_DEFAULT_SHARED;
}

std::string source_dir() {
  const char* e = std::getenv("UDM_SOURCE");
  return e && *e ? e : UDM_DEFAULT_SOURCE;
}

std::unique_ptr<TestDaemon> TestDaemon::start(bool fuse, bool nbd,
                                              const std::vector<std::string>& extra_args) {
  auto d = std::unique_ptr<TestDaemon>(new TestDaemon());
  d->dir = d->tmp_.path();
  d->socket = d->dir + "/control";
  d->log_path = d->dir + "/daemon.log";
  std::vector<std::string> argv = {udm_bin(), "daemon", "--socket", d->socket};
  if (nbd) {
    d->nbd_unix = d->dir + "/nbd.sock";
    argv.push_back("--nbd-unix");
    argv.push_back(d->nbd_unix);
  }
  if (fuse) {
    d->fuse_dir = d->dir + "/fuse";
    mkdir(d->fuse_dir.c_str(), 0755);
    argv.push_back("--fuse");
    argv.push_back(d->fuse_dir);
  }
  for (auto& a : extra_args) argv.push_back(a);
  std::vector<char*> args;  // built before fork (see run())
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const char* log_path = d->log_path.c_str();
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log_path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    int nul = open("/dev/null", O_RDONLY);
    dup2(nul, 0);
    execv(args[0], args.data());
    _exit(127);
  }
  d->pid = pid;
  // Ready when the control socket answers `ls`.
  for (int i = 0; i < 200; i++) {
    if (access(d->socket.c_str(), F_OK) == 0 && d->udm({"ls"}).ok()) return d;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      d->pid = -1;
      throw std::runtime_error("udm daemon exited at start: " +
                               std::string(reinterpret_cast<const char*>(
                                   read_file(d->log_path).data()),
                                   read_file(d->log_path).size()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("udm daemon did not come up");
}

int TestDaemon::stop() {
  if (pid <= 0) return -1;
  kill(pid, SIGTERM);
  int st = 0;
  for (int i = 0; i < 600; i++) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      pid = -1;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
  pid = -1;
  if (!fuse_dir.empty()) run({"umount", "-l", fuse_dir});
  return -2;
}

TestDaemon::~TestDaemon() {
  if (pid > 0) stop();
}

CmdResult TestDaemon::udm(std::vector<std::string> args) const {
  std::vector<std::string> argv = {udm_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--socket");
  argv.push_back(socket);
  return run(argv);
}

std::string TestDaemon::nbd_uri(const std::string& name) const {
  return "nbd+unix:///" + name + "?socket=" + nbd_unix;
}

std::string TestDaemon::qemu_nbd_spec(const std::string& name) const {
  return "nbd:unix:" + nbd_unix + ":exportname=" + name;
}

bool wait_for_file(const std::string& path, double seconds) {
  for (int i = 0; i < static_cast<int>(seconds * 40); i++) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) return true;
    usleep(25000);
  }
  return false;
}

}  // namespace udm::test
