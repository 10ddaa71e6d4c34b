// One harness for both Android COW parsers: the input is a COW file whose
// version field is forced to `major`; whatever parses is served as a view
// over a small base (every block read) and merged into a copy of it.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "android_cow/acow_image.h"
#include "io/memory_device.h"

namespace udm::acow {

inline int fuzz_cow(const uint8_t* data, size_t size, uint16_t major) {
  std::vector<uint8_t> bytes(data, data + size);
  if (bytes.size() >= 10) {
    bytes[8] = static_cast<uint8_t>(major);
    bytes[9] = 0;
  }
  constexpr uint64_t kBase = 64 * 4096;
  std::vector<uint8_t> base_img(kBase);
  for (size_t i = 0; i < base_img.size(); i++) base_img[i] = static_cast<uint8_t>(i * 131 + (i >> 12));
  auto cow = std::make_shared<MemoryDevice>(bytes);
  for (int with_label = 0; with_label < 2; with_label++) {
    std::optional<uint64_t> label;
    if (with_label) label = 1;
    auto f = parse_cow(*cow, label);
    if (!f.ok()) continue;
    auto order = build_merge_order(*f);
    if (order.ok()) (void)verify_merge_order(*f, *order);
    auto img = CowImage::open(cow, kBase, kBase, label, false);
    if (!img.ok()) continue;
    auto base = std::make_shared<MemoryDevice>(base_img);
    std::vector<uint8_t> view(kBase);
    (void)(*img)->read(*base, 0, view);
    (void)(*img)->read(*base, 4095, std::span<uint8_t>(view.data(), 4099));
    if ((*img)->has_merge_order())
      for (int i = 0; i < 64 && (*img)->merged() < (*img)->total(); i++)
        if (!(*img)->merge_step(*base, *cow, 8).ok()) break;
  }
  return 0;
}

}  // namespace udm::acow
