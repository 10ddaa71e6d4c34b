// NBD read load generator: random 4 KiB reads and sequential 1 MiB reads
// against an NBD URI, with a fixed queue depth (libnbd async API).
//   obd_nbd_read URI PATTERN(rand4k|seq1m) SECONDS [QD]
// Prints "PATTERN MiB/s IOPS".
#include <libnbd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s URI rand4k|seq1m SECONDS [QD]\n", argv[0]);
    return 2;
  }
  std::string pattern = argv[2];
  double secs = std::atof(argv[3]);
  int qd = argc > 4 ? std::atoi(argv[4]) : 8;
  nbd_handle* h = nbd_create();
  if (!h || nbd_connect_uri(h, argv[1]) == -1) {
    std::fprintf(stderr, "connect: %s\n", nbd_get_error());
    return 1;
  }
  int64_t size = nbd_get_size(h);
  size_t bs = pattern == "seq1m" ? (1u << 20) : 4096;
  std::vector<std::vector<char>> bufs(qd, std::vector<char>(bs));
  std::vector<int64_t> cookies(qd, -1);
  std::mt19937_64 rng(1);
  uint64_t seq = 0, done = 0, bytes = 0;
  auto next_off = [&]() -> uint64_t {
    if (pattern == "seq1m") {
      uint64_t o = seq;
      seq += bs;
      if (seq + bs > static_cast<uint64_t>(size)) seq = 0;
      return o;
    }
    return (rng() % (size / bs)) * bs;
  };
  auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  for (int i = 0; i < qd; i++) cookies[i] = nbd_aio_pread(h, bufs[i].data(), bs, next_off(), NBD_NULL_COMPLETION, 0);
  bool stop = false;
  while (true) {
    bool any = false;
    for (int i = 0; i < qd; i++) {
      if (cookies[i] < 0) continue;
      any = true;
      int r = nbd_aio_command_completed(h, cookies[i]);
      if (r == -1) {
        std::fprintf(stderr, "read: %s\n", nbd_get_error());
        return 1;
      }
      if (r == 1) {
        done++;
        bytes += bs;
        cookies[i] = stop ? -1 : nbd_aio_pread(h, bufs[i].data(), bs, next_off(), NBD_NULL_COMPLETION, 0);
      }
    }
    if (!any) break;
    if (!stop && elapsed() >= secs) stop = true;
    bool in_flight = false;
    for (int i = 0; i < qd; i++) in_flight |= cookies[i] >= 0;
    if (!in_flight) break;
    if (nbd_poll(h, -1) == -1) {
      std::fprintf(stderr, "poll: %s\n", nbd_get_error());
      return 1;
    }
  }
  double t = elapsed();
  std::printf("%s %.1f %.0f\n", pattern.c_str(), bytes / t / 1048576.0, done / t);
  nbd_shutdown(h, 0);
  nbd_close(h);
  return 0;
}
