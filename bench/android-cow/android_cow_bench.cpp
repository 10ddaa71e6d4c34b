// android-cow figures, all measured in one run on the same files:
//  * sequential 1 MiB and random 4 KiB reads through the android-cow view
//    (v3, zstd, 64 KiB units, over a copy of OLD) vs the same reads of the
//    NEW image file (goal >= 0.8x sequential);
//  * the merge (android-cow-apply's loop: batches, flushes, progress record)
//    vs `cp` + `sync` of as many bytes as the merge writes (goal >= 0.5x);
//  * sizes: udm's v3 COW (zstd, 64 KiB units) vs udm's v1 diff vs
//    `zstd -19 --long=27 --patch-from=OLD NEW`; the COW's parts (scratch
//    area, XOR and REPLACE payloads), and the same COW at zstd level 19.
// Usage: android_cow_bench OLD NEW [DIR=/dev/shm] [reps=3]
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>

#include "android_cow/acow_image.h"
#include "android_cow/acow_writer.h"
#include "io/file_device.h"
#include "update/differ.h"

using namespace udm;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }
static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
static uint64_t fsize(const std::string& p) {
  struct stat s;
  return ::stat(p.c_str(), &s) == 0 ? static_cast<uint64_t>(s.st_size) : 0;
}
static uint64_t fallocated(const std::string& p) {
  struct stat s;
  return ::stat(p.c_str(), &s) == 0 ? static_cast<uint64_t>(s.st_blocks) * 512 : 0;
}
static void die(const std::string& m) {
  fmt::print(stderr, "android_cow_bench: {}\n", m);
  std::exit(1);
}
static void sh(const std::string& c) {
  if (std::system(c.c_str()) != 0) die("failed: " + c);
}

