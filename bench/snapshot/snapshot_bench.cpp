// Random 4 KiB writes through snapshot-origin with a persistent snapshot
// attached vs the same writes to the plain origin file (first writes after
// the snapshot was taken, then rewrites of the same blocks), and the merge
// vs `cp` of the same number of bytes. Every figure is measured in this run,
// on the same files, and repeated; medians are printed.
//
// Fairness: the origin and COW files are filled completely (twice) before
// anything is timed, so every side writes into allocated pages that are
// already on the active LRU list (a fresh tmpfs file would charge page
// allocation, and a page's second touch its LRU activation, to whoever writes
// first). A new snapshot is made by zeroing the COW's header chunk (the rest
// stays allocated). The merge is compared with `cp` into a new file (what
// the goal names) and with a copy of the same bytes into an allocated file
// (dd conv=notrunc, which is what the merge does to the origin), and with
// its floor: the merged chunks written to their scattered places in the
// origin and one flush, which any merge must do at least.
// `threads` writers split the offsets (the same split for the baseline), so
// threads > 1 shows what group commit gives when writes are in flight
// together, as they are behind the FUSE/NBD exports.
//
// Usage: snapshot_bench [DIR=/dev/shm] [MiB=1024] [chunk_sectors=8] [threads=1] [reps=3] [zero]
//
// With "zero" as the sixth argument it measures zero-outs instead (see
// run_zero): write_zeroes through snapshot-origin and snapshot against
// writing zero buffers through them, and against the plain origin file.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <thread>

#include "io/file_device.h"
#include "io/resolver.h"
#include "snapshot/snapshot.h"

using namespace udm;
using namespace udm::snapshot;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) {
  return std::chrono::duration<double>(clk::now() - a).count();
}

// CPU time of the whole process (every thread: writers, committers), seconds.
static double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Byte i of the prefill pattern of a file.
static void pattern(uint8_t* p, uint64_t off, size_t n, uint64_t salt) {
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = ((off + i) / 8) * 0x9E3779B97F4A7C15ull ^ salt;
    memcpy(p + i, &v, 8);
  }
}

static bool fill(BlockDevice& d, uint64_t salt) {
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < d.size(); off += buf.size()) {
    size_t n = std::min<uint64_t>(buf.size(), d.size() - off);
    pattern(buf.data(), off, n, salt);
    if (!d.write(off, std::span<const uint8_t>(buf.data(), n)).ok()) return false;
  }
  return d.flush().ok();
}

static bool check(BlockDevice& d, uint64_t salt) {
  std::vector<uint8_t> buf(1 << 20), want(1 << 20);
  for (uint64_t off = 0; off < d.size(); off += buf.size()) {
    size_t n = std::min<uint64_t>(buf.size(), d.size() - off);
    pattern(want.data(), off, n, salt);
    if (!d.read(off, std::span<uint8_t>(buf.data(), n)).ok()) return false;
    if (memcmp(buf.data(), want.data(), n) != 0) return false;
  }
  return true;
}

// Writes offs split over `threads` threads, then flushes; writes/s. The
// process CPU time per write (µs) is appended to *cpu.
static double run_writes(BlockDevice& d, const std::vector<uint64_t>& offs, int threads,
                         uint8_t fillbyte, bool* ok, std::vector<double>* cpu) {
  std::vector<std::thread> ts;
  std::atomic<bool> good{true};
  const double c0 = cpu_now();
  auto t = clk::now();
  for (int k = 0; k < threads; k++) {
    ts.emplace_back([&, k] {
      std::vector<uint8_t> buf(4096, fillbyte);
      for (size_t i = k; i < offs.size(); i += threads)
        if (!d.write(offs[i], buf).ok()) good = false;
    });
  }
  for (auto& th : ts) th.join();
  if (!d.flush().ok()) good = false;
  double r = offs.size() / secs(t);
  cpu->push_back((cpu_now() - c0) * 1e6 / offs.size());
  if (!good) *ok = false;
  return r;
}

