// bow benchmark, two parts, every figure measured in this run:
//
// 1. Throughput: random 4 KiB writes on a half-full device (free space in
//    scattered 256 KiB extents, as a used filesystem's is) in state 1 against
//    the same writes to the same offsets with the device in state 2
//    (pass-through): first writes to in-use blocks (each needs a backup:
//    read, copy, log, two flushes shared by a group commit) and writes to
//    free blocks (no backup). Files on tmpfs, prefilled so no side pays for
//    page allocation; `threads` writers (queue depth, as behind NBD/FUSE).
//
// 2. Space: how many bytes of filesystem-like changes (distinct blocks) fit before space runs
//    out, bow against a dm-snapshot-style COW (udm's snapshot-origin +
//    persistent snapshot, 4 KiB chunks). The "filesystem" allocates new data
//    from its free blocks in a shuffled order and overwrites in-use blocks at
//    random; `new_pct` % of the changes are new data. bow stops at ENOSPC or
//    when the filesystem has no free block left; the snapshot stops when it
//    becomes Invalid or the filesystem is full. Two COW placements:
//      a) COW file *inside* the filesystem's free space (Mikulas's FIEMAP
//         proposal), sized to half of it (the seed's assumption);
//      b) COW on separate storage pre-sized to the whole free space (the
//         filesystem keeps all of its free space: twice the storage bow uses).
//
// Usage: bow_bench [DIR=/dev/shm] [MiB=512] [threads=4] [writes=20000] [new_pct=50]
// (environment UDM_BOW_BENCH=throughput or =space: that part only)
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <random>
#include <thread>

#include "bow/bow_target.h"
#include "io/file_device.h"
#include "io/memory_device.h"
#include "snapshot/snapshot.h"

using namespace udm;
using namespace udm::bow;
using clk = std::chrono::steady_clock;

