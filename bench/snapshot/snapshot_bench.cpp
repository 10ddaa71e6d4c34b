// Random 4 KiB writes through snapshot-origin with a snapshot attached vs the
// plain origin file (first writes and rewrites), and merge vs cp of the same
// bytes; files on tmpfs. Usage: snapshot_bench [DIR=/dev/shm] [MiB=1024] [chunk_sectors=8]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <unistd.h>

#include "io/file_device.h"
#include "io/path_resolver.h"
#include "snapshot/snapshot.h"

using namespace udm;
using namespace udm::snapshot;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : "/dev/shm";
  uint64_t mib = argc > 2 ? std::stoull(argv[2]) : 1024;
  uint32_t cs = argc > 3 ? std::stoul(argv[3]) : 8;
  uint64_t size = mib << 20, nw = size / 4096 / 8;  // writes cover 1/8 of the blocks
  std::string o = dir + "/udm_snapbench_origin." + std::to_string(getpid());
  std::string c = dir + "/udm_snapbench_cow." + std::to_string(getpid());
  std::string r = dir + "/udm_snapbench_ref." + std::to_string(getpid());
  auto od = FileDevice::open(o, {.writable = true, .create = true, .create_size = size});
  auto cd = FileDevice::open(c, {.writable = true, .create = true, .create_size = size});
  if (!od.ok() || !cd.ok()) return fprintf(stderr, "open failed\n"), 1;
  std::vector<uint8_t> buf(4096, 0x5a);
  std::mt19937_64 rng(1);
  std::vector<uint64_t> offs(nw);
  for (auto& x : offs) x = (rng() % (size / 4096)) * 4096;
  // Baseline: plain file.
  auto t = clk::now();
  for (auto x : offs) (void)(*od)->write(x, buf);
  (void)(*od)->flush();
  double plain = nw / secs(t);
  PathResolver pr;
  TargetParams p;
  p.type = "snapshot-origin"; p.args = {o}; p.length = size; p.resolver = &pr;
  auto ot = make_origin_target(p);
  p.type = "snapshot"; p.args = {o, c, "P", std::to_string(cs)};
  auto st = make_snapshot_target(p);
  if (!ot.ok() || !st.ok()) return fprintf(stderr, "target: %s\n", st.status().to_string().c_str()), 1;
  (*ot)->resume(); (*st)->resume();
  t = clk::now();
  for (auto x : offs) (void)(*ot)->write(x, buf);
  (void)(*ot)->flush();
  double first = nw / secs(t);
  t = clk::now();
  for (auto x : offs) (void)(*ot)->write(x, buf);
  (void)(*ot)->flush();
  double again = nw / secs(t);
  std::string status = (*st)->status();
  st->reset(); ot->reset();
  // Merge vs cp of the COW's used bytes.
  auto m = open_offline_merge(o, c, 0);
  if (!m.ok()) return fprintf(stderr, "merge: %s\n", m.status().to_string().c_str()), 1;
  uint64_t n = (*m)->remaining(), bytes = n * cs * 512ull;
  t = clk::now();
  (void)(*m)->run_merge();
  double merge = bytes / secs(t) / 1048576;
  m->reset();
  t = clk::now();
  std::string cmd = "head -c " + std::to_string(bytes) + " " + c + " > " + r + " && cp " + r + " " + r + "2";
  auto t2 = clk::now();
  (void)system(("head -c " + std::to_string(bytes) + " " + c + " > " + r).c_str());
  t2 = clk::now();
  (void)system(("cp " + r + " " + r + "2 && sync " + r + "2").c_str());
  double cp = bytes / secs(t2) / 1048576;
  printf("origin %llu MiB, chunk %u sectors, %llu random 4 KiB writes; snapshot status %s\n",
         (unsigned long long)mib, cs, (unsigned long long)nw, status.c_str());
  printf("plain file      %10.0f writes/s\n", plain);
  printf("first writes    %10.0f writes/s  ratio %.2f (goal >= 0.5)\n", first, first / plain);
  printf("rewrites        %10.0f writes/s  ratio %.2f (goal >= 0.9)\n", again, again / plain);
  printf("merge %llu exceptions %8.1f MiB/s; cp same bytes %8.1f MiB/s  ratio %.2f (goal >= 0.7)\n",
         (unsigned long long)n, merge, cp, merge / cp);
  unlink(o.c_str()); unlink(c.c_str()); unlink(r.c_str()); unlink((r + "2").c_str());
}
