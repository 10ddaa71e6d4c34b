#include "export/nbd/nbd_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "export/nbd/nbd_proto.h"
#include "util/log.h"

namespace udm {
using namespace nbd;

struct NbdServer::Conn {
  int fd = -1;
  std::string peer;        // client key for the per-client limit (address or uid)
  std::unique_ptr<TlsSession> tls;  // after NBD_OPT_STARTTLS
  std::mutex write_mu;  // one reply at a time on the socket
  std::atomic<bool> write_failed{false};
  // Replies waiting for the socket (send combining): a thread whose reply
  // finds the socket busy queues it and goes back to reading requests; the
  // thread that holds write_mu sends every queued reply, many in one
  // sendmsg, before it lets go (and looks again after letting go).
  struct Pending {
    uint8_t h[28];
    uint8_t hlen = 0;
    std::vector<uint8_t> body;  // a READ's data (a recycled payload buffer) or an error chunk
    size_t body_len = 0;
    bool recycle = false;  // body goes back to free_bufs once sent
  };
  std::mutex out_mu;
  std::vector<Pending> outq;
  size_t out_bytes = 0;
  DevicePtr dev;
  std::string export_name;
  ExportLimits lim;
  bool structured = false;
  bool no_zeroes = false;
  std::vector<uint32_t> meta;  // meta contexts set (NBD_OPT_SET_META_CONTEXT), in id order
  std::string meta_export;     // ... for this export name
  std::atomic<uint64_t> refused{0};  // requests answered with an error before the device saw them
  std::mutex read_mu;  // one thread reads a request (header + payload) at a time
  // Transmission-phase receive buffer (plaintext only; guarded by read_mu):
  // one recv takes whatever the client has sent - several requests at queue
  // depth, a write's header and payload together - instead of one recv per
  // header and per payload.
  std::unique_ptr<uint8_t[]> rbuf;
  size_t rhead = 0, rtail = 0;
  std::atomic<bool> closing{false};
  std::mutex mu;  // guards fd against stop()
  // Reusable payload buffers: 1 MiB mallocs are mmaps, and page faults cost more than the copy.
  std::mutex buf_mu;
  std::vector<std::vector<uint8_t>> free_bufs;

  std::vector<uint8_t> take_buf(size_t n) {
    std::lock_guard lk(buf_mu);
    for (size_t i = 0; i < free_bufs.size(); i++) {
      if (free_bufs[i].capacity() >= n) {
        std::vector<uint8_t> b = std::move(free_bufs[i]);
        free_bufs[i] = std::move(free_bufs.back());
        free_bufs.pop_back();
        b.resize(n);
        return b;
      }
    }
    std::vector<uint8_t> b;
    b.reserve(std::max<size_t>(n, 64 * 1024));
    b.resize(n);
    return b;
  }
  void give_buf(std::vector<uint8_t> b) {
    if (b.capacity() == 0) return;  // moved out (a queued reply owns it)
    std::lock_guard lk(buf_mu);
    if (free_bufs.size() < 64 && b.capacity() <= kMaxPayload) free_bufs.push_back(std::move(b));
  }
};

namespace {

bool read_full(int fd, void* buf, size_t n) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, MSG_WAITALL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool writev_full(int fd, iovec* iov, int cnt, int flags = 0) {
  while (cnt > 0) {
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = static_cast<size_t>(cnt);
    ssize_t r = ::sendmsg(fd, &m, MSG_NOSIGNAL | flags);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    size_t done = static_cast<size_t>(r);
    while (cnt > 0 && done >= iov->iov_len) {
      done -= iov->iov_len;
      iov++;
      cnt--;
    }
    if (cnt > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + done;
      iov->iov_len -= done;
    }
  }
  return true;
}

// A connection's byte stream: the socket, or TLS once STARTTLS succeeded.
bool conn_recv(NbdServer::Conn& c, void* buf, size_t n) {
  return c.tls ? c.tls->recv_full(buf, n) : read_full(c.fd, buf, n);
}

bool conn_send(NbdServer::Conn& c, iovec* iov, int cnt) {
  return c.tls ? c.tls->send_iov(iov, cnt) : writev_full(c.fd, iov, cnt);
}

bool send_bytes(NbdServer::Conn& c, const std::vector<uint8_t>& v) {
  iovec io{const_cast<uint8_t*>(v.data()), v.size()};
  return conn_send(c, &io, 1);
}

// Send every queued reply (send combining, above). block: wait for the
// socket instead of leaving the queue to its present holder - the queue's
// bound on memory when a client stops reading its replies.
constexpr size_t kMaxQueuedBytes = 8u << 20;
constexpr size_t kMaxBatch = 64;  // replies per sendmsg
constexpr size_t kTlsBatchBytes = 64 * 1024;  // what the TLS session corks into records

void drain_replies(NbdServer::Conn& c, bool block = false) {
  // Per thread and kept: swapped with the queue, so both keep their
  // capacity instead of a new allocation at every drain.
  thread_local std::vector<NbdServer::Conn::Pending> batch;
  thread_local std::vector<iovec> iov;
  for (;;) {
    std::unique_lock wl(c.write_mu, std::defer_lock);
    if (block) {
      wl.lock();
      block = false;
    } else if (!wl.try_lock()) {
      return;  // the holder looks at the queue after it lets go
    }
    for (;;) {
      {
        std::lock_guard ol(c.out_mu);
        if (c.outq.empty()) break;
        batch.swap(c.outq);
        c.out_bytes = 0;
      }
      // Up to kMaxBatch replies per send; with TLS also at most 64 KiB, so
      // that the session corks them into full records (nbd_tls.cpp).
      for (size_t i = 0; i < batch.size();) {
        iov.clear();
        size_t bytes = 0, j = i;
        for (; j < batch.size() && j < i + kMaxBatch; j++) {
          auto& p = batch[j];
          if (c.tls && j > i && bytes + p.hlen + p.body_len > kTlsBatchBytes) break;
          if (p.hlen) iov.push_back({p.h, p.hlen});
          if (p.body_len) iov.push_back({p.body.data(), p.body_len});
          bytes += p.hlen + p.body_len;
        }
        i = j;
        if (!c.write_failed && !conn_send(c, iov.data(), static_cast<int>(iov.size()))) c.write_failed = true;
      }
      for (auto& p : batch)
        if (p.recycle) c.give_buf(std::move(p.body));
      batch.clear();
    }
    wl.unlock();
    std::lock_guard ol(c.out_mu);
    if (c.outq.empty()) return;
  }
}

void queue_reply(NbdServer::Conn& c, NbdServer::Conn::Pending p) {
  bool block;
  {
    std::lock_guard ol(c.out_mu);
    c.out_bytes += p.body_len;
    c.outq.push_back(std::move(p));
    block = c.out_bytes > kMaxQueuedBytes;
  }
  drain_replies(c, block);
}

// The socket for one reply sent in place (large, spliced, block status):
// when it lets go it sends what was queued meanwhile.
class WriteLock {
 public:
  explicit WriteLock(NbdServer::Conn& c) : c_(c) { c_.write_mu.lock(); }
  ~WriteLock() {
    c_.write_mu.unlock();
    drain_replies(c_);
  }
  WriteLock(const WriteLock&) = delete;
  WriteLock& operator=(const WriteLock&) = delete;

