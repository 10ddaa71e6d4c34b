// Reads through `verity` against the same reads through `linear` over the
// same data file, in process (BlockDevice::read): sequential 1 MiB and random
// 4 KiB, 1 and 2 threads, verity with a cold hash cache (dropped before the
// pass) and warm. Prints MB/s and the verity/linear ratio of each.
//   verity_read_bench DATA HASH ROOT SALT|- [HASH_START_BLOCK]
#include <fmt/format.h>

#include <chrono>
#include <random>
#include <thread>

#include "device/feature.h"
#include "device/mapped_device.h"
#include "device/table.h"
#include "io/resolver.h"

using namespace udm;

namespace {

double pass(MappedDevice& d, bool seq, unsigned threads, uint64_t ops) {
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  uint64_t bytes_per = seq ? d.size() / threads : ops / threads * 4096;
  for (unsigned w = 0; w < threads; w++)
    ts.emplace_back([&, w] {
      std::vector<uint8_t> buf(seq ? 1 << 20 : 4096);
      std::mt19937_64 rng(w + 1);
      if (seq) {
        for (uint64_t o = w * bytes_per; o + buf.size() <= (w + 1) * bytes_per; o += buf.size())
          if (!d.read(o, buf).ok()) abort();
      } else {
        for (uint64_t i = 0; i < ops / threads; i++)
          if (!d.read((rng() % (d.size() / 4096)) * 4096, buf).ok()) abort();
      }
    });
  for (auto& t : ts) t.join();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return bytes_per * threads / s / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: verity_read_bench DATA HASH ROOT SALT|- [HASH_START]\n");
    return 2;
  }
  register_features();
  std::string data = argv[1], hash = argv[2], root = argv[3], salt = argv[4];
  std::string hstart = argc > 5 ? argv[5] : "1";
  Resolver res;
  auto probe = res.open(data, false);
  if (!probe.ok()) return 1;
  uint64_t blocks = (*probe)->size() / 4096, sectors = blocks * 8;
  auto mk = [&](const std::string& table) {
    auto spec = parse_table(table);
    auto t = Table::build(*spec, res, TargetRegistry::builtin(), "b");
    if (!t.ok()) {
      fprintf(stderr, "%s\n", t.status().message().c_str());
      exit(1);
    }
    return std::make_shared<MappedDevice>("b", *t);
  };
  auto lin = mk(fmt::format("0 {} linear {} 0", sectors, data));
  auto ver = mk(fmt::format("0 {} verity 1 {} {} 4096 4096 {} {} sha256 {} {}", sectors, data, hash, blocks, hstart,
                            root, salt));
  auto drop = [&] { (void)ver->active_table()->segments()[0].target->message({"drop-cache"}); };
  const uint64_t kRand = 40000;
  for (unsigned th : {1u, 2u}) {
    for (bool seq : {true, false}) {
      pass(*lin, seq, th, kRand);  // page cache warm-up
      double l = pass(*lin, seq, th, kRand);
      drop();
      double cold = pass(*ver, seq, th, kRand);
      double warm = pass(*ver, seq, th, kRand);
      printf("%-14s threads=%u  linear %8.1f MB/s  verity cold %8.1f MB/s (%.2fx)  warm %8.1f MB/s (%.2fx)\n",
             seq ? "seq 1MiB" : "rand 4KiB", th, l, cold, cold / l, warm, warm / l);
    }
  }
  return 0;
}
