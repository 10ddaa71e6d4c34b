// One NBD client workload against a URI (plaintext or TLS), with libnbd:
// sequential 1 MiB reads, 4 KiB random reads and 4 KiB random writes, each
// for a fixed time at a given queue depth. Prints "pattern MiB/s IOPS".
// Used by bench/nbd/tls to measure what TLS costs udm and nbdkit in one run.
#include <libnbd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

struct Slot {
  int64_t cookie = -1;
  std::vector<char> buf;
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs `pattern` for `secs` seconds with `depth` requests in flight.
void run(nbd_handle* h, const char* pattern, uint32_t bs, bool write, bool random, unsigned depth, double secs) {
  const int64_t size = nbd_get_size(h);
  const uint64_t blocks = static_cast<uint64_t>(size) / bs;
  std::mt19937_64 rng(42);
  std::vector<Slot> slots(depth);
  for (auto& s : slots) s.buf.assign(bs, 'u');
  uint64_t next = 0, done = 0;
  const double t0 = now(), end = t0 + secs;
  auto issue = [&](Slot& s) {
    uint64_t blk = random ? rng() % blocks : (next++ % blocks);
    uint64_t off = blk * bs;
    s.cookie = write ? nbd_aio_pwrite(h, s.buf.data(), bs, off, NBD_NULL_COMPLETION, 0)
                     : nbd_aio_pread(h, s.buf.data(), bs, off, NBD_NULL_COMPLETION, 0);
    if (s.cookie < 0) {
      std::fprintf(stderr, "tls_bench: %s\n", nbd_get_error());
      std::exit(1);
    }
  };
  for (auto& s : slots) issue(s);
  while (true) {
    if (nbd_poll(h, -1) < 0) {
      std::fprintf(stderr, "tls_bench: poll: %s\n", nbd_get_error());
      std::exit(1);
    }
    bool stop = now() >= end;
    unsigned inflight = 0;
    for (auto& s : slots) {
      if (s.cookie < 0) continue;
      int r = nbd_aio_command_completed(h, s.cookie);
      if (r < 0) {
        std::fprintf(stderr, "tls_bench: %s\n", nbd_get_error());
        std::exit(1);
      }
      if (r == 1) {
        done++;
        s.cookie = -1;
        if (!stop) issue(s);
      }
      if (s.cookie >= 0) inflight++;
    }
    if (stop && inflight == 0) break;
  }
  const double t = now() - t0;
  std::printf("%s %.1f %.0f\n", pattern, done * double(bs) / t / (1 << 20), done / t);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s URI SECONDS\n", argv[0]);
    return 2;
  }
  const double secs = std::atof(argv[2]);
  struct Case {
    const char* name;
    uint32_t bs;
    bool write, random;
    unsigned depth;
  } cases[] = {{"seqread-1M", 1 << 20, false, false, 1},    {"seqwrite-1M", 1 << 20, true, false, 1},
               {"randread-4k-qd1", 4096, false, true, 1},    {"randwrite-4k-qd1", 4096, true, true, 1},
               {"randread-4k-qd16", 4096, false, true, 16}, {"randwrite-4k-qd16", 4096, true, true, 16}};
  for (const auto& c : cases) {
    nbd_handle* h = nbd_create();
    if (h) nbd_set_uri_allow_local_file(h, true);  // tls-certificates= / tls-psk-file= name local files
    if (!h || nbd_connect_uri(h, argv[1]) < 0) {
      std::fprintf(stderr, "tls_bench: connect %s: %s\n", argv[1], nbd_get_error());
      return 1;
    }
    run(h, c.name, c.bs, c.write, c.random, c.depth, secs);
    nbd_shutdown(h, 0);
    nbd_close(h);
  }
  return 0;
}