namespace {

constexpr uint32_t kBs = 4096;
constexpr uint64_t kExtent = 64;  // blocks per free/in-use extent (256 KiB)

bool is_free_block(uint64_t b) { return b > 0 && (b / kExtent) % 2 == 1; }

std::shared_ptr<BowTarget> fresh_bow(DevicePtr file, uint64_t size, int state) {
  auto t = BowTarget::create(file, size, {}).value();
  for (uint64_t e = 1; e * kExtent < size / kBs; e += 2)
    if (!t->trim(e * kExtent * kBs, kExtent * kBs).ok()) abort();
  if (state >= 1 && !t->set_state(1).ok()) abort();
  if (state >= 2 && !t->set_state(2).ok()) abort();
  return t;
}

// CPU time of the whole process (writers and the committer), seconds.
double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Writes/s; the process CPU time per write (µs) is appended to *cpu.
double run_writes(BlockDevice& d, const std::vector<uint64_t>& blocks, int threads, std::vector<double>* cpu) {
  std::vector<std::thread> ts;
  std::atomic<bool> bad{false};
  const double c0 = cpu_now();
  auto t0 = clk::now();
  for (int k = 0; k < threads; k++)
    ts.emplace_back([&, k] {
      std::vector<uint8_t> buf(kBs, static_cast<uint8_t>(k + 1));
      for (size_t i = k; i < blocks.size(); i += threads)
        if (!d.write(blocks[i] * kBs, buf).ok()) bad = true;
    });
  for (auto& t : ts) t.join();
  if (!d.flush().ok()) bad = true;
  double s = std::chrono::duration<double>(clk::now() - t0).count();
  cpu->push_back((cpu_now() - c0) * 1e6 / blocks.size());
  if (bad) {
    fmt::print(stderr, "bow_bench: a write failed\n");
    exit(1);
  }
  return blocks.size() / s;
}

std::vector<uint64_t> pick(uint64_t nblocks, size_t n, bool free, uint64_t seed) {
  std::vector<uint64_t> all;
  for (uint64_t b = 1; b < nblocks; b++)
    if (is_free_block(b) == free) all.push_back(b);
  std::shuffle(all.begin(), all.end(), std::mt19937_64(seed));
  all.resize(std::min(n, all.size()));
  return all;
}

void throughput(const std::string& dir, uint64_t mib, int threads, size_t writes) {
  uint64_t size = mib << 20, nblocks = size / kBs;
  std::string path = dir + "/udm-bow-bench.img";
  auto file = FileDevice::open(path, {.writable = true, .create = true, .create_size = size}).value();
  {
    std::vector<uint8_t> buf(1 << 20, 0x5a);
    for (uint64_t off = 0; off < size; off += buf.size())
      if (!file->write(off, buf).ok()) abort();
    if (!file->flush().ok()) abort();
  }
  fmt::print("throughput: {} MiB device on {}, half free in {} KiB extents, {} random 4 KiB "
             "writes, {} thread(s), medians of 3\n",
             mib, dir, kExtent * kBs / 1024, writes, threads);
  for (bool to_free : {false, true}) {
    std::vector<double> r1, r2, c1, c2;
    for (int rep = 0; rep < 3; rep++) {
      auto blocks = pick(nblocks, writes, to_free, rep);
      {
        auto t = fresh_bow(file, size, 1);
        r1.push_back(run_writes(*t, blocks, threads, &c1));
        if (rep == 0 && !to_free)
          fmt::print("  ({} log entries written in {} group commits)\n", t->stats().entries,
                     t->stats().batches);
        if (!t->set_state(2).ok()) abort();
      }
      {
        auto t = fresh_bow(file, size, 2);
        r2.push_back(run_writes(*t, blocks, threads, &c2));
      }
    }
    for (auto* v : {&r1, &r2, &c1, &c2}) std::sort(v->begin(), v->end());
    double a = r1[1], b = r2[1];
    fmt::print("  {:<34} state 1: {:>9.0f} writes/s   state 2: {:>9.0f} writes/s   ratio {:.2f}x "
               "(goal >= {})\n",
               to_free ? "writes to free blocks" : "first writes to in-use blocks", a, b, a / b,
               to_free ? "0.9" : "0.5");
    fmt::print("  {:<34} cpu: state 1 {:.2f} us/write, state 2 {:.2f} us/write\n", "", c1[1], c2[1]);
  }
  ::unlink(path.c_str());
}

// --- space ---

class MapResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool) override { return devs.at(spec); }
};

struct FsSim {
  std::vector<uint64_t> free_list;  // the filesystem's free blocks, allocation order
  size_t next = 0;
  std::vector<uint64_t> in_use;
  std::mt19937_64 g{5};
  // Next change: a block to write, or nullopt if the filesystem is full.
  std::optional<uint64_t> next_change(int new_pct) {
    if (static_cast<int>(g() % 100) < new_pct) {
      if (next == free_list.size()) return std::nullopt;
      uint64_t b = free_list[next++];
      in_use.push_back(b);
      return b;
    }
    return in_use[g() % in_use.size()];
  }
};

FsSim make_fs(uint64_t nblocks, const std::set<uint64_t>& reserved) {
  FsSim fs;
  for (uint64_t b = 1; b < nblocks; b++) {
    if (reserved.count(b)) continue;
    if (is_free_block(b)) fs.free_list.push_back(b);
    else fs.in_use.push_back(b);
  }
  std::shuffle(fs.free_list.begin(), fs.free_list.end(), std::mt19937_64(3));
  return fs;
}

uint64_t space_bow(uint64_t nblocks, int new_pct) {
  auto dev = std::make_shared<MemoryDevice>(nblocks * kBs);
  auto t = fresh_bow(dev, nblocks * kBs, 1);
  FsSim fs = make_fs(nblocks, {});
  std::vector<uint8_t> buf(kBs, 1);
  std::vector<bool> changed(nblocks);
  uint64_t bytes = 0;
  while (auto b = fs.next_change(new_pct)) {
    if (!t->write(*b * kBs, buf).ok()) break;
    if (!changed[*b]) bytes += kBs;
    changed[*b] = true;
  }
  return bytes;
}

