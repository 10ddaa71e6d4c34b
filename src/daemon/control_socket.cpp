#include "daemon/control_socket.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "daemon/control_protocol.h"
#include "util/log.h"

namespace udm {
namespace {

Result<sockaddr_un> make_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path))
    return Invalid("socket path '" + path + "' is empty or too long (max " +
                   std::to_string(sizeof(a.sun_path) - 1) + " bytes)");
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

bool write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads up to '\n' (or EOF). False on error or when the line exceeds max.
bool read_line(int fd, std::string* out, size_t max) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return !out->empty();
    out->append(buf, static_cast<size_t>(n));
    auto nl = out->find('\n');
    if (nl != std::string::npos) {
      out->resize(nl);
      return true;
    }
    if (out->size() > max) return false;
  }
}

}  // namespace

std::string default_control_socket() {
  const char* e = std::getenv("UDM_SOCKET");
  return e && *e ? e : "/run/udm/control";
}

Status ControlServer::start() {
  UDM_ASSIGN_OR_RETURN(sockaddr_un addr, make_addr(path_));
  if (!group_.empty()) {
    group* g = ::getgrnam(group_.c_str());
    if (!g) {
      // A numeric gid is accepted too.
      if (group_.find_first_not_of("0123456789") == std::string::npos) {
        gid_ = static_cast<gid_t>(std::stoul(group_));
      } else {
        return Invalid("--control-group: no group named '" + group_ + "'");
      }
    } else {
      gid_ = g->gr_gid;
    }
    have_group_ = true;
  }
  auto parent = std::filesystem::path(path_).parent_path();
  bool made_parent = false;
  if (!parent.empty() && !std::filesystem::exists(parent)) {
    made_parent = true;
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) return Status::Error(ec.value(), "create " + parent.string() + ": " + ec.message());
    ::chmod(parent.c_str(), 0700);
  }
  // Refuse to steal the socket of a running daemon; replace a stale one.
  if (std::filesystem::exists(path_)) {
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    if (probe >= 0) ::close(probe);
    if (live) return Status::Error(EADDRINUSE, "another udm daemon is listening on " + path_);
    ::unlink(path_.c_str());
  }
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return ErrnoStatus("socket");
  mode_t old = ::umask(0177);
  int rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::umask(old);
  if (rc != 0) return ErrnoStatus("bind " + path_);
  ::chmod(path_.c_str(), 0600);
  if (have_group_) {
    // Group members must reach the socket: socket 0660 and its directory
    // traversable by the group (0750), both group-owned.
    if (::chown(path_.c_str(), static_cast<uid_t>(-1), gid_) != 0) return ErrnoStatus("chown " + path_);
    ::chmod(path_.c_str(), 0660);
    // Only a directory we made is opened to the group; an existing one is
    // the administrator's (the systemd unit makes /run/udm 0750 root:GROUP).
    if (made_parent && ::chown(parent.c_str(), static_cast<uid_t>(-1), gid_) == 0) ::chmod(parent.c_str(), 0750);
  }
  if (::listen(listen_fd_, 64) != 0) return ErrnoStatus("listen " + path_);
  if (::pipe2(wake_, O_CLOEXEC) != 0) return ErrnoStatus("pipe");
  thread_ = std::thread([this] { accept_loop(); });
  return Status::Ok();
}

void ControlServer::accept_loop() {
  while (!stopping_) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      log::error("control: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    reap(false);
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::lock_guard lk(mu_);
    workers_.push_back(Worker{std::thread([this, fd, done] {
                                serve(fd);
                                *done = true;
                              }),
                              done});
  }
}

bool ControlServer::peer_allowed(int fd, std::string* who) const {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    *who = "a peer whose credentials cannot be read";
    return false;
  }
  *who = "uid " + std::to_string(cred.uid);
  if (cred.uid == 0 || cred.uid == ::geteuid()) return true;
  if (!have_group_) return false;
  if (cred.gid == gid_) return true;
  // Supplementary groups of the peer (Linux 4.13+).
  std::vector<gid_t> groups(64);
  for (int tries = 0; tries < 4; tries++) {
    socklen_t gl = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &gl) == 0) {
      groups.resize(gl / sizeof(gid_t));
      for (gid_t g : groups)
        if (g == gid_) return true;
      return false;
    }
    if (errno != ERANGE) return false;
    groups.resize(gl / sizeof(gid_t) + 1);
  }
  return false;
}

void ControlServer::serve(int fd) {
  std::string line;
  // The socket's mode already limits who can connect; check the peer too, so
  // a loosened mode or a leaked descriptor does not open the daemon. A
  // refused peer's request is read (briefly) before the answer, so that the
  // client sees the refusal rather than a broken pipe.
  std::string who;
  if (!peer_allowed(fd, &who)) {
    log::warn("control: refused {}", who);
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    read_line(fd, &line, kMaxControlRequest);
    write_all(fd, error_reply(Status::Error(EACCES, "permission denied: " + who +
                                                        (have_group_ ? " is not root and not in group " + group_
                                                                     : " is not root")))
                      .dump() + "\n");
    ::close(fd);
    return;
  }
  if (read_line(fd, &line, kMaxControlRequest)) {
    write_all(fd, handle_request_line(reg_, line));
  } else {
    write_all(fd, error_reply(Invalid("unreadable or oversized request")).dump() + "\n");
  }
  ::close(fd);
}

void ControlServer::reap(bool all) {
  std::lock_guard lk(mu_);
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (all || *it->done) {
      if (it->thread.joinable()) it->thread.join();
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

void ControlServer::stop() {
  if (stopping_.exchange(true)) return;
  if (wake_[1] >= 0) {
    char c = 1;
    (void)!::write(wake_[1], &c, 1);
  }
  if (thread_.joinable()) thread_.join();
  reap(true);
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    ::unlink(path_.c_str());
    listen_fd_ = -1;
  }
  for (int& f : wake_)
    if (f >= 0) {
      ::close(f);
      f = -1;
    }
}

Result<nlohmann::json> control_call(const std::string& socket_path, const nlohmann::json& req) {
  UDM_ASSIGN_OR_RETURN(sockaddr_un addr, make_addr(socket_path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket");
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    ::close(fd);
    if (e == ENOENT || e == ECONNREFUSED)
      return Status::Error(e, "cannot reach the udm daemon at " + socket_path +
                                  " (is `udm daemon` running? --socket or UDM_SOCKET select another)");
    return ErrnoStatus("connect " + socket_path, e);
  }
  std::string out = req.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (!write_all(fd, out)) {
    // The daemon may have answered (a refusal) and closed before reading.
    int e = errno;
    std::string line;
    bool got = read_line(fd, &line, 64u << 20);
    ::close(fd);
    auto j = got ? nlohmann::json::parse(line, nullptr, false) : nlohmann::json();
    if (got && j.is_object()) return j;
    return ErrnoStatus("send to " + socket_path, e);
  }
  std::string line;
  bool got = read_line(fd, &line, 64u << 20);
  ::close(fd);
  if (!got) return IoError("no reply from the udm daemon at " + socket_path);
  auto j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return IoError("malformed reply from the udm daemon");
  return j;
}

}  // namespace udm
