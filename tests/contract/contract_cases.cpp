#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

#include <atomic>
#include <chrono>
#include <random>
#include <set>
#include <thread>

#include "contract/contract_util.h"
#include "android_cow/acow_writer.h"
#include "io/fault_device.h"
#include "io/file_device.h"
#include "io/memory_device.h"
#include "io/grow_file.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/writer.h"
#include "update/differ.h"
#include "verity/format.h"

namespace udm::contract {

using udm::test::random_bytes;

Result<DevicePtr> TestResolver::open(const std::string& spec, bool) {
  auto it = devs.find(spec);
  if (it == devs.end()) return Status::Error(ENXIO, "no device " + spec);
  return it->second;
}

static std::atomic<int> g_env_seq{0};

// Backing files are written sparse: all-zero 4 KiB blocks stay holes (on
// file systems that keep holes), so targets that pass allocation down have
// holes to pass.
static void write_sparse(const std::string& p, const std::vector<uint8_t>& init) {
  udm::test::make_sparse_file(p, init.size());
  int fd = ::open(p.c_str(), O_WRONLY);
  if (fd < 0) throw std::runtime_error("open " + p);
  for (uint64_t o = 0; o < init.size(); o += 4096) {
    uint64_t n = std::min<uint64_t>(4096, init.size() - o);
    if (std::all_of(init.begin() + o, init.begin() + o + n, [](uint8_t v) { return v == 0; })) continue;
    if (::pwrite(fd, init.data() + o, n, static_cast<off_t>(o)) != static_cast<ssize_t>(n)) {
      ::close(fd);
      throw std::runtime_error("write " + p);
    }
  }
  ::close(fd);
}

Env::Env(bool files) : files_(files), uniq_(fmt::format("c{}-", g_env_seq++)) {}

Env::~Env() {
  while (!devs_.empty()) {
    res_.devs.erase(devs_.back().first);
    devs_.pop_back();
  }
  res_.devs.clear();
}

std::unique_ptr<Env> Env::faulty() {
  auto e = std::make_unique<Env>(false);
  e->fault_ = true;
  return e;
}

void Env::cut_power() {
  for (auto& [n, d] : faults_) static_cast<FaultDevice&>(*d).power_cut();
}

std::unique_ptr<Env> Env::reboot() const {
  auto e = std::make_unique<Env>(false);
  e->uniq_ = uniq_;
  for (auto& [n, d] : faults_) e->images_[n] = static_cast<FaultDevice&>(*d).durable_image();
  return e;
}

std::string Env::backing(const std::string& name, const std::vector<uint8_t>& init) {
  if (auto it = images_.find(name); it != images_.end())
    return add(name, std::make_shared<MemoryDevice>(it->second));
  if (fault_) {
    auto d = std::make_shared<FaultDevice>(init);
    faults_[name] = d;
    return add(name, d);
  }
  if (files_) {
    std::string p = path(name);
    write_sparse(p, init);
    auto f = FileDevice::open(p, {.writable = true});
    if (!f.ok()) return "";
    res_.devs[p] = *f;
    return p;
  }
  return add(name, std::make_shared<MemoryDevice>(init));
}

std::string Env::add(const std::string& name, DevicePtr dev) {
  std::string spec = uniq_ + name;
  res_.devs[spec] = std::move(dev);
  return spec;
}

Result<MappedDevicePtr> Env::make(const std::string& name, const std::string& table) {
  UDM_ASSIGN_OR_RETURN(TableSpec spec, parse_table(table));
  std::string full = uniq_ + name;
  UDM_ASSIGN_OR_RETURN(auto t, Table::build(spec, res_, TargetRegistry::builtin(), full));
  auto dev = std::make_shared<MappedDevice>(full, std::move(t));
  devs_.push_back({full, dev});
  res_.devs[full] = dev;
  return dev;
}

void Env::drop(const std::string& name) {
  std::string full = uniq_ + name;
  res_.devs.erase(full);
  for (auto it = devs_.begin(); it != devs_.end(); ++it)
    if (it->first == full) {
      devs_.erase(it);
      return;
    }
}

namespace {

const uint64_t kSectors = kDevSize / 512;

// Forwards to another device; every write-type call sleeps first, so a
// background job over it (a merge) is still running while the suite works.
class SlowDevice : public BlockDevice {
 public:
  SlowDevice(DevicePtr d, int us) : d_(std::move(d)), us_(us) {}
  uint64_t size() const override { return d_->size(); }
  DeviceCaps caps() const override { return d_->caps(); }

