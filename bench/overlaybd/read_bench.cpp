// In-process read benchmark of an lsmt stack (layers as files: raw, ZFile or
// tar), with qemu-img bench's access pattern so the two can be compared
// without a transport: request i reads `size` bytes at (offset + i*step) mod
// image size (STEP 0: random aligned offsets). Threads share the requests.
//   obd_read_bench COUNT SIZE STEP THREADS LAYER [LAYER...]
// Prints "seconds MiB/s".
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "io/file_device.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/zfile_device.h"

using namespace udm;
using namespace udm::obd;

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s COUNT SIZE STEP THREADS LAYER...\n", argv[0]);
    return 2;
  }
  uint64_t count = std::strtoull(argv[1], nullptr, 0), size = std::strtoull(argv[2], nullptr, 0);
  uint64_t step = std::strtoull(argv[3], nullptr, 0);
  int threads = std::atoi(argv[4]);
  std::vector<LsmtLayer> layers;
  for (int i = 5; i < argc; i++) {
    auto f = FileDevice::open(argv[i], {.writable = false});
    if (!f.ok()) return std::fprintf(stderr, "%s\n", f.status().to_string().c_str()), 1;
    auto d = open_layer_blob(*f);
    if (!d.ok()) return std::fprintf(stderr, "%s\n", d.status().to_string().c_str()), 1;
    auto L = open_lsmt_layer(*d, argv[i]);
    if (!L.ok()) return std::fprintf(stderr, "%s\n", L.status().to_string().c_str()), 1;
    layers.push_back(std::move(*L));
  }
  auto dev = LsmtDevice::open(std::move(layers), std::nullopt, LsmtDevice::Options{false});
  if (!dev.ok()) return std::fprintf(stderr, "%s\n", dev.status().to_string().c_str()), 1;
  uint64_t img = (*dev)->size();
  std::atomic<uint64_t> next{0}, errors{0};
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> th;
  for (int t = 0; t < threads; t++) {
    th.emplace_back([&] {
      std::vector<uint8_t> buf(size);
      for (uint64_t i; (i = next++) < count;) {
        // STEP 0: uniformly random SIZE-aligned offsets.
        uint64_t off = step ? (i * step) % img : ((i * 0x9E3779B97F4A7C15ull) >> 20) % (img / size) * size;
        if (off + size > img) off = img - size;
        if (!(*dev)->read(off, buf).ok()) errors++;
      }
    });
  }
  for (auto& x : th) x.join();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%.3f %.1f\n", s, count * size / s / 1048576.0);
  return errors ? 1 : 0;
}