 private:
  NbdServer::Conn& c_;
};

void set_recv_timeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

constexpr size_t kRecvBufSize = 64 * 1024;
constexpr size_t kDirectRecv = 32 * 1024;  // a rest this large is received in place, not through the buffer

// The transmission phase's byte stream, read under the connection's read
// lock. Plaintext goes through the connection's receive buffer: bytes already
// buffered first, then a large rest straight into place (MSG_WAITALL), a
// small one by refilling the buffer with whatever has arrived. TLS has its
// own record buffer (GnuTLS).
bool tx_recv(NbdServer::Conn& c, void* buf, size_t n) {
  if (c.tls) return c.tls->recv_full(buf, n);
  auto* p = static_cast<uint8_t*>(buf);
  for (;;) {
    size_t k = std::min(n, c.rtail - c.rhead);
    if (k) std::memcpy(p, c.rbuf.get() + c.rhead, k);
    c.rhead += k;
    p += k;
    n -= k;
    if (n == 0) return true;
    // The buffer is empty here.
    c.rhead = c.rtail = 0;
    if (n >= kDirectRecv) return read_full(c.fd, p, n);
    if (!c.rbuf) c.rbuf = std::make_unique<uint8_t[]>(kRecvBufSize);
    ssize_t r;
    do r = ::recv(c.fd, c.rbuf.get(), kRecvBufSize, 0);
    while (r < 0 && errno == EINTR);
    if (r <= 0) return false;
    c.rtail = static_cast<size_t>(r);
  }
}

// Discard n bytes of a payload we will not use.
bool skip(NbdServer::Conn& c, uint64_t n) {
  uint8_t buf[65536];
  while (n > 0) {
    size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof buf));
    if (!tx_recv(c, buf, k)) return false;
    n -= k;
  }
  return true;
}

}  // namespace

Result<std::pair<std::string, std::string>> nbd_listen_address(const std::string& a) {
  std::string host, port;
  if (!a.empty() && a.find_first_not_of("0123456789") == std::string::npos) {
    port = a;  // "PORT": loopback
  } else if (!a.empty() && a[0] == '[') {
    auto close = a.find(']');
    if (close == std::string::npos || close + 1 >= a.size() || a[close + 1] != ':')
      return Invalid("bad address '" + a + "' (want [IPv6]:PORT)");
    host = a.substr(1, close - 1);
    port = a.substr(close + 2);
  } else {
    auto colon = a.rfind(':');
    if (colon == std::string::npos) return Invalid("bad address '" + a + "' (want HOST:PORT, :PORT or PORT)");
    host = a.substr(0, colon);
    port = a.substr(colon + 1);
  }
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoul(port) > 65535)
    return Invalid("bad address '" + a + "': the port must be a number from 0 to 65535");
  // Least exposure: no host means loopback. Every interface only when asked
  // for by name (0.0.0.0 or [::]).
  if (host.empty()) host = "127.0.0.1";
  return std::make_pair(host, port);
}

namespace {
}  // namespace

NbdServer::NbdServer(ExportProvider& provider, NbdServerOptions opts)
    : filtered_(opts.exports.empty() ? nullptr
                                     : std::make_unique<FilteredExportProvider>(provider, opts.exports)),
      provider_(filtered_ ? filtered_.get() : &provider),
      opts_(std::move(opts)) {}

NbdServer::~NbdServer() { stop(); }

