// Fuzzes the bow log parser, the intent block parser and the chain reader:
// the input is a whole device image (block 0 = log; the intent it points at,
// if any, is parsed too). decode_log must validate every field; read_chain
// must stay inside the device and, when it accepts a chain, every step must
// name ranges inside the device; a bow target created over the image (which
// resumes a checkpoint it finds) must refuse or come up consistent; restore
// of an accepted chain must not fail on range checks.
#include <cstdint>
#include <cstring>
#include <vector>

#include "bow/bow_format.h"
#include "bow/bow_target.h"
#include "bow/restore.h"
#include "io/memory_device.h"

using namespace udm;
using namespace udm::bow;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 64) return 0;
  size_t dev_size = std::max<size_t>((size + 511) / 512 * 512, 4096);
  std::vector<uint8_t> img(dev_size, 0);
  memcpy(img.data(), data, size);
  auto log = decode_log(img, img.size());
  if (log.ok()) {
    for (const auto& e : log.value().entries)
      if (e.source * 512 + e.size > img.size() || e.dest * 512 + e.size > img.size()) __builtin_trap();
    // Round trip: what decodes re-encodes to the same header and entries.
    auto again = encode_log(log.value());
    auto back = decode_log(again, img.size());
    if (!back.ok() || !(back.value() == log.value())) __builtin_trap();
    if (log.value().intent) {
      const uint32_t bs = log.value().block_size;
      if (log.value().intent * 512 + bs > img.size()) __builtin_trap();
      auto in = decode_intent(std::span(img).subspan(log.value().intent * 512, bs), bs, img.size());
      if (in.ok()) {
        for (const auto& r : in.value())
          if (r.sector == 0 || r.sector * 512 + r.bytes > img.size()) __builtin_trap();
        auto round = decode_intent(encode_intent(in.value(), bs), bs, img.size());
        if (!round.ok() || !(round.value() == in.value())) __builtin_trap();
      }
    }
  }
  auto dev = std::make_shared<MemoryDevice>(img);
  auto chain = read_chain(*dev);
  if (chain.ok()) {
    for (const auto& s : chain.value().steps)
      if (s.entry.source * 512 + s.entry.size > img.size() ||
          s.entry.dest * 512 + s.entry.size > img.size())
        __builtin_trap();
    Status st = apply_chain(*dev, chain.value());
    if (!st.ok()) __builtin_trap();  // a verified chain restores without errors
  }
  if (log.ok()) {
    auto t = BowTarget::create(std::make_shared<MemoryDevice>(img), img.size() / log.value().block_size *
                                                                        log.value().block_size,
                               BowOptions{false, log.value().block_size});
    // (A marked log is finished, an intent's blocks zeroed: writes to the copy.)
    if (t.ok() && !t.value()->map_consistent()) __builtin_trap();
  }
  return 0;
}
