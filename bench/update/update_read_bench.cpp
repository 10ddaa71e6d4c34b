// Read throughput through the update target (no background copy, so every
// changed block comes from the diff) against reading the new image file
// directly, same process, same patterns: sequential 1 MiB over the whole
// device, random 4 KiB over changed blocks and over unchanged blocks.
// For a v1 diff it then runs the background copy-back to completion (timed:
// compare with `cp` of the new image, printed by bench/update/run) and
// repeats the random reads over the changed blocks, now applied (read from
// the partition): unapplied vs applied.
// Usage: update_read_bench SYSTEM(old copy, modified for v1) DIFF(writable copy) NEW
#include <fmt/format.h>

#include <chrono>
#include <random>
#include <thread>

#include "io/file_device.h"
#include "io/resolver.h"
#include "update/format_io.h"
#include "update/format_v0_io.h"
#include "update/format_v1_io.h"
#include "update/target.h"

using namespace udm;

namespace {
double mibps(uint64_t bytes, double s) { return double(bytes) / 1048576.0 / s; }

template <class F>
double timed(F f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    fmt::print(stderr, "usage: {} SYSTEM DIFF NEW\n", argv[0]);
    return 2;
  }
  Resolver res;
  auto newf = FileDevice::open(argv[3], {.writable = false});
  if (!newf.ok()) return fmt::print(stderr, "{}\n", newf.status().to_string()), 1;
  TargetParams p;
  p.type = "update";
  p.length = (*newf)->size();
  p.args = {argv[1], argv[2], "1", "no_bg_update"};
  p.resolver = &res;
  auto t = make_update_target(p);
  if (!t.ok()) return fmt::print(stderr, "{}\n", t.status().to_string()), 1;
  auto diff = FileDevice::open(argv[2], {.writable = false});
  const uint64_t size = (*newf)->size();
  uint64_t bs = 4096;
  std::string desc;
  std::vector<uint64_t> changed, unchanged;
  std::vector<uint64_t> dests;
  int version = *update::diff_version(**diff);
  if (version == 0) {
    auto idx = update::load_diff(**diff);
    bs = idx->block_size();
    for (const auto& e : idx->entries) dests.push_back(e.dest);
    desc = fmt::format("v0, chunk {} blocks, {}", idx->sb.chunk_blocks, idx->sb.compression);
  } else {
    auto idx = update::load_v1(**diff);
    bs = idx->block_size();
    for (const auto& e : idx->by_dest) dests.push_back(e.first);
    desc = fmt::format("v1, {} operations, chunk {} blocks", idx->ops.size(), idx->h.chunk_blocks);
  }
  for (uint64_t b = 0, e = 0; b < size / bs; b++) {
    if (e < dests.size() && dests[e] == b) {
      changed.push_back(b);
      e++;
    } else {
      unchanged.push_back(b);
    }
  }
  std::vector<uint8_t> buf(1 << 20);
  auto seq = [&](BlockDevice& d) {
    for (int rep = 0; rep < 3; rep++)
      for (uint64_t off = 0; off < size; off += buf.size())
        (void)d.read(off, std::span<uint8_t>(buf.data(), std::min<uint64_t>(buf.size(), size - off)));
  };
  auto rnd = [&](BlockDevice& d, const std::vector<uint64_t>& blocks, int n) {
    std::mt19937_64 rng(42);
    for (int i = 0; i < n && !blocks.empty(); i++)
      (void)d.read(blocks[rng() % blocks.size()] * bs, std::span<uint8_t>(buf.data(), 4096));
  };
  fmt::print("update target vs the new image file ({} MiB, {} changed blocks, {})\n", size >> 20, changed.size(), desc);
  fmt::print("{:<28} {:>12} {:>12} {:>8}\n", "pattern", "update", "new file", "ratio");
  seq(**t);  // warm both page caches
  seq(**newf);
  double a = timed([&] { seq(**t); }), b = timed([&] { seq(**newf); });
  fmt::print("{:<28} {:>8.0f} MiB/s {:>8.0f} MiB/s {:>7.2f}x\n", "sequential 1 MiB", mibps(3 * size, a),
             mibps(3 * size, b), b / a);
  const int n = 20000;
  for (auto [name, set] : {std::pair{"random 4 KiB, changed", &changed}, std::pair{"random 4 KiB, unchanged", &unchanged}}) {
    a = timed([&] { rnd(**t, *set, n); });
    b = timed([&] { rnd(**newf, *set, n); });
    fmt::print("{:<28} {:>8.0f} IOPS  {:>8.0f} IOPS  {:>7.2f}x\n", name, n / a, n / b, b / a);
  }
  if (version != 1) return 0;
  // Unapplied vs applied: the same random reads over changed blocks, before
  // and after the copy-back.
  double unapplied = timed([&] { rnd(**t, changed, n); });
  *t = nullptr;  // release the no_bg target before the copy-back one
  p.args = {argv[1], argv[2], "0"};
  auto tb = make_update_target(p);
  if (!tb.ok()) return fmt::print(stderr, "{}\n", tb.status().to_string()), 1;
  double copy = timed([&] {
    (*tb)->resume();
    for (;;) {
      auto st = (*tb)->status();
      auto sp = st.find(' ');
      if (st.substr(0, sp) == st.substr(sp + 1)) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  (*tb)->presuspend();
  double applied = timed([&] { rnd(**tb, changed, n); });
  fmt::print("{:<28} {:>8.0f} IOPS unapplied, {:>8.0f} IOPS applied: unapplied/applied {:.2f}x\n",
             "random 4 KiB, changed", n / unapplied, n / applied, applied / unapplied);
  fmt::print("copy-back (incl. flushes and checkpoints): {:.3f} s for {} blocks\n", copy, changed.size());
  std::vector<uint8_t> x(1 << 20), y(1 << 20);
  for (uint64_t off = 0; off < size; off += x.size()) {
    (void)(*tb)->read(off, x);
    (void)(*newf)->read(off, y);
    if (x != y) return fmt::print(stderr, "MISMATCH at {} after the copy-back\n", off), 1;
  }
  fmt::print("after the copy-back the device equals the new image\n");
  return 0;
}