Status NbdServer::start() {
  if (opts_.unix_path.empty() && opts_.tcp_address.empty())
    return Invalid("nbd: no Unix socket or TCP address to listen on");
  if (opts_.tls.mode != TlsMode::Off) {
    auto t = TlsServer::create(opts_.tls);
    if (!t.ok()) return Status::Error(t.status().code(), "nbd: " + t.status().message());
    tls_ = std::move(t).value();
  }
  if (!opts_.unix_path.empty()) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (opts_.unix_path.size() >= sizeof a.sun_path) return Invalid("nbd: socket path too long");
    std::memcpy(a.sun_path, opts_.unix_path.data(), opts_.unix_path.size());
    ::unlink(opts_.unix_path.c_str());
    unix_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (unix_fd_ < 0) return ErrnoStatus("nbd: socket");
    mode_t old = ::umask(0117);
    int rc = ::bind(unix_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::umask(old);
    if (rc != 0) return ErrnoStatus("nbd: bind " + opts_.unix_path);
    if (::listen(unix_fd_, 128) != 0) return ErrnoStatus("nbd: listen " + opts_.unix_path);
  }
  if (!opts_.tcp_address.empty()) {
    UDM_ASSIGN_OR_RETURN(auto hp, nbd_listen_address(opts_.tcp_address));
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = ::getaddrinfo(hp.first.c_str(), hp.second.c_str(), &hints, &res);
    if (gai != 0) return Invalid(fmt::format("nbd: resolve {}: {}", opts_.tcp_address, gai_strerror(gai)));
    Status last = Invalid("nbd: no usable address for " + opts_.tcp_address);
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
      int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
      if (fd < 0) continue;
      int one = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
        tcp_fd_ = fd;
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
        char host[NI_MAXHOST], serv[NI_MAXSERV];
        ::getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, serv, sizeof serv,
                      NI_NUMERICHOST | NI_NUMERICSERV);
        tcp_bound_ = ss.ss_family == AF_INET6 ? fmt::format("[{}]:{}", host, serv)
                                              : fmt::format("{}:{}", host, serv);
        break;
      }
      last = ErrnoStatus("nbd: bind/listen " + opts_.tcp_address);
      ::close(fd);
    }
    ::freeaddrinfo(res);
    if (tcp_fd_ < 0) return last;
  }
  if (::pipe2(wake_, O_CLOEXEC) != 0) return ErrnoStatus("nbd: pipe");
  accept_thread_ = std::thread([this] { accept_loop(); });
  started_ = true;
  return Status::Ok();
}