// cow_inside: the COW takes `cow_blocks` of the filesystem's free blocks.
uint64_t space_snapshot(uint64_t nblocks, uint64_t cow_blocks, bool cow_inside, int new_pct) {
  MapResolver r;
  auto origin = std::make_shared<MemoryDevice>(nblocks * kBs);
  auto cow = std::make_shared<MemoryDevice>(cow_blocks * kBs);
  r.devs["origin"] = origin;
  r.devs["cow"] = cow;
  TargetParams p;
  p.length = nblocks * kBs;
  p.resolver = &r;
  p.type = "snapshot-origin";
  p.args = {"origin"};
  auto o = snapshot::make_origin_target(p).value();
  p.type = "snapshot";
  p.args = {"origin", "cow", "P", "8"};
  auto s = snapshot::make_snapshot_target(p).value();
  o->resume();
  s->resume();
  std::set<uint64_t> reserved;
  if (cow_inside) {
    for (uint64_t b = 1; b < nblocks && reserved.size() < cow_blocks; b++)
      if (is_free_block(b)) reserved.insert(b);
  }
  FsSim fs = make_fs(nblocks, reserved);
  std::vector<uint8_t> buf(kBs, 1);
  std::vector<bool> changed(nblocks);
  uint64_t bytes = 0;
  while (auto b = fs.next_change(new_pct)) {
    if (!o->write(*b * kBs, buf).ok()) break;
    if (s->status().find("Invalid") != std::string::npos) break;
    if (!changed[*b]) bytes += kBs;
    changed[*b] = true;
  }
  return bytes;
}

void space(uint64_t mib, int new_pct) {
  uint64_t nblocks = (mib << 20) / kBs;
  uint64_t free_blocks = 0;
  for (uint64_t b = 1; b < nblocks; b++) free_blocks += is_free_block(b);
  fmt::print("space: {} MiB filesystem, {} MiB free, {}% of changes are new data, the rest "
             "overwrites\n",
             mib, free_blocks * kBs >> 20, new_pct);
  uint64_t bow = space_bow(nblocks, new_pct);
  uint64_t inside = space_snapshot(nblocks, free_blocks / 2, true, new_pct);
  uint64_t outside = space_snapshot(nblocks, free_blocks, false, new_pct);
  fmt::print("  bow (backups in the free space):                 {:>8.1f} MiB of changes\n",
             bow / 1048576.0);
  fmt::print("  snapshot, COW file = half the free space (FIEMAP): {:>6.1f} MiB   bow/snapshot "
             "{:.2f}x\n",
             inside / 1048576.0, double(bow) / inside);
  fmt::print("  snapshot, separate COW = all the free space:       {:>6.1f} MiB   bow/snapshot "
             "{:.2f}x (the snapshot uses twice the storage)\n",
             outside / 1048576.0, double(bow) / outside);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : "/dev/shm";
  uint64_t mib = argc > 2 ? std::stoull(argv[2]) : 512;
  int threads = argc > 3 ? std::stoi(argv[3]) : 4;
  size_t writes = argc > 4 ? std::stoull(argv[4]) : 20000;
  int new_pct = argc > 5 ? std::stoi(argv[5]) : 50;
  // UDM_BOW_BENCH=throughput|space runs one part only (for profiling).
  const char* part = getenv("UDM_BOW_BENCH");
  const std::string only = part ? part : "";
  if (only != "space") {
    throughput(dir, mib, 1, writes);
    if (threads != 1) throughput(dir, mib, threads, writes);
  }
  if (only != "throughput")
    for (int p : {0, new_pct, 100}) space(std::min<uint64_t>(mib, 128), p);
  return 0;
}