 protected:
  Status do_read(uint64_t o, std::span<uint8_t> b) override { return d_->read(o, b); }
  Status do_write(uint64_t o, std::span<const uint8_t> b, bool fua) override {
    usleep(us_);
    return d_->write(o, b, fua);
  }
  Status do_trim(uint64_t o, uint64_t l) override { return d_->trim(o, l); }
  Status do_write_zeroes(uint64_t o, uint64_t l, bool fua, bool unmap) override {
    usleep(us_);
    return d_->write_zeroes(o, l, fua, unmap);
  }
  Status do_flush() override { return d_->flush(); }
  Status do_allocation(uint64_t o, uint64_t l, AllocMap& out) override { return d_->allocation(o, l, out); }

 private:
  DevicePtr d_;
  int us_;
};

Built mk(MappedDevicePtr d, Kind k, std::vector<uint8_t> expect = {}) {
  Built b;
  b.dev = std::move(d);
  b.kind = k;
  b.expect = std::move(expect);
  return b;
}

std::vector<uint8_t> read_all(BlockDevice& d) {
  std::vector<uint8_t> v(d.size());
  if (!d.read(0, v).ok()) v.clear();
  return v;
}

// An image with random, zero and repeated regions.
std::vector<uint8_t> mixed_image(uint64_t seed) {
  auto img = random_bytes(kDevSize, seed);
  std::fill(img.begin() + kDevSize / 8, img.begin() + kDevSize / 4, 0);
  std::copy(img.begin(), img.begin() + 65536, img.begin() + kDevSize / 2);
  return img;
}

// mixed_image's zero region.
const std::pair<uint64_t, uint64_t> kZeroRegion{kDevSize / 8, kDevSize / 4};

Result<Built> linear(Env& e) {
  std::string a = e.backing("a", random_bytes(kDevSize / 2 + 65536, 1));
  std::string b = e.backing("b", random_bytes(kDevSize / 2, 2));
  // Two segments: requests crossing the boundary are split by the table.
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {0} linear {1} 128\n{0} {0} linear {2} 0\n",
                                                         kSectors / 2, a, b)));
  return mk(d, Kind::kReadWrite);
}

// The test-only example target (tests/example): the list of files that adds
// a target, proved.
Result<Built> example_xor(Env& e) {
  std::string a = e.backing("a", random_bytes(kDevSize + 4096, 14));
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} example-xor {} 8 5a", kSectors, a)));
  return mk(d, Kind::kReadWrite);
}

Result<Built> zero(Env& e) {
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} zero", kSectors)));
  Built b = mk(d, Kind::kDropsWrites);
  b.sparse = {{0, kDevSize}};
  return b;
}

Result<Built> error(Env& e) {
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} error", kSectors)));
  return mk(d, Kind::kErrors);
}

Result<Built> bow(Env& e, int state) {
  std::string s = e.backing("bowdev", random_bytes(kDevSize, 3));
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} bow {}", kSectors, s)));
  // Free space is learnt from zero-outs that may unmap (loop's punch-hole).
  UDM_TRY(d->write_zeroes(kDevSize / 4, kDevSize * 3 / 4, false, true));
  if (state >= 1) UDM_TRY(d->message(0, {"state", "1"}).status());
  if (state >= 2) UDM_TRY(d->message(0, {"state", "2"}).status());
  Built b = mk(d, Kind::kReadWrite);
  b.may_run_out = state == 1;
  // Free space is a hole in states 0 and 1 (bow's map); in state 2 the
  // device's map (a file: the punched holes).
  if (state < 2) b.sparse = {{kDevSize / 4, kDevSize}};
  return b;
}

// An origin with one persistent snapshot of it; `which` picks the device
// under test: "origin" or "snap".
Result<Built> snapshot(Env& e, const std::string& which, const std::string& mode, bool writeback = false) {
  auto init = mixed_image(4);
  std::string o = e.backing("origin", init);
  std::string c = e.backing("cow", std::vector<uint8_t>(3 * kDevSize, 0));
  UDM_ASSIGN_OR_RETURN(auto od, e.make("origin-dev", fmt::format("0 {} snapshot-origin {}{}", kSectors, o,
                                                                 writeback ? " 1 writeback" : "")));
  UDM_ASSIGN_OR_RETURN(auto sd, e.make("snap", fmt::format("0 {} snapshot {} {} {} 8", kSectors, o, c, mode)));
  Built b = mk(which == "origin" ? od : sd, Kind::kReadWrite);
  b.sparse_over_files = {kZeroRegion};  // a fresh snapshot: the origin's holes
  MappedDevicePtr other = which == "origin" ? sd : od;
  // The other side must not see the workload.
  b.check = [other, init]() -> std::string {
    auto now = read_all(*other);
    return now == init ? "" : "the other device of the snapshot pair changed";
  };
  return b;
}