void NbdServer::accept_loop() {
  while (!stopping_) {
    pollfd fds[3];
    int n = 0;
    fds[n++] = {wake_[0], POLLIN, 0};
    if (unix_fd_ >= 0) fds[n++] = {unix_fd_, POLLIN, 0};
    if (tcp_fd_ >= 0) fds[n++] = {tcp_fd_, POLLIN, 0};
    if (::poll(fds, static_cast<nfds_t>(n), -1) < 0) {
      if (errno == EINTR) continue;
      log::error("nbd: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[0].revents) return;
    for (int i = 1; i < n; i++) {
      if (!fds[i].revents) continue;
      sockaddr_storage ss{};
      socklen_t sl = sizeof ss;
      int fd = ::accept4(fds[i].fd, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_CLOEXEC);
      if (fd < 0) continue;
      auto c = std::make_shared<Conn>();
      c->fd = fd;
      if (fds[i].fd == tcp_fd_) {
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char host[NI_MAXHOST] = "?";
        ::getnameinfo(reinterpret_cast<sockaddr*>(&ss), sl, host, sizeof host, nullptr, 0, NI_NUMERICHOST);
        c->peer = host;
      } else {
        ucred cr{};
        socklen_t cl = sizeof cr;
        c->peer = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0 ? fmt::format("uid {}", cr.uid)
                                                                            : std::string("unix");
      }
      reap(false);
      std::lock_guard lk(conns_mu_);
      unsigned& live = per_client_[c->peer];
      if (opts_.max_client_connections && live >= opts_.max_client_connections) {
        log::warn("nbd: {} already has {} connections (the limit); closing a new one", c->peer, live);
        ::close(fd);
        continue;
      }
      live++;
      auto done = std::make_shared<std::atomic<bool>>(false);
      conns_.push_back(ConnThread{c, std::thread([this, c, done] {
                                    serve(c);
                                    {
                                      std::lock_guard lk2(conns_mu_);
                                      auto it = per_client_.find(c->peer);
                                      if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
                                    }
                                    *done = true;
                                  }),
                                  done});
    }
  }
}

void NbdServer::reap(bool all) {
  std::list<ConnThread> dead;
  {
    std::lock_guard lk(conns_mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (all || *it->done) {
        dead.splice(dead.end(), conns_, it++);
      } else {
        ++it;
      }
    }
  }
  for (auto& ct : dead)
    if (ct.thread.joinable()) ct.thread.join();
}

namespace {

// ----------------------------------------------------------------- handshake

enum class Next { Transmit, Close };

void send_reply(NbdServer::Conn& c, const Request& r, const Status& s, std::vector<uint8_t>& payload);

// A READ longer than kMaxPayload, in pieces of kMaxPayload (memory bounded).
// Structured replies: one OFFSET_DATA chunk per piece (other replies may go
// between them), an error chunk if a piece fails. Simple replies have no way
// to report an error after the header, so the write lock is held from the
// header to the last byte and a failure after the first piece closes the
// connection.
// The header in front of a READ's data: a simple reply, or one OFFSET_DATA
// chunk (`flags`: kReplyFlagDone on the last). Returns its length.
size_t read_data_header(uint8_t h[28], bool structured, uint64_t cookie, uint16_t flags,
                        uint64_t offset, uint64_t n) {
  if (!structured) {
    simple_reply(h, cookie, 0);
    return 16;
  }
  structured_header(h, cookie, flags, kReplyTypeOffsetData, n + 8);
  for (int i = 0; i < 8; i++) h[20 + i] = static_cast<uint8_t>(offset >> (56 - 8 * i));
  return 28;
}

void serve_large_read(NbdServer::Conn& c, const Request& r) {
  BlockDevice& d = *c.dev;
  std::vector<uint8_t> buf = c.take_buf(kMaxPayload);
  uint64_t done = 0;
  if (c.structured) {
    if (r.flags & kCmdFlagDf) {  // the protocol's answer to "no fragments" for > 64 KiB
      Status s = Status::Error(EOVERFLOW, "read longer than 32 MiB cannot be sent unfragmented");
      send_reply(c, r, s, buf);
      c.give_buf(std::move(buf));
      return;
    }
    while (done < r.length) {
      uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kMaxPayload, r.length - done));
      Status s = d.read(r.offset + done, std::span<uint8_t>(buf.data(), n));
      WriteLock lk(c);
      if (c.write_failed) break;
      bool ok;
      if (!s.ok()) {
        ok = send_bytes(c, structured_error(r.cookie, errno_to_nbd(s.code()), s.message()));
        if (!ok) c.write_failed = true;
        c.give_buf(std::move(buf));
        return;
      }
      uint8_t h[28];
      iovec io[2] = {{h, read_data_header(h, true, r.cookie, 0, r.offset + done, n)}, {buf.data(), n}};
      if (!conn_send(c, io, 2)) c.write_failed = true;
      done += n;
    }
    WriteLock lk(c);
    if (!c.write_failed) {
      uint8_t h[20];
      structured_header(h, r.cookie, kReplyFlagDone, kReplyTypeNone, 0);
      iovec io{h, 20};
      if (!conn_send(c, &io, 1)) c.write_failed = true;
    }
    c.give_buf(std::move(buf));
    return;
  }
  WriteLock lk(c);
  while (!c.write_failed && done < r.length) {
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kMaxPayload, r.length - done));
    Status s = d.read(r.offset + done, std::span<uint8_t>(buf.data(), n));
    uint8_t h[16];
    iovec io[2] = {{h, 16}, {buf.data(), n}};
    bool ok;
    if (!s.ok() && done == 0) {
      simple_reply(h, r.cookie, errno_to_nbd(s.code()));
      ok = conn_send(c, io, 1);
      if (!ok) c.write_failed = true;
      break;
    }
    if (!s.ok()) {
      log::warn("nbd {}: read {} at {}: {} after {} bytes were sent; closing the connection",
                c.export_name, r.length, r.offset, s.to_string(), done);
      c.write_failed = true;
      break;
    }
    if (done == 0) {
      simple_reply(h, r.cookie, 0);
      ok = conn_send(c, io, 2);
    } else {
      ok = conn_send(c, io + 1, 1);
    }
    if (!ok) c.write_failed = true;
    done += n;
  }
  c.give_buf(std::move(buf));
}

// ------------------------------------------------------------ direct reads
//
// A READ whose whole range is bytes of a file (BlockDevice::direct_extent,
// e.g. a linear target over a file) on a plaintext connection is spliced:
// inside the device's I/O gate the file's pages are spliced into this
// thread's pipe (references to the page cache, no copy); after the gate,
// under the connection's write lock, the reply header is sent and the pipe
// is spliced into the socket. The bytes are copied once, by the client's
// recv, instead of pread's copy plus send's. The gate is left before the
// socket is written, so a client that stops reading holds up its own
// connection, never a suspend, exactly as with the buffered path.
//
// As with sendfile, the reply carries the page cache's bytes as they are
// when they are sent, not a snapshot taken in the gate: a write to the same
// range that is concurrent with the read (not yet acknowledged when the
// read's reply is complete) may show in it, which NBD allows for
// overlapping requests in flight. Small reads are not worth the extra system
// calls and keep the buffered path, and so do reads larger than the pipe
// may grow (pipe-max-size, 1 MiB by default, without CAP_SYS_RESOURCE).
constexpr uint32_t kDirectReadMin = 64 * 1024;

class SplicePipe {
 public:
  ~SplicePipe() { reset(); }
  // Room for `n` bytes from a file offset `in_page` bytes into its page: a
  // pipe buffer per page spanned. False if the pipe cannot grow that far
  // (past pipe-max-size, 1 MiB by default, without CAP_SYS_RESOURCE): the
  // caller then reads the buffered way.
  bool reserve(size_t n, size_t in_page) {
    size_t need = (in_page + n + 4095) / 4096 * 4096;
    if (need > grow_failed_at_) return false;
    if (rd_ < 0) {
      int p[2];
      if (::pipe2(p, O_CLOEXEC) != 0) return false;
      rd_ = p[0];
      wr_ = p[1];
      int sz = ::fcntl(rd_, F_GETPIPE_SZ);
      cap_ = sz > 0 ? static_cast<size_t>(sz) : 0;
    }
    if (cap_ >= need) return true;
    int sz = ::fcntl(rd_, F_SETPIPE_SZ, static_cast<int>(need));
    if (sz < 0) {
      grow_failed_at_ = need;
      return false;
    }
    cap_ = static_cast<size_t>(sz);
    return cap_ >= need;
  }
  // Drop whatever the pipe holds (a failed or abandoned transfer).
  void reset() {
    if (rd_ >= 0) ::close(rd_);
    if (wr_ >= 0) ::close(wr_);
    rd_ = wr_ = -1;
    cap_ = 0;
  }
  int rd() const { return rd_; }
  int wr() const { return wr_; }

