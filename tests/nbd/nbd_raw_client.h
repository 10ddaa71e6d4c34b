// A raw NBD client for tests that must send what real clients never do:
// bytes on a socket, the handshake by hand, option and request encoders.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "export/nbd/nbd_proto.h"

namespace udm::test {
using namespace udm::nbd;

inline int connect_unix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

inline bool send_all(int fd, const std::vector<uint8_t>& v) {
  return ::send(fd, v.data(), v.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(v.size());
}

inline std::vector<uint8_t> recv_n(int fd, size_t n) {
  std::vector<uint8_t> v(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = recv(fd, v.data() + got, n - got, 0);
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  v.resize(got);
  return v;
}

// True when the peer closed (EOF) within the receive timeout.
inline bool closed_by_peer(int fd) {
  uint8_t b[256];
  for (;;) {
    ssize_t r = recv(fd, b, sizeof b, 0);
    if (r == 0) return true;
    if (r < 0) return errno == ECONNRESET;
  }
}

// Greeting + client flags; returns fd ready for options.
inline int handshake(const std::string& sock) {
  int fd = connect_unix(sock);
  auto hello = recv_n(fd, 18);
  if (hello.size() != 18 || get_be64(hello.data()) != kMagic) return -1;
  std::vector<uint8_t> cf;
  put_be32(cf, kClientFixedNewstyle | kClientNoZeroes);
  send_all(fd, cf);
  return fd;
}

inline std::vector<uint8_t> option(uint32_t opt, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> v;
  put_be64(v, kOptMagic);
  put_be32(v, opt);
  put_be32(v, static_cast<uint32_t>(data.size()));
  v.insert(v.end(), data.begin(), data.end());
  return v;
}

inline std::vector<uint8_t> go_data(const std::string& name) {
  std::vector<uint8_t> d;
  put_be32(d, static_cast<uint32_t>(name.size()));
  d.insert(d.end(), name.begin(), name.end());
  put_be16(d, 0);
  return d;
}

// Reads option replies until ACK or an error; returns the final reply type.
inline uint32_t read_until_final(int fd) {
  for (;;) {
    auto h = recv_n(fd, 20);
    if (h.size() != 20) return 0;
    uint32_t type = get_be32(h.data() + 12), len = get_be32(h.data() + 16);
    recv_n(fd, len);
    if (type == kRepAck || (type & kRepErrBit)) return type;
  }
}

inline int go(const std::string& sock, const std::string& name) {
  int fd = handshake(sock);
  send_all(fd, option(kOptGo, go_data(name)));
  return read_until_final(fd) == kRepAck ? fd : -1;
}

inline std::vector<uint8_t> request(uint16_t type, uint64_t off, uint32_t len, uint64_t cookie = 1,
                             uint16_t flags = 0) {
  std::vector<uint8_t> v;
  put_be32(v, kRequestMagic);
  put_be16(v, flags);
  put_be16(v, type);
  put_be64(v, cookie);
  put_be64(v, off);
  put_be32(v, len);
  return v;
}


}  // namespace udm::test