// Zero-out mode: a fresh snapshot; then, each over its own 1/16 of the
// device in 1 MiB requests (the FUSE export hands the targets the loop
// driver's discard/zero-out ranges the same way):
//   origin write_zeroes(may_unmap) over chunks the snapshot has not saved;
//   origin writes of zero buffers over other unsaved chunks (what a
//   zero-out cost when it fell back to zero buffers);
//   snapshot write_zeroes over chunks without an exception (origin bytes
//   not zero: exceptions are created), again over the same chunks (they
//   have exceptions now), and snapshot writes of zero buffers;
//   write_zeroes(may_unmap) on the plain origin file (fallocate).
// Between repetitions the snapshot is merged back and both files refilled.
static int run_zero(BlockDevice& od, BlockDevice& cd, const std::string& o, const std::string& c,
                    uint64_t size, uint32_t cs, int reps, uint64_t salt_o, uint64_t salt_c) {
  const uint64_t z = size / 16, req = 1 << 20;
  Resolver pr;
  std::vector<double> oz, ozb, sz, sz2, szb, pz;
  bool ok = true;
  auto mibs = [&](clk::time_point t) { return z / secs(t) / 1048576; };
  auto zero_range = [&](BlockDevice& d, uint64_t start, bool as_writes) {
    static const std::vector<uint8_t> zeros(1 << 20, 0);
    auto t = clk::now();
    for (uint64_t off = start; off < start + z; off += req) {
      Status st = as_writes ? d.write(off, std::span<const uint8_t>(zeros.data(), req))
                            : d.write_zeroes(off, req, false, true);
      if (!st.ok()) ok = false;
    }
    if (!d.flush().ok()) ok = false;
    return mibs(t);
  };
  for (int rep = 0; rep < reps && ok; rep++) {
    std::vector<uint8_t> zero(uint64_t(cs) * 512, 0);
    if (!cd.write(0, zero).ok() || !cd.flush().ok()) ok = false;
    TargetParams p;
    p.type = "snapshot-origin";
    p.args = {o};
    p.length = size;
    p.resolver = &pr;
    auto ot = make_origin_target(p);
    p.type = "snapshot";
    p.args = {o, c, "P", std::to_string(cs)};
    auto st = make_snapshot_target(p);
    if (!ot.ok() || !st.ok()) return fprintf(stderr, "target failed\n"), 1;
    (*ot)->resume();
    (*st)->resume();
    oz.push_back(zero_range(**ot, 0, false));
    ozb.push_back(zero_range(**ot, z, true));
    sz.push_back(zero_range(**st, 2 * z, false));
    sz2.push_back(zero_range(**st, 2 * z, false));
    szb.push_back(zero_range(**st, 3 * z, true));
    st->reset();
    ot->reset();
    pz.push_back(zero_range(od, 4 * z, false));
    auto m = open_offline_merge(o, c, 0);
    if (!m.ok() || !(*m)->run_merge().ok()) ok = false;
    m->reset();
    if (!fill(od, salt_o) || !fill(cd, salt_c)) ok = false;
  }
  if (!ok) return fprintf(stderr, "an I/O failed\n"), 1;
  printf("zero-outs, %llu MiB each in 1 MiB requests, chunk %u sectors, median of %d (MiB/s)\n",
         (unsigned long long)(z >> 20), cs, reps);
  printf("origin write_zeroes, unsaved chunks   %8.1f\n", median(oz));
  printf("origin zero buffers, unsaved chunks   %8.1f  (write_zeroes %.2fx)\n", median(ozb),
         median(oz) / median(ozb));
  printf("snapshot write_zeroes, new chunks     %8.1f\n", median(sz));
  printf("snapshot write_zeroes, own chunks     %8.1f\n", median(sz2));
  printf("snapshot zero buffers, new chunks     %8.1f  (write_zeroes %.2fx)\n", median(szb),
         median(sz) / median(szb));
  printf("plain origin file write_zeroes        %8.1f\n", median(pz));
  return 0;
}

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : "/dev/shm";
  uint64_t mib = argc > 2 ? std::stoull(argv[2]) : 1024;
  uint32_t cs = argc > 3 ? std::stoul(argv[3]) : 8;
  int threads = argc > 4 ? std::stoi(argv[4]) : 1;
  int reps = argc > 5 ? std::stoi(argv[5]) : 3;
  const uint64_t size = mib << 20, nw = size / 4096 / 8;  // writes cover 1/8 of the blocks
  const uint64_t cb = uint64_t(cs) * 512;
  std::string tag = std::to_string(getpid());
  std::string o = dir + "/udm_snapbench_origin." + tag, c = dir + "/udm_snapbench_cow." + tag;
  std::string r = dir + "/udm_snapbench_ref." + tag;
  auto od = FileDevice::open(o, {.writable = true, .create = true, .create_size = size});
  auto cd = FileDevice::open(c, {.writable = true, .create = true, .create_size = size});
  if (!od.ok() || !cd.ok()) return fprintf(stderr, "open failed\n"), 1;
  const uint64_t kOriginSalt = 0x1111, kCowSalt = 0x2222;
  for (int pass = 0; pass < 2; pass++)
    if (!fill(**od, kOriginSalt) || !fill(**cd, kCowSalt)) return fprintf(stderr, "fill failed\n"), 1;
  if (argc > 6 && std::string(argv[6]) == "zero") {
    int rc = run_zero(**od, **cd, o, c, size, cs, reps, kOriginSalt, kCowSalt);
    unlink(o.c_str());
    unlink(c.c_str());
    return rc;
  }
  // Distinct random blocks.
  std::vector<uint64_t> offs(size / 4096);
  for (uint64_t i = 0; i < offs.size(); i++) offs[i] = i * 4096;
  std::mt19937_64 rng(1);
  std::shuffle(offs.begin(), offs.end(), rng);
  offs.resize(nw);

  std::vector<double> plain, first, again, merge, cp, cpa, floor_mibs;
  std::vector<double> plain_cpu, first_cpu, again_cpu, merge_cpu;  // µs per write, ms per MiB
  std::vector<double> first_wb, again_wb, first_wb_cpu, again_wb_cpu;  // snapshot-origin with writeback
  std::string status_wb;
  uint64_t exceptions = 0, merged_bytes = 0;
  std::string status;
  bool ok = true, verified = true;
  Resolver pr;
  // A new snapshot (the COW's header chunk zeroed, the rest stays allocated)
  // and its origin target, both resumed; nulls after printing why not.
  auto new_snapshot = [&](bool writeback) -> std::pair<TargetPtr, TargetPtr> {
    std::vector<uint8_t> zero(cb, 0);
    if (!(*cd)->write(0, zero).ok() || !(*cd)->flush().ok()) ok = false;
    TargetParams p;
    p.type = "snapshot-origin";
    p.args = writeback ? std::vector<std::string>{o, "1", "writeback"} : std::vector<std::string>{o};
    p.length = size;
    p.resolver = &pr;
    auto ot = make_origin_target(p);
    p.type = "snapshot";
    p.args = {o, c, "P", std::to_string(cs)};
    auto st = make_snapshot_target(p);
    if (!ot.ok() || !st.ok()) {
      fprintf(stderr, "target: %s\n", (ot.ok() ? st.status() : ot.status()).to_string().c_str());
      return {};
    }
    (*ot)->resume();
    (*st)->resume();
    return {*ot, *st};
  };
  for (int rep = 0; rep < reps && ok; rep++) {
    // Baseline: the same writes to the plain (allocated) origin file; then
    // put the origin back to its pattern (untimed).
    plain.push_back(run_writes(**od, offs, threads, 0x5a, &ok, &plain_cpu));
    if (!fill(**od, kOriginSalt)) ok = false;
    // A new snapshot with a writeback origin: first writes held and
    // drained in group commits (the flush at the end included), then
    // merged back untimed.
    {
      auto [ot, st] = new_snapshot(true);
      if (!ot || !st) return 1;
      first_wb.push_back(run_writes(*ot, offs, threads, 0x5d, &ok, &first_wb_cpu));
      again_wb.push_back(run_writes(*ot, offs, threads, 0x5e, &ok, &again_wb_cpu));
      status_wb = ot->status();
      st.reset();
      ot.reset();
      auto m = open_offline_merge(o, c, 0);
      if (!m.ok() || !(*m)->run_merge().ok()) return fprintf(stderr, "merge after the writeback round failed\n"), 1;
      m->reset();
      verified = verified && check(**od, kOriginSalt);
    }
    auto [ot, st] = new_snapshot(false);
    if (!ot || !st) return 1;
    first.push_back(run_writes(*ot, offs, threads, 0x5b, &ok, &first_cpu));
    again.push_back(run_writes(*ot, offs, threads, 0x5c, &ok, &again_cpu));
    status = st->status();
    st.reset();
    ot.reset();
    // Merge back (the origin must read as its pattern again).
    auto m = open_offline_merge(o, c, 0);
    if (!m.ok()) return fprintf(stderr, "merge: %s\n", m.status().to_string().c_str()), 1;
    exceptions = (*m)->remaining();
    merged_bytes = exceptions * cb;
    const double mc0 = cpu_now();
    auto t = clk::now();
    if (!(*m)->run_merge().ok()) ok = false;
    merge.push_back(merged_bytes / secs(t) / 1048576);
    merge_cpu.push_back((cpu_now() - mc0) * 1e3 / (double(merged_bytes) / 1048576));
    m->reset();
    verified = verified && check(**od, kOriginSalt);
    // cp of the same number of bytes (a file made from the COW's head),
    // into a new file, then sync.
    (void)unlink((r + "2").c_str());
    if (system(("head -c " + std::to_string(merged_bytes) + " " + c + " > " + r).c_str()) != 0)
      ok = false;
    t = clk::now();
    if (system(("cp " + r + " " + r + "2 && sync " + r + "2").c_str()) != 0) ok = false;
    cp.push_back(merged_bytes / secs(t) / 1048576);
    // The same bytes into the (allocated, active) new file again.
    (void)system(("cat " + r + "2 > /dev/null").c_str());
    t = clk::now();
    if (system(("dd if=" + r + " of=" + r + "2 bs=128K conv=notrunc status=none && sync " + r +
                "2").c_str()) != 0)
      ok = false;
    cpa.push_back(merged_bytes / secs(t) / 1048576);
    // The least any merge must do on this storage: the merged chunks
    // written back to their places in the origin (scattered), then one
    // flush. Their own bytes (read first, untimed), so the origin is
    // unchanged.
    {
      std::vector<uint64_t> chunks;
      for (uint64_t off : offs) chunks.push_back(off / cb * cb);
      std::sort(chunks.begin(), chunks.end());
      chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
      std::shuffle(chunks.begin(), chunks.end(), rng);
      std::vector<uint8_t> data(chunks.size() * cb);
      for (size_t k = 0; k < chunks.size(); k++)
        if (!(*od)->read(chunks[k], std::span<uint8_t>(data).subspan(k * cb, cb)).ok()) ok = false;
      t = clk::now();
      for (size_t k = 0; k < chunks.size(); k++)
        if (!(*od)->write(chunks[k], std::span<const uint8_t>(data).subspan(k * cb, cb)).ok()) ok = false;
      if (!(*od)->flush().ok()) ok = false;
      floor_mibs.push_back(double(chunks.size() * cb) / secs(t) / 1048576);
    }
  }
  unlink(o.c_str());
  unlink(c.c_str());
  unlink(r.c_str());
  unlink((r + "2").c_str());
  if (!ok) return fprintf(stderr, "an I/O failed\n"), 1;
  double P = median(plain), F = median(first), A = median(again), M = median(merge),
         C = median(cp), CA = median(cpa);
  printf("origin %llu MiB on %s, chunk %u sectors, %llu random distinct 4 KiB writes, %d thread(s), "
         "median of %d\n",
         (unsigned long long)mib, dir.c_str(), cs, (unsigned long long)nw, threads, reps);
  printf("snapshot status after the writes: %s; %llu exceptions\n", status.c_str(),
         (unsigned long long)exceptions);
  printf("plain file      %10.0f writes/s  cpu %.2f us/write\n", P, median(plain_cpu));
  printf("first writes    %10.0f writes/s  ratio %.2f (goal >= 0.5)  cpu %.2f us/write\n", F, F / P,
         median(first_cpu));
  printf("rewrites        %10.0f writes/s  ratio %.2f (goal >= 0.9)  cpu %.2f us/write\n", A, A / P,
         median(again_cpu));
  printf("first writes, writeback origin %10.0f writes/s  ratio %.2f (goal >= 0.5)  cpu %.2f us/write\n",
         median(first_wb), median(first_wb) / P, median(first_wb_cpu));
  printf("rewrites, writeback origin     %10.0f writes/s  ratio %.2f  cpu %.2f us/write\n", median(again_wb),
         median(again_wb) / P, median(again_wb_cpu));
  printf("writeback origin status after its rewrites: %s\n", status_wb.c_str());
  printf("merge           %10.1f MiB/s (%llu MiB)%s  cpu %.2f ms/MiB\n", M,
         (unsigned long long)(merged_bytes >> 20),
         verified ? ", origin verified after every merge" : ", ORIGIN WRONG AFTER MERGE", median(merge_cpu));
  printf("cp, new file    %10.1f MiB/s  merge ratio %.2f (goal >= 0.7)\n", C, M / C);
  printf("dd, allocated   %10.1f MiB/s  merge ratio %.2f\n", CA, M / CA);
  printf("the floor       %10.1f MiB/s  merge ratio %.2f, cp ratio %.2f (the merged chunks written in place, "
         "scattered, + one flush)\n",
         median(floor_mibs), M / median(floor_mibs), median(floor_mibs) / C);
  return verified ? 0 : 1;
}