 private:
  int rd_ = -1, wr_ = -1;
  size_t cap_ = 0;
  size_t grow_failed_at_ = SIZE_MAX;
};

// Serves a READ by splicing when its whole range is a direct extent; false
// when it is not (nothing sent: the caller reads it the buffered way).
bool serve_direct_read(NbdServer::Conn& c, const Request& r) {
  thread_local SplicePipe pipe;
  thread_local bool sigpipe_blocked = false;
  if (!sigpipe_blocked) {
    // splice() has no MSG_NOSIGNAL: a vanished client must give EPIPE, not
    // kill the process. Blocked, a SIGPIPE stays pending on this thread.
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &s, nullptr);
    sigpipe_blocked = true;
  }
  const size_t n = r.length;
  bool filled = false;
  auto direct = c.dev->direct_extent(r.offset, n, [&](const DirectExtent& e) -> Status {
    if (e.length < n || !pipe.reserve(n, e.file_offset % 4096)) return Status::Ok();
    loff_t in = static_cast<loff_t>(e.file_offset);
    size_t got = 0;
    while (got < n) {
      // NONBLOCK: a full pipe (more pipe buffers needed than planned) gives
      // EAGAIN instead of waiting forever for a reader.
      ssize_t k = ::splice(e.fd, &in, pipe.wr(), nullptr, n - got, SPLICE_F_NONBLOCK);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && errno == EAGAIN) {
        pipe.reset();
        return Status::Ok();  // did not fit: the buffered path
      }
      if (k < 0) {
        Status s = ErrnoStatus(fmt::format("splice {} bytes at {} of the backing file", n - got, in));
        pipe.reset();
        return s;
      }
      if (k == 0) {
        pipe.reset();
        return IoError(fmt::format("read at {} of the backing file: unexpected end of file", in));
      }
      got += static_cast<size_t>(k);
    }
    filled = true;
    return Status::Ok();
  });
  if (!direct.ok()) {
    std::vector<uint8_t> none;
    send_reply(c, r, direct.status(), none);
    return true;
  }
  if (!filled) return false;
  WriteLock lk(c);
  if (c.write_failed) {
    pipe.reset();
    return true;
  }
  uint8_t h[28];
  // MSG_MORE: header and data leave in one packet on TCP.
  iovec io{h, read_data_header(h, c.structured, r.cookie, kReplyFlagDone, r.offset, r.length)};
  bool ok = writev_full(c.fd, &io, 1, MSG_MORE);
  size_t left = n;
  while (ok && left > 0) {
    ssize_t k = ::splice(pipe.rd(), nullptr, c.fd, nullptr, left, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      ok = false;
      break;
    }
    left -= static_cast<size_t>(k);
  }
  if (!ok) {
    c.write_failed = true;
    pipe.reset();
  }
  return true;
}

// NBD_CMD_BLOCK_STATUS: the device's allocation map, one chunk per context.
void serve_block_status(NbdServer::Conn& c, const Request& r) {
  AllocMap map;
  Status s = c.dev->allocation(r.offset, r.length, map);
  std::vector<uint8_t> none;
  if (!s.ok()) return send_reply(c, r, s, none);
  std::vector<uint8_t> out;
  for (size_t i = 0; i < c.meta.size(); i++) {
    auto chunk = block_status_chunk(r.cookie, i + 1 == c.meta.size(), c.meta[i], map,
                                    r.flags & kCmdFlagReqOne);
    out.insert(out.end(), chunk.begin(), chunk.end());
  }
  WriteLock lk(c);
  if (c.write_failed) return;
  if (!send_bytes(c, out)) c.write_failed = true;
}

// Serve one already-validated request and send its reply. Runs on the reader
// thread (when nothing else is queued on the socket) or on a worker.
void run_request(NbdServer::Conn& c, const Request& r, std::vector<uint8_t>& payload) {
  Status s;
  BlockDevice& d = *c.dev;
  bool fua = r.flags & kCmdFlagFua;
  switch (r.type) {
    case kCmdBlockStatus:
      return serve_block_status(c, r);
    case kCmdRead:
      if (r.length > kMaxPayload) return serve_large_read(c, r);
      if (!c.tls && r.length >= kDirectReadMin && serve_direct_read(c, r)) return;
      payload = c.take_buf(r.length);
      s = d.read(r.offset, std::span<uint8_t>(payload.data(), r.length));
      break;
    case kCmdWrite:
      s = d.write(r.offset, std::span<const uint8_t>(payload.data(), r.length), fua);
      break;
    case kCmdFlush:
      s = d.flush();
      break;
    case kCmdTrim:
      s = d.trim(r.offset, r.length);
      if (s.code() == EOPNOTSUPP) s = Status::Ok();  // discard is advisory
      if (s.ok() && fua) s = d.flush();
      break;
    case kCmdWriteZeroes:
      if ((r.flags & kCmdFlagFastZero) && !d.caps().fast_zero) {
        s = NotSupported("fast zero not possible");
        break;
      }
      // Without NO_HOLE the server may punch a hole, as long as it reads zero.
      s = d.write_zeroes(r.offset, r.length, fua, !(r.flags & kCmdFlagNoHole));
      break;
    case kCmdCache:
      break;  // nothing to prefetch into: OK
    default:
      s = Invalid("unsupported command");
  }
  send_reply(c, r, s, payload);
}

