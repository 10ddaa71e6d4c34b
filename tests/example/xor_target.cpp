// example-xor <device> <offset_sectors> <key_hex_byte>: a test-only target
// that stores every byte XORed with a key. It exists to prove the list in
// docs/architecture.md, "How to add a target": this folder (target,
// feature.cpp, CMakeLists.txt), one word in a feature list
// (tests/CMakeLists.txt), one line in tests/contract/contract_cases.cpp.
//
// It overrides only what it changes (a ForwardingTarget passes the rest
// down): reads and writes transform the bytes; a zero-out must store the
// key, so it becomes key-filled writes; a trim of the lower device would
// read back as the key, so the target says it cannot trim.
#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "device/target_args.h"
#include "device/target_kit.h"
#include "example/xor_target.h"

namespace udm::example {
namespace {

class XorTarget : public ForwardingTarget {
 public:
  XorTarget(DevicePtr lower, uint64_t offset, uint64_t length, uint8_t key)
      : ForwardingTarget(std::move(lower), offset, length), key_(key) {}
  std::string type() const override { return "example-xor"; }
  std::string status() const override { return fmt::format("key={:02x}", key_); }
  DeviceCaps caps() const override {
    DeviceCaps c = ForwardingTarget::caps();
    c.can_trim = c.trim_zeroes = c.fast_zero = false;
    return c;
  }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    UDM_TRY(ForwardingTarget::do_read(off, buf));
    for (auto& b : buf) b ^= key_;
    return Status::Ok();
  }
  Status do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) override {
    std::vector<uint8_t> x(buf.begin(), buf.end());
    for (auto& b : x) b ^= key_;
    return ForwardingTarget::do_write(off, x, fua);
  }
  Status do_trim(uint64_t, uint64_t) override { return NotSupported("example-xor: no discard"); }
  Status do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool) override {
    return write_zero_buffers(off, len, fua);  // through do_write: stores the key
  }

 private:
  uint8_t key_;
};

}  // namespace

Result<TargetPtr> make_xor(const TargetParams& p) {
  TargetArgs a("example-xor", p.args);
  UDM_ASSIGN_OR_RETURN(std::string spec, a.next("<device>"));
  UDM_ASSIGN_OR_RETURN(uint64_t off, a.next_sectors("<offset_sectors>"));
  UDM_ASSIGN_OR_RETURN(std::string k, a.next("<key_hex_byte>"));
  UDM_TRY(a.done());
  if (k.size() != 2 || !std::all_of(k.begin(), k.end(), ::isxdigit))
    return a.error("<key_hex_byte>", fmt::format("'{}' is not two hex digits", k));
  UDM_ASSIGN_OR_RETURN(DevicePtr dev, p.resolver->open(spec, true));
  if (off > dev->size() || p.length > dev->size() - off)
    return Invalid(fmt::format("example-xor: device {} is too small", spec));
  return TargetPtr(std::make_shared<XorTarget>(std::move(dev), off, p.length,
                                               static_cast<uint8_t>(std::stoul(k, nullptr, 16))));
}

}  // namespace udm::example