// Snapshots stacked so the same code re-enters itself on one thread: the
// COW of the outer snapshot is a snapshot-origin device whose own snapshot
// must save chunks while the outer origin write is saving its chunks.
Result<Built> snapshot_stacked(Env& e) {
  auto inner_init = random_bytes(4 * kDevSize, 12);
  std::fill(inner_init.begin(), inner_init.begin() + 65536, 0);  // a new COW starts with a zero header
  std::string io = e.backing("inner-origin", inner_init);
  std::string ic = e.backing("inner-cow", std::vector<uint8_t>(6 * kDevSize, 0));
  UDM_ASSIGN_OR_RETURN(auto iod, e.make("inner-origin-dev", fmt::format("0 {} snapshot-origin {}", 4 * kSectors, io)));
  UDM_ASSIGN_OR_RETURN(auto isd, e.make("inner-snap", fmt::format("0 {} snapshot {} {} P 8", 4 * kSectors, io, ic)));
  auto init = mixed_image(13);
  std::string o = e.backing("origin", init);
  UDM_ASSIGN_OR_RETURN(auto od, e.make("origin-dev", fmt::format("0 {} snapshot-origin {}", kSectors, o)));
  UDM_ASSIGN_OR_RETURN(auto sd, e.make("snap", fmt::format("0 {} snapshot {} {} P 8", kSectors, o,
                                                           e.uniq() + "inner-origin-dev")));
  Built b = mk(od, Kind::kReadWrite);
  b.check = [sd, init, isd, inner_init]() -> std::string {
    if (read_all(*sd) != init) return "the outer snapshot changed";
    if (read_all(*isd) != inner_init) return "the inner snapshot changed";
    return "";
  };
  return b;
}

// Parses "<allocated>/<total> <metadata>" of a snapshot-merge status.
bool merge_done(MappedDevice& d) {
  auto lines = d.status_lines();
  if (lines.empty()) return false;
  unsigned long long s, l, a, t, m;
  char type[64];
  if (sscanf(lines[0].c_str(), "%llu %llu %63s %llu/%llu %llu", &s, &l, type, &a, &t, &m) != 6) return false;
  return a == m;
}

Result<Built> merge(Env& e, bool wait_done) {
  auto init = mixed_image(5);
  std::string o = e.backing("origin", init);
  std::string c = e.backing("cow", std::vector<uint8_t>(3 * kDevSize, 0));
  std::vector<uint8_t> view;
  std::set<uint64_t> written;  // 4 KiB chunks the snapshot changed
  {
    UDM_ASSIGN_OR_RETURN(auto od, e.make("origin-dev", fmt::format("0 {} snapshot-origin {}", kSectors, o)));
    UDM_ASSIGN_OR_RETURN(auto sd, e.make("snap", fmt::format("0 {} snapshot {} {} P 8", kSectors, o, c)));
    // Give the merge work: change a quarter of the snapshot's chunks.
    std::mt19937_64 rng(6);
    for (int i = 0; i < 64; i++) {
      auto data = random_bytes(4096, rng());
      uint64_t at = (rng() % (kDevSize / 4096)) * 4096;
      UDM_TRY(sd->write(at, data));
      written.insert(at);
    }
    UDM_TRY(sd->flush());
    view = read_all(*sd);
    e.drop("snap");
    e.drop("origin-dev");
  }
  // The merge writes the origin through a slow path so it is still running
  // while the suite's workload goes on (unless we wait for it).
  DevicePtr odev = *e.resolver().open(o, true);
  std::string slow = e.add("slow-origin", std::make_shared<SlowDevice>(odev, wait_done ? 0 : 3000));
  UDM_ASSIGN_OR_RETURN(auto md, e.make("merge", fmt::format("0 {} snapshot-merge {} {} P 8", kSectors, slow, c)));
  Built b = mk(md, Kind::kReadWrite);
  if (wait_done) {
    for (int i = 0; i < 3000 && !merge_done(*md); i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!merge_done(*md)) return Status::Error(ETIMEDOUT, "merge did not finish");
  } else {
    b.note = merge_done(*md) ? "merge already done at start" : "merge running at start";
  }
  if (read_all(*md) != view) return Status::Error(EIO, "merge device does not read as the snapshot");
  // Chunks of the origin's zero region the snapshot never changed: the
  // origin's holes, merged or not.
  for (uint64_t at = kZeroRegion.first; at < kZeroRegion.second; at += 4096) {
    if (written.count(at)) continue;
    if (!b.sparse_over_files.empty() && b.sparse_over_files.back().second == at) b.sparse_over_files.back().second += 4096;
    else b.sparse_over_files.push_back({at, at + 4096});
  }
  return b;
}