// An error reply: a structured error chunk (with the message) or a simple reply.
NbdServer::Conn::Pending error_reply(const NbdServer::Conn& c, uint64_t cookie, uint32_t err,
                                     const std::string& message) {
  NbdServer::Conn::Pending p;
  if (c.structured) {
    p.body = structured_error(cookie, err, message);
    p.body_len = p.body.size();
  } else {
    simple_reply(p.h, cookie, err);
    p.hlen = 16;
  }
  return p;
}

// The reply to a request served with status s (a READ's data in payload).
void send_reply(NbdServer::Conn& c, const Request& r, const Status& s, std::vector<uint8_t>& payload) {
  if (c.write_failed) return;
  NbdServer::Conn::Pending p;
  if (!s.ok()) {
    log::debug("nbd {}: {} at {}+{}: {}", c.export_name, r.type, r.offset, r.length, s.to_string());
    p = error_reply(c, r.cookie, errno_to_nbd(s.code()), s.message());
  } else if (r.type == kCmdRead && r.length > 0) {
    p.hlen = static_cast<uint8_t>(read_data_header(p.h, c.structured, r.cookie, kReplyFlagDone, r.offset, r.length));
    p.body = std::move(payload);  // given back to the connection's buffers once sent
    p.body_len = r.length;
    p.recycle = true;
  } else if (c.structured) {
    structured_header(p.h, r.cookie, kReplyFlagDone, kReplyTypeNone, 0);
    p.hlen = 20;
  } else {
    simple_reply(p.h, r.cookie, 0);
    p.hlen = 16;
  }
  queue_reply(c, std::move(p));
}

uint16_t tx_flags(const DeviceCaps& caps, bool structured) {
  uint16_t f = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxCanMultiConn | kTxSendCache;
  if (caps.read_only) f |= kTxReadOnly;
  if (!caps.read_only) f |= kTxSendTrim | kTxSendWriteZeroes | kTxSendFastZero;
  if (structured) f |= kTxSendDf;
  return f;
}

}  // namespace