int main(int argc, char** argv) {
  if (argc < 3) die("usage: android_cow_bench OLD NEW [DIR=/dev/shm] [reps=3]");
  const std::string old_path = argv[1], new_path = argv[2], dir = argc > 3 ? argv[3] : "/dev/shm";
  const int reps = argc > 4 ? std::atoi(argv[4]) : 3;
  const std::string cow_path = dir + "/acb.cow", base_path = dir + "/acb.base", v1_path = dir + "/acb.v1",
                    zp = dir + "/acb.zpatch";
  acow::WriterOptions o;
  o.version = 3;
  o.compression = acow::Comp::Zstd;
  o.unit = 65536;
  auto t0 = clk::now();
  auto st = acow::make_cow_file(old_path, new_path, cow_path, o);
  if (!st.ok()) die(st.status().to_string());
  const double t_write = secs(t0);
  // The same at zstd level 19 (Android's reader decodes any level).
  acow::WriterOptions o19 = o;
  o19.zstd_level = 19;
  t0 = clk::now();
  auto st19 = acow::make_cow_file(old_path, new_path, cow_path + ".19", o19);
  if (!st19.ok()) die(st19.status().to_string());
  const double t_write19 = secs(t0);
  update::DiffV1Options v1;
  v1.progress = false;
  auto v1s = update::make_diff_v1(old_path, new_path, v1_path, v1);
  if (!v1s.ok()) die(v1s.status().to_string());
  sh(fmt::format("zstd -q -f -19 --long=27 --patch-from={} {} -o {} 2>/dev/null", old_path, new_path, zp));
  const uint64_t img = fsize(new_path), cow_b = fsize(cow_path), v1_b = fsize(v1_path), zp_b = fsize(zp);
  const uint64_t cow_alloc = fallocated(cow_path);

  // Reads.
  sh(fmt::format("cp {} {}", old_path, base_path));
  auto base = FileDevice::open(base_path);
  auto cow = FileDevice::open(cow_path);
  auto nw = FileDevice::open(new_path, {.writable = false});
  if (!base.ok() || !cow.ok() || !nw.ok()) die("open");
  auto img_r = acow::CowImage::open(*cow, img, img, std::nullopt, true);
  if (!img_r.ok()) die(img_r.status().to_string());
  auto& cimg = **img_r;
  std::vector<uint8_t> buf(1 << 20);
  auto seq = [&](auto read) {
    auto t = clk::now();
    for (uint64_t off = 0; off < img; off += buf.size()) read(off, std::span<uint8_t>(buf.data(), std::min<uint64_t>(buf.size(), img - off)));
    return double(img) / secs(t) / 1e6;
  };
  std::mt19937_64 rng(1);
  std::vector<uint64_t> offs(8192);
  for (auto& x : offs) x = rng() % (img / 4096) * 4096;
  auto rnd = [&](auto read) {
    auto t = clk::now();
    for (uint64_t x : offs) read(x, std::span<uint8_t>(buf.data(), 4096));
    return double(offs.size()) / secs(t);
  };
  auto view_read = [&](uint64_t off, std::span<uint8_t> b) {
    if (!cimg.read(**base, off, b).ok()) die("view read");
  };
  auto file_read = [&](uint64_t off, std::span<uint8_t> b) {
    if (!(*nw)->read(off, b).ok()) die("file read");
  };
  const double seq_cold = seq(view_read);
  std::vector<double> sv, sf, rv, rf;
  for (int i = 0; i < reps; i++) {
    sv.push_back(seq(view_read));
    sf.push_back(seq(file_read));
    rv.push_back(rnd(view_read));
    rf.push_back(rnd(file_read));
  }

  // Merge vs cp + sync of the bytes it writes.
  std::vector<double> tm, tc;
  uint64_t merged_bytes = 0, batches = 0;
  for (const auto& op : cimg.file().ops) merged_bytes += op.blocks() * cimg.block_size();
  sh(fmt::format("cp {0} {0}.c", cow_path));  // pristine: the merge records its progress in the COW
  for (int i = 0; i < reps; i++) {
    sh(fmt::format("cp {} {} && cp {}.c {}", old_path, base_path, cow_path, cow_path));
    auto b = FileDevice::open(base_path);
    auto c = FileDevice::open(cow_path);
    auto m = acow::CowImage::open(*c, img, img, std::nullopt, true);
    if (!b.ok() || !c.ok() || !m.ok()) die("merge open");
    auto t = clk::now();
    batches = 0;
    while ((*m)->merged() < (*m)->total()) {
      if (!(*m)->merge_step(**b, **c).ok()) die("merge");
      batches++;
    }
    tm.push_back(secs(t));
    sh(fmt::format("head -c {} {} > {}.src; rm -f {}.dst", merged_bytes, new_path, dir + "/acb", dir + "/acb"));
    t = clk::now();
    sh(fmt::format("cp {0}.src {0}.dst && sync {0}.dst", dir + "/acb"));
    tc.push_back(secs(t));
  }
  {
    auto b = FileDevice::open(base_path);
    std::vector<uint8_t> x(img), y(img);
    if (!(*b)->read(0, x).ok() || !(*nw)->read(0, y).ok() || x != y) die("the merged base is not NEW");
  }
  sh(fmt::format("rm -f {0}.cow {0}.cow.19 {0}.cow.c {0}.base {0}.v1 {0}.zpatch {0}.src {0}.dst", dir + "/acb"));

  fmt::print("image {} MiB; COW v3 zstd 64k written in {:.2f} s: COPY {} XOR {} REPLACE {} ops ({} blocks) ZERO {}\n",
             img >> 20, t_write, st->copy, st->xor_ops, st->replace_ops, st->replace_blocks, st->zero);
  fmt::print("sequential 1 MiB reads: view {:.0f} MB/s (first pass, decoding: {:.0f}), NEW file {:.0f} MB/s: ratio {:.2f}x (goal >= 0.8x)\n",
             median(sv), seq_cold, median(sf), median(sv) / median(sf));
  fmt::print("random 4 KiB reads:     view {:.0f}/s, NEW file {:.0f}/s: ratio {:.2f}x\n", median(rv), median(rf),
             median(rv) / median(rf));
  fmt::print("merge of {} MiB in {} batches: {:.3f} s vs cp+sync of the same bytes {:.3f} s: speed ratio {:.2f}x (goal >= 0.5x)\n",
             merged_bytes >> 20, batches, median(tm), median(tc), median(tc) / median(tm));
  fmt::print("sizes: v3 COW {} bytes, udm v1 diff {} bytes, zstd --patch-from {} bytes: COW/v1 {:.2f}, COW/zstd {:.2f}\n", cow_b,
             v1_b, zp_b, double(cow_b) / double(v1_b), double(cow_b) / double(zp_b));
  fmt::print("v3 COW parts: scratch area {} (zeros), XOR payloads {}, REPLACE payloads {}, the rest (header, sequence, ops) {}\n",
             st->scratch, st->xor_payload, st->replace_payload,
             cow_b - st->scratch - st->xor_payload - st->replace_payload);
  fmt::print("on disk {} bytes allocated (the scratch area is a hole); without the scratch area's zeros: {} bytes: /v1 {:.2f}, /zstd {:.2f}\n", cow_alloc, cow_b - st->scratch,
             double(cow_b - st->scratch) / double(v1_b), double(cow_b - st->scratch) / double(zp_b));
  fmt::print("zstd level 19 (written in {:.2f} s): {} bytes, without scratch {}: /v1 {:.2f}, /zstd {:.2f}\n", t_write19,
             st19->cow_bytes, st19->cow_bytes - st19->scratch, double(st19->cow_bytes - st19->scratch) / double(v1_b),
             double(st19->cow_bytes - st19->scratch) / double(zp_b));
  return 0;
}