Result<Built> lsmt_rw(Env& e) {
  using namespace udm::obd;
  auto raw = mixed_image(7);
  // A base layer made from a raw image (zero ranges stay unmapped).
  std::string lp = e.path("base.lsmt");
  {
    UDM_ASSIGN_OR_RETURN(auto out, open_grow_file(lp, true, true));
    auto sink = file_sink(out, false);
    MemoryDevice rd(raw, true);
    UDM_TRY(raw_to_layer(rd, *sink, CommitOptions{}));
  }
  std::string base;
  if (e.files()) {
    UDM_ASSIGN_OR_RETURN(auto f, FileDevice::open(lp, {.writable = false}));
    base = e.add("base", f);
  } else {
    base = e.add("base", std::make_shared<MemoryDevice>(udm::test::read_file(lp), true));
  }
  std::string dp = e.path("rw.data"), ip = e.path("rw.index");
  {
    UDM_ASSIGN_OR_RETURN(auto data, open_grow_file(dp, true, true));
    UDM_ASSIGN_OR_RETURN(auto index, open_grow_file(ip, true, true));
    UDM_TRY(create_rw_layer(*data, *index, kDevSize, "", ""));
  }
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} lsmt {} rw {} {}", kSectors, base, dp, ip)));
  if (read_all(*d) != raw) return Status::Error(EIO, "lsmt does not read as its base layer");
  Built b = mk(d, Kind::kReadWrite);
  b.sparse = {kZeroRegion};  // unmapped in the base layer
  return b;
}

Result<Built> zfile(Env& e) {
  using namespace udm::obd;
  auto raw = mixed_image(8);
  std::string zp = e.path("img.zfile");
  {
    UDM_ASSIGN_OR_RETURN(auto out, open_grow_file(zp, true, true));
    auto sink = zfile_sink(out, ZFileWriteOptions{});
    UDM_TRY(sink->write(raw));
    UDM_TRY(sink->finish());
  }
  std::string spec = e.backing("zfile", udm::test::read_file(zp));
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} zfile {}", kSectors, spec)));
  Built b = mk(d, Kind::kReadOnly, raw);
  b.sparse = {kZeroRegion};  // zero blocks, known from their stored size and decoded
  return b;
}

// A verity area (superblock, then the tree of blocks [0, 240)) written over
// blocks [240, 244) of a contract-size image, veritysetup's same-device
// layout; returns its byte offset.
uint64_t put_verity_area(std::vector<uint8_t>& img, uint8_t salt) {
  const uint64_t data_blocks = 240, off = data_blocks * 4096;
  verity::Params p;
  p.data_blocks = data_blocks;
  p.salt = {salt, 2, 3, 4};
  p.hash_start = off / 4096 + 1;
  auto t = verity::build_tree_mem(p, std::span<const uint8_t>(img).first(off));
  verity::Superblock sb;
  sb.algorithm = "sha256";
  sb.data_block_size = sb.hash_block_size = 4096;
  sb.data_blocks = data_blocks;
  sb.salt = p.salt;
  std::fill(img.begin() + off, img.begin() + off + 4 * 4096, 0);
  auto enc = verity::encode_superblock(sb);
  std::copy(enc.begin(), enc.end(), img.begin() + off);
  std::copy(t->blocks.begin(), t->blocks.end(), img.begin() + off + 4096);
  return off;
}