void NbdServer::serve(std::shared_ptr<Conn> cp) {
  Conn& c = *cp;
  int fd = c.fd;
  auto close_conn = [&] {
    if (c.tls) {
      // close_notify, best effort: never wait long on a client that stopped reading.
      timeval tv{2, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      c.tls->bye();
    }
    std::unique_lock lk(c.mu);
    ::close(fd);
    c.fd = -1;  // under c.mu: stop() reads it to shut the socket down
    c.dev.reset();
  };
  // A silent client may not hold a thread forever during negotiation.
  set_recv_timeout(fd, 30);
  {
    std::vector<uint8_t> hello;
    put_be64(hello, kMagic);
    put_be64(hello, kOptMagic);
    put_be16(hello, kFlagFixedNewstyle | kFlagNoZeroes);
    uint8_t cf[4];
    if (!send_bytes(c, hello) || !conn_recv(c, cf, 4)) return close_conn();
    uint32_t cflags = get_be32(cf);
    if (cflags & ~(kClientFixedNewstyle | kClientNoZeroes)) {
      log::info("nbd: client sent unknown flags {:#x}; closing", cflags);
      return close_conn();
    }
    c.no_zeroes = cflags & kClientNoZeroes;
  }
  // Option haggling.
  bool negotiated = false;
  for (int round = 0; round < 4096 && !negotiated && !stopping_; round++) {
    uint8_t oh[16];
    if (!conn_recv(c, oh, 16)) return close_conn();
    if (get_be64(oh) != kOptMagic) {
      log::info("nbd: bad option magic; closing");
      return close_conn();
    }
    uint32_t opt = get_be32(oh + 8), len = get_be32(oh + 12);
    if (len > kMaxOptionLength) {
      log::info("nbd: option {} of {} bytes is too long; closing", opt, len);
      send_bytes(c, option_reply(opt, kRepErrTooBig));
      return close_conn();
    }
    std::vector<uint8_t> data(len);
    if (len && !conn_recv(c, data.data(), len)) return close_conn();
    auto reply_err = [&](uint32_t type, const std::string& msg) {
      return send_bytes(c, option_reply(opt, type, std::span<const uint8_t>(
                                                         reinterpret_cast<const uint8_t*>(msg.data()), msg.size())));
    };
    auto resolve_name = [&](std::string name) -> std::string {
      if (!name.empty()) return name;
      auto all = provider_->list_exports();  // the default export: the only device, if one
      return all.size() == 1 ? all[0].name : name;
    };
    bool sent = true;
    if (opts_.tls.mode == TlsMode::Require && !c.tls && opt != kOptStartTls && opt != kOptAbort) {
      // --tls require: nothing but STARTTLS (or ABORT) in plaintext.
      if (opt == kOptExportName) {
        log::info("nbd {}: EXPORT_NAME before STARTTLS on a TLS-only server; closing", c.peer);
        return close_conn();  // no way to reply to it
      }
      if (!reply_err(kRepErrTlsReqd, "this server requires TLS: send NBD_OPT_STARTTLS first")) return close_conn();
      continue;
    }
    switch (opt) {
      case kOptExportName: {
        std::string name = resolve_name(std::string(data.begin(), data.end()));
        auto dev = provider_->open_export(name);
        if (!dev.ok()) {
          log::info("nbd: EXPORT_NAME '{}': {}", name, dev.status().message());
          return close_conn();  // the old style has no way to say no
        }
        c.dev = std::move(dev).value();
        c.export_name = name;
        std::vector<uint8_t> v;
        put_be64(v, c.dev->size());
        put_be16(v, tx_flags(c.dev->caps(), false));
        if (!c.no_zeroes) v.resize(v.size() + 124, 0);
        c.structured = false;  // EXPORT_NAME clients never negotiate it
        c.meta.clear();
        sent = send_bytes(c, v);
        negotiated = true;
        break;
      }
      case kOptAbort:
        send_bytes(c, option_reply(opt, kRepAck));
        return close_conn();
      case kOptList: {
        if (len != 0) {
          sent = reply_err(kRepErrInvalid, "NBD_OPT_LIST takes no data");
          break;
        }
        for (const auto& e : provider_->list_exports()) {
          std::vector<uint8_t> v;
          put_be32(v, static_cast<uint32_t>(e.name.size()));
          v.insert(v.end(), e.name.begin(), e.name.end());
          if (!(sent = send_bytes(c, option_reply(opt, kRepServer, v)))) break;
        }
        if (sent) sent = send_bytes(c, option_reply(opt, kRepAck));
        break;
      }
      case kOptStructuredReply:
        if (len != 0) {
          sent = reply_err(kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
        } else {
          c.structured = true;
          sent = send_bytes(c, option_reply(opt, kRepAck));
        }
        break;
      case kOptInfo:
      case kOptGo: {
        auto req = parse_info_request(data);
        if (!req.ok()) {
          sent = reply_err(kRepErrInvalid, req.status().message());
          break;
        }
        std::string name = resolve_name(req->name);
        auto dev = provider_->open_export(name);
        if (!dev.ok()) {
          sent = reply_err(kRepErrUnknown, "no export named '" + name + "'");
          break;
        }
        DevicePtr d = std::move(dev).value();
        DeviceCaps caps = d->caps();
        sent = send_bytes(c, option_reply(opt, kRepInfo, info_export(d->size(), tx_flags(caps, c.structured))));
        bool want_bs = false, want_name = false;
        for (uint16_t i : req->infos) {
          want_bs |= i == kInfoBlockSize;
          want_name |= i == kInfoName;
        }
        if (sent && want_name) sent = send_bytes(c, option_reply(opt, kRepInfo, info_name(name)));
        if (sent && want_bs)
          sent = send_bytes(c, option_reply(opt, kRepInfo,
                                             info_block_size(std::max(kMinBlock, caps.logical_block),
                                                             std::max(kPreferredBlock, caps.physical_block),
                                                             std::min(kMaxPayload, caps.max_io))));
        if (sent) sent = send_bytes(c, option_reply(opt, kRepAck));
        if (opt == kOptGo) {
          c.dev = std::move(d);
          c.export_name = name;
          negotiated = true;
          // Contexts set for another export do not apply to this one.
          if (c.meta_export != name) c.meta.clear();
        }
        break;
      }
      case kOptListMetaContext:
      case kOptSetMetaContext: {
        const bool set = opt == kOptSetMetaContext;
        const char* what = set ? "NBD_OPT_SET_META_CONTEXT" : "NBD_OPT_LIST_META_CONTEXT";
        if (set && !c.structured) {
          sent = reply_err(kRepErrInvalid, std::string(what) + " needs structured replies first");
          break;
        }
        auto req = parse_meta_context_request(data);
        if (!req.ok()) {
          log::info("nbd {}: {}: {}", c.peer, what, req.status().message());
          sent = reply_err(req.status().code() == E2BIG ? kRepErrTooBig : kRepErrInvalid,
                           req.status().message());
          break;
        }
        std::string name = resolve_name(req->name);
        if (!provider_->open_export(name).ok()) {
          sent = reply_err(kRepErrUnknown, "no export named '" + name + "'");
          break;
        }
        std::vector<uint32_t> ids = select_meta_contexts(req->queries, !set);
        if (set) {
          c.meta = ids;  // replaces any earlier selection
          c.meta_export = name;
        }
        for (uint32_t id : ids)
          if (!(sent = send_bytes(c, option_reply(opt, kRepMetaContext, meta_context_reply(id))))) break;
        if (sent) sent = send_bytes(c, option_reply(opt, kRepAck));
        break;
      }
      case kOptStartTls: {
        if (!tls_) {
          sent = reply_err(kRepErrPolicy, "TLS is not offered (the daemon runs with --tls off)");
          break;
        }
        if (c.tls) {
          sent = reply_err(kRepErrInvalid, "TLS is already on");
          break;
        }
        if (len != 0) {
          sent = reply_err(kRepErrInvalid, "NBD_OPT_STARTTLS takes no data");
          break;
        }
        if (!send_bytes(c, option_reply(opt, kRepAck))) return close_conn();
        auto t = tls_->handshake(fd);
        if (!t.ok()) {
          log::info("nbd {}: {}; closing", c.peer, t.status().message());
          return close_conn();
        }
        c.tls = std::move(t).value();
        // Nothing negotiated in plaintext carries over (the NBD protocol's rule).
        c.structured = false;
        c.meta.clear();
        log::debug("nbd {}: {}", c.peer, c.tls->description());
        break;
      }
      default:
        sent = reply_err(kRepErrUnsup, fmt::format("option {} is not supported", opt));
    }
    if (!sent) return close_conn();
  }
  if (!negotiated) return close_conn();

  // Transmission: several threads per connection take turns reading one
  // request each (under read_mu) and then serve it and send the reply
  // themselves, so queue depth > 1 runs in parallel without handing requests
  // from thread to thread (nbdkit's "parallel" model).
  set_recv_timeout(fd, 0);
  c.lim.size = c.dev->size();
  c.lim.read_only = c.dev->caps().read_only;
  c.lim.structured = c.structured;
  if (!c.structured) c.meta.clear();
  c.lim.meta = !c.meta.empty();
  unsigned n = opts_.workers ? opts_.workers : 8;
  std::vector<std::thread> extra;
  for (unsigned i = 1; i < n; i++) extra.emplace_back([this, cp] { transmit(*cp); });
  transmit(c);
  for (auto& t : extra) t.join();
  close_conn();
}

void NbdServer::transmit(Conn& c) {
  const int fd = c.fd;
  uint8_t hdr[kRequestSize];
  auto finish = [&] {
    // Wake the thread blocked in recv (if any); replies still go out.
    c.closing = true;
    ::shutdown(fd, SHUT_RD);
  };
  for (;;) {
    Request r;
    Check chk;
    std::vector<uint8_t> payload;
    bool large = false;
    Status large_write;
    {
      std::lock_guard rl(c.read_mu);
      if (c.closing || stopping_) return finish();
      if (!tx_recv(c, hdr, kRequestSize)) return finish();
      auto req = decode_request(std::span<const uint8_t>(hdr, kRequestSize));
      if (!req.ok()) {
        log::info("nbd {}: {}; closing", c.export_name, req.status().message());
        return finish();
      }
      r = *req;
      chk = check_request(r, c.lim);
      if (chk.close) {
        log::info("nbd {}: {}; closing", c.export_name, chk.message);
        return finish();
      }
      if (r.type == kCmdDisc) return finish();
      if (r.type == kCmdWrite && !chk.error && r.length > kMaxPayload) {
        // Served in pieces as it arrives (memory bounded); the rest of the
        // payload is still read after a failed piece, to stay in sync.
        std::vector<uint8_t> piece = c.take_buf(kMaxPayload);
        Status s;
        for (uint64_t done = 0; done < r.length;) {
          uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kMaxPayload, r.length - done));
          if (!tx_recv(c, piece.data(), n)) return finish();
          if (s.ok()) s = c.dev->write(r.offset + done, std::span<const uint8_t>(piece.data(), n), false);
          done += n;
        }
        if (s.ok() && (r.flags & kCmdFlagFua)) s = c.dev->flush();
        c.give_buf(std::move(piece));
        large_write = s;
        large = true;
      } else if (r.type == kCmdWrite) {
        if (chk.error) {
          if (!skip(c, r.length)) return finish();
        } else {
          payload = c.take_buf(r.length);
          if (!tx_recv(c, payload.data(), r.length)) return finish();  // client vanished mid-payload
        }
      }
    }
    if (large) {
      send_reply(c, r, large_write, payload);
      if (c.write_failed) return finish();
      continue;
    }
    if (chk.error) {
      // Logged (the first few per connection, then every 1024th): a client
      // that meets a refusal can be told why from the daemon's log.
      uint64_t k = c.refused.fetch_add(1);
      if (k < 8 || k % 1024 == 0)
        log::info("nbd {}: refused command {} at {}+{} (flags {:#x}): {}{}", c.export_name, r.type, r.offset,
                  r.length, r.flags, chk.message, k >= 8 ? fmt::format(" ({} refused so far)", k + 1) : "");
      // Through the reply queue like every other reply: never on the socket
      // beside another thread's reply.
      queue_reply(c, error_reply(c, r.cookie, chk.error, chk.message));
      if (c.write_failed) return finish();
      continue;
    }
    run_request(c, r, payload);
    c.give_buf(std::move(payload));
    if (c.write_failed) return finish();
  }
}

void NbdServer::stop() {
  if (!started_ || stopping_.exchange(true)) return;
  if (wake_[1] >= 0) {
    char ch = 1;
    (void)!::write(wake_[1], &ch, 1);
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  if (unix_fd_ >= 0) {
    ::close(unix_fd_);
    ::unlink(opts_.unix_path.c_str());
    unix_fd_ = -1;
  }
  if (tcp_fd_ >= 0) {
    ::close(tcp_fd_);
    tcp_fd_ = -1;
  }
  // Stop reading from every client; requests already read finish and reply.
  {
    std::lock_guard lk(conns_mu_);
    for (auto& ct : conns_) {
      std::lock_guard clk(ct.conn->mu);
      if (ct.conn->fd >= 0) ::shutdown(ct.conn->fd, SHUT_RD);
    }
  }
  reap(true);
  for (int& f : wake_)
    if (f >= 0) {
      ::close(f);
      f = -1;
    }
}

}  // namespace udm
