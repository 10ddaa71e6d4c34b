// Lookup cost against stack depth: N committed layers (1, 8, 64), each
// mapping its own scattered 4 KiB extents of a 1 GiB disk; random 4 KiB reads
// through the lsmt device, in memory (so the index lookup dominates).
// Prints ns per read for each depth and the ratio to 1 layer.
#include <chrono>
#include <cstdio>
#include <random>

#include "io/memory_device.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/writer.h"

using namespace udm;
using namespace udm::obd;

static std::vector<uint8_t> make_layer(int idx, int extents, uint64_t vsize, std::mt19937_64& rng) {
  std::vector<Seg> segs;
  std::vector<uint64_t> starts;
  for (int i = 0; i < extents; i++) starts.push_back((rng() % (vsize / 4096)) * 8);
  std::sort(starts.begin(), starts.end());
  starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
  for (auto s : starts) segs.push_back(Seg{s, s + 8, 0, 0, false});
  std::vector<uint8_t> src(4096, static_cast<uint8_t>(idx));
  auto out = std::make_shared<MemGrowFile>();
  auto sink = file_sink(out, false);
  CommitOptions co;
  Status st = write_committed(vsize, "", segs, [&](uint64_t, std::span<uint8_t> b) {
    std::fill(b.begin(), b.end(), static_cast<uint8_t>(idx));
    return Status::Ok();
  }, *sink, co);
  if (!st.ok()) std::fprintf(stderr, "%s\n", st.to_string().c_str());
  return out->contents();
}

int main(int argc, char** argv) {
  const uint64_t vsize = 1ull << 30;
  int total_extents = argc > 1 ? std::atoi(argv[1]) : 64000;
  double base_ns = 0;
  std::printf("layers  extents/layer  merged_segments  ns/4KiB-read  ratio_vs_1\n");
  for (int depth : {1, 8, 64}) {
    std::mt19937_64 rng(depth);
    std::vector<LsmtLayer> layers;
    for (int l = 0; l < depth; l++) {
      auto bytes = make_layer(l, total_extents / depth, vsize, rng);
      auto dev = std::make_shared<MemoryDevice>(std::move(bytes), true);
      auto L = open_lsmt_layer(dev);
      if (!L.ok()) return 1;
      layers.push_back(std::move(*L));
    }
    auto d = LsmtDevice::open(std::move(layers), std::nullopt, LsmtDevice::Options{false});
    if (!d.ok()) return 1;
    std::vector<uint8_t> buf(4096);
    const int n = 400000;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; i++) (void)(*d)->read((rng() % (vsize / 4096)) * 4096, buf);
    double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / n;
    if (depth == 1) base_ns = ns;
    std::printf("%6d  %13d  %15zu  %12.0f  %9.2fx\n", depth, total_extents / depth, (*d)->merged_segments(), ns,
                ns / base_ns);
  }
  return 0;
}