// An update device over the old image and a diff (v0 or v1), copy-back
// running in the background (bg) or not; with `verity`, both images carry
// a verity area (different salts) that the v1 diff leaves to the device
// to regenerate (flag VERITY_TREE).
Result<Built> update(Env& e, int version, bool bg, bool verity = false) {
  auto old_img = mixed_image(9);
  auto new_img = old_img;
  std::mt19937_64 rng(10);
  for (int i = 0; i < 60; i++) {  // changed, zeroed and moved blocks
    uint64_t b = rng() % (kDevSize / 4096), from = rng() % (kDevSize / 4096);
    if (i % 3 == 0) {
      auto r = random_bytes(4096, rng());
      std::copy(r.begin(), r.end(), new_img.begin() + b * 4096);
    } else if (i % 3 == 1) {
      std::fill(new_img.begin() + b * 4096, new_img.begin() + (b + 1) * 4096, 0);
    } else {
      std::copy(old_img.begin() + from * 4096, old_img.begin() + (from + 1) * 4096, new_img.begin() + b * 4096);
    }
  }
  uint64_t area = UINT64_MAX;
  if (verity) {
    put_verity_area(old_img, 1);
    area = put_verity_area(new_img, 2);
  }
  std::string op = e.path("old.img"), np = e.path("new.img"), dp = e.path("diff.img");
  udm::test::write_file(op, old_img);
  udm::test::write_file(np, new_img);
  if (version == 0) {
    update::DiffOptions o;
    o.progress = false;
    UDM_TRY(update::make_diff(op, np, dp, o).status());
  } else {
    update::DiffV1Options o;
    o.progress = false;
    o.level = 3;
    o.verity_hash_offset = area;
    UDM_TRY(update::make_diff_v1(op, np, dp, o).status());
  }
  std::string sys = e.backing("sys", old_img);
  std::string diff = e.backing("diff", udm::test::read_file(dp));
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} update {} {} {}", kSectors, sys, diff,
                                                         bg ? "0" : "1 no_bg_update")));
  Built b = mk(d, Kind::kReadOnly, new_img);
  // Blocks of the old image's zero region the update leaves alone: holes of
  // the (sparse) system file, or - v1 - parked there and zeroed again by a
  // ZERO operation.
  for (uint64_t o = kZeroRegion.first; o < kZeroRegion.second; o += 4096)
    if (std::equal(old_img.begin() + o, old_img.begin() + o + 4096, new_img.begin() + o)) {
      if (!b.sparse_over_files.empty() && b.sparse_over_files.back().second == o) b.sparse_over_files.back().second += 4096;
      else b.sparse_over_files.push_back({o, o + 4096});
    }
  return b;
}

// verity over an image with a zero region; with ignore_zero_blocks its
// blocks are zero by their digests (never by the data device's holes).
Result<Built> verity_case(Env& e, bool izb) {
  auto raw = mixed_image(14);
  verity::Params p;
  p.data_blocks = kDevSize / 4096;
  p.salt = {1, 2, 3};
  auto t = verity::build_tree_mem(p, raw);
  if (!t.ok()) return t.status();
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} verity 1 {} {} 4096 4096 {} 0 sha256 {} 010203{}", kSectors,
                                                         e.backing("vdata", raw), e.backing("vhash", t->blocks),
                                                         p.data_blocks, verity::to_hex(t->root),
                                                         izb ? " 1 ignore_zero_blocks" : "")));
  Built b = mk(d, Kind::kReadOnly, raw);
  if (izb) b.sparse = {kZeroRegion};
  return b;
}

// Android's COW (v2 or v3) over the old image: the view, or the merge target
// with its merge running in the background.
Result<Built> android_cow(Env& e, int version, bool merge) {
  auto old_img = mixed_image(15);
  auto new_img = old_img;
  std::mt19937_64 rng(16);
  for (int i = 0; i < 60; i++) {
    uint64_t b = rng() % (kDevSize / 4096), from = rng() % (kDevSize / 4096);
    if (i % 4 == 0) {
      auto r = random_bytes(4096, rng());
      std::copy(r.begin(), r.end(), new_img.begin() + b * 4096);
    } else if (i % 4 == 1) {
      std::fill(new_img.begin() + b * 4096, new_img.begin() + (b + 1) * 4096, 0);
    } else if (i % 4 == 2) {
      new_img[b * 4096 + 100] ^= 1;  // similar: XOR
    } else {
      std::copy(old_img.begin() + from * 4096, old_img.begin() + (from + 1) * 4096, new_img.begin() + b * 4096);
    }
  }
  acow::WriterOptions o;
  o.version = version;
  o.unit = 16384;
  UDM_ASSIGN_OR_RETURN(auto cow, acow::make_cow(old_img, new_img, o));
  std::string base = e.backing("base", old_img);
  std::string c = e.backing("cow", cow);
  UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} {} {} {}", kSectors, merge ? "android-cow-merge" : "android-cow",
                                                         base, c)));
  return mk(d, Kind::kReadOnly, new_img);
}

}  // namespace

