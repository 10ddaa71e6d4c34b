// Fuzzes the verity table-line parser (whitespace-separated words) and, for
// accepted lines over small trees, the target: a verity device over a
// correct tree of random geometry reads back the data exactly, and one with
// a flipped byte never returns wrong bytes (compare against a recompute).
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "device/mapped_device.h"
#include "io/memory_device.h"
#include "verity/format.h"
#include "verity/target.h"

using namespace udm;
using namespace udm::verity;

namespace {
class MapResolver : public DeviceResolver {
 public:
  DevicePtr d, h;
  Result<DevicePtr> open(const std::string& spec, bool) override {
    if (spec == "d") return d;
    if (spec == "h") return h;
    return Status::Error(ENXIO, "no device");
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  if (data[0] & 1) {
    // Free text: the parser must accept or refuse cleanly, and an accepted
    // line must format back to a line that parses to the same thing.
    std::string s(reinterpret_cast<const char*>(data + 1), size - 1);
    std::vector<std::string> args;
    size_t i = 0;
    while (i < s.size()) {
      size_t j = s.find_first_of(" \t\n", i);
      if (j == std::string::npos) j = s.size();
      if (j > i) args.push_back(s.substr(i, j - i));
      i = j + 1;
    }
    auto t = parse_table_args(args);
    if (t.ok()) {
      std::string f = format_table_args(*t);
      std::vector<std::string> a2;
      size_t k = 0;
      while (k < f.size()) {
        size_t j = f.find(' ', k);
        if (j == std::string::npos) j = f.size();
        a2.push_back(f.substr(k, j - k));
        k = j + 1;
      }
      auto t2 = parse_table_args(a2);
      if (!t2.ok() || format_table_args(*t2) != f) __builtin_trap();
    }
    return 0;
  }
  // Random geometry over a small tree.
  Params p;
  p.hash_type = data[1] & 1;
  static const char* algs[] = {"sha1", "sha256", "sha512"};
  p.algorithm = algs[data[2] % 3];
  p.data_block_size = 512u << (data[3] % 4);
  p.hash_block_size = 512u << (data[4] % 4);
  p.data_blocks = 1 + (data[5] | (data[6] & 3) << 8) % (64 * 4096 / p.data_block_size);
  p.salt.assign(data + 7, data + 7 + std::min<size_t>(size - 7, data[7] % 33));
  std::vector<uint8_t> img(p.data_blocks * p.data_block_size);
  for (size_t i = 0; i < img.size(); i++) img[i] = static_cast<uint8_t>(i * 131 + (i >> 9) * data[1]);
  auto tree = build_tree_mem(p, img);
  if (!tree.ok()) __builtin_trap();
  auto hash = tree->blocks.empty() ? std::vector<uint8_t>(p.hash_block_size) : tree->blocks;
  bool flip = size > 40 && (data[size - 1] & 1);
  uint64_t where = 0;
  if (flip) {
    where = (static_cast<uint64_t>(data[size - 2]) << 16 | data[size - 3] << 8 | data[size - 4]) % img.size();
    img[where] ^= 0x5a;
  }
  MapResolver r;
  r.d = std::make_shared<MemoryDevice>(img);
  r.h = std::make_shared<MemoryDevice>(hash);
  TargetParams tp;
  tp.type = "verity";
  tp.length = p.data_blocks * p.data_block_size / 512 * 512;
  if (tp.length == 0) return 0;
  VerityLine l;
  l.params = p;
  l.data_dev = "d";
  l.hash_dev = "h";
  l.root = tree->root;
  std::string f = format_table_args(l);
  size_t k = 0;
  while (k < f.size()) {
    size_t j = f.find(' ', k);
    if (j == std::string::npos) j = f.size();
    tp.args.push_back(f.substr(k, j - k));
    k = j + 1;
  }
  tp.resolver = &r;
  if (p.data_block_size > 4096) return 0;
  auto t = make_verity(tp);
  if (!t.ok()) __builtin_trap();
  std::vector<uint8_t> buf(tp.length);
  Status st = (*t)->read(0, buf);
  if (!flip && (!st.ok() || buf != std::vector<uint8_t>(img.begin(), img.begin() + tp.length))) __builtin_trap();
  if (flip) {
    // Each block reads either exactly the data or EIO (the flipped one).
    for (uint64_t b = 0; b * p.data_block_size < tp.length; b++) {
      std::vector<uint8_t> one(p.data_block_size);
      Status s = (*t)->read(b * p.data_block_size, one);
      bool bad_block = where / p.data_block_size == b;
      if (s.ok() == bad_block) __builtin_trap();
      if (s.ok() && memcmp(one.data(), img.data() + b * p.data_block_size, one.size()) != 0) __builtin_trap();
    }
  }
  return 0;
}
