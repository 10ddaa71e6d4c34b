#pragma once

#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "common/sys_util.h"
#include "device/target.h"
#include "update/differ.h"
#include "update/format.h"
#include "update/target.h"

namespace udm::test {

// Old/new image pair with `changes` random blocks changed (random data,
// zeroes, or a copy of another block), plus optionally the last block.
inline std::pair<std::vector<uint8_t>, std::vector<uint8_t>> make_pair_images(uint64_t size, uint32_t bs,
                                                                               int changes, uint64_t seed,
                                                                               bool touch_tail = true) {
  auto old_img = random_bytes(size, seed);
  auto new_img = old_img;
  std::mt19937_64 rng(seed * 31 + 7);
  uint64_t blocks = size / bs;
  for (int i = 0; i < changes; i++) {
    uint64_t b = rng() % blocks;
    switch (i % 3) {
      case 0: {
        auto r = random_bytes(bs, rng());
        std::copy(r.begin(), r.end(), new_img.begin() + b * bs);
        break;
      }
      case 1:
        std::fill(new_img.begin() + b * bs, new_img.begin() + (b + 1) * bs, 0);
        break;
      default: {
        uint64_t from = rng() % blocks;
        std::copy(old_img.begin() + from * bs, old_img.begin() + (from + 1) * bs, new_img.begin() + b * bs);
        new_img[b * bs] ^= 0x5a;
      }
    }
  }
  if (touch_tail && blocks) new_img[size - 1] ^= 0xff;
  return {old_img, new_img};
}

// Resolver over named in-memory devices.
class MapResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool) override {
    auto it = devs.find(spec);
    if (it == devs.end()) return Status::Error(ENXIO, "no device " + spec);
    return it->second;
  }
};

inline Result<TargetPtr> make_update(MapResolver& r, uint64_t length, bool bg = true) {
  TargetParams p;
  p.type = "update";
  p.length = length;
  p.args = bg ? std::vector<std::string>{"sys", "diff", "0"} : std::vector<std::string>{"sys", "diff", "1", "no_bg_update"};
  p.resolver = &r;
  return make_update_target(p);
}

// Waits until status says "<n> <n>" (or the timeout); returns the last status.
inline std::string wait_copied(Target& t, int seconds = 60) {
  std::string s;
  for (int i = 0; i < seconds * 100; i++) {
    s = t.status();
    auto sp = s.find(' ');
    if (sp != std::string::npos && s.substr(0, sp) == s.substr(sp + 1)) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return s;
}

}  // namespace udm::test