const std::vector<Case>& contract_cases() {
  static const std::vector<Case> cases = {
      {"linear", linear},
      {"example_xor", example_xor},
      {"zero", zero},
      {"error", error},
      {"bow_state0", [](Env& e) { return bow(e, 0); }},
      {"bow_state1", [](Env& e) { return bow(e, 1); }},
      {"bow_state2", [](Env& e) { return bow(e, 2); }},
      {"snapshot_origin", [](Env& e) { return snapshot(e, "origin", "P"); }},
      {"snapshot_origin_writeback", [](Env& e) { return snapshot(e, "origin", "P", true); }},
      {"snapshot_P", [](Env& e) { return snapshot(e, "snap", "P"); }},
      {"snapshot_N", [](Env& e) { return snapshot(e, "snap", "N"); }},
      {"snapshot_origin_stacked", snapshot_stacked},
      {"snapshot_merge_running", [](Env& e) { return merge(e, false); }},
      {"snapshot_merge_done", [](Env& e) { return merge(e, true); }},
      {"lsmt_rw", lsmt_rw, /*file_only=*/false},
      {"zfile", zfile},
      {"update_v0", [](Env& e) { return update(e, 0, false); }},
      {"update_v1", [](Env& e) { return update(e, 1, false); }},
      {"update_v1_copyback", [](Env& e) { return update(e, 1, true); }},
      {"update_v1_verity_area", [](Env& e) { return update(e, 1, true, true); }},
      {"verity", [](Env& e) { return verity_case(e, false); }},
      {"verity_ignore_zero_blocks", [](Env& e) { return verity_case(e, true); }},
      {"android_cow_v2", [](Env& e) { return android_cow(e, 2, false); }},
      {"android_cow_v3", [](Env& e) { return android_cow(e, 3, false); }},
      {"android_cow_merge", [](Env& e) { return android_cow(e, 3, true); }},
  };
  return cases;
}

}  // namespace udm::contract

namespace udm::contract {

const std::vector<DurableCase>& durable_cases() {
  auto bow_boot = [](int state) {
    return [state](Env& e, bool first) -> Result<MappedDevicePtr> {
      std::string s = e.backing("bowdev", random_bytes(kDevSize, 3));
      UDM_ASSIGN_OR_RETURN(auto d, e.make("dev", fmt::format("0 {} bow {}", kSectors, s)));
      if (first) {
        UDM_TRY(d->write_zeroes(kDevSize / 4, kDevSize * 3 / 4, false, true));
        if (state >= 1) UDM_TRY(d->message(0, {"state", "1"}).status());
      }
      return d;
    };
  };
  auto snap_boot = [](bool origin, bool writeback = false) {
    return [origin, writeback](Env& e, bool) -> Result<MappedDevicePtr> {
      std::string o = e.backing("origin", mixed_image(4));
      std::string c = e.backing("cow", std::vector<uint8_t>(3 * kDevSize, 0));
      UDM_ASSIGN_OR_RETURN(auto od, e.make("origin-dev", fmt::format("0 {} snapshot-origin {}{}", kSectors, o,
                                                                     writeback ? " 1 writeback" : "")));
      UDM_ASSIGN_OR_RETURN(auto sd, e.make("snap", fmt::format("0 {} snapshot {} {} P 8", kSectors, o, c)));
      return origin ? od : sd;
    };
  };
  // The other half of the pair still reads as the original image.
  auto snap_check = [](bool origin) {
    return [origin](Env& e) -> std::string {
      auto other = e.resolver().open(e.uniq() + (origin ? "snap" : "origin-dev"), false);
      if (!other.ok()) return other.status().to_string();
      return read_all(**other) == mixed_image(4) ? "" : "the other device of the snapshot pair changed";
    };
  };
  static const std::vector<DurableCase> cases = {
      {"linear",
       [](Env& e, bool) -> Result<MappedDevicePtr> {
         std::string a = e.backing("a", random_bytes(kDevSize, 1));
         return e.make("dev", fmt::format("0 {} linear {} 0", kSectors, a));
       },
       {}},
      {"bow_state0", bow_boot(0), {}},
      {"bow_state1", bow_boot(1), {}},
      {"snapshot_origin", snap_boot(true), snap_check(true)},
      {"snapshot_origin_writeback", snap_boot(true, true), snap_check(true)},
      {"snapshot_P", snap_boot(false), snap_check(false)},
  };
  return cases;
}

}  // namespace udm::contract
