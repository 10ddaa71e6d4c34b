// The core targets, as in device-mapper:
//   linear <dev> <offset_sectors>   the segment maps onto <dev> from <offset_sectors>
//   zero                            reads zeroes, accepts and drops writes
//   error                           fails every I/O with EIO
#include <fmt/format.h>

#include "device/table.h"
#include "device/target_args.h"
#include "device/target_kit.h"
#include "targets/core_targets.h"

namespace udm {
namespace {

class LinearTarget : public ForwardingTarget {
 public:
  using ForwardingTarget::ForwardingTarget;
  std::string type() const override { return "linear"; }

 protected:
  // Reads are the lower device's bytes: so is its allocation.
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override {
    return forward_allocation(off, len, out);
  }
  // ... and, when the lower device is a file (or a device over one), so are
  // its bytes: exports may splice them.
  Result<bool> do_direct_extent(uint64_t off, uint64_t len, const DirectExtentUse& use) override {
    return forward_direct_extent(off, len, use);
  }
};

class ZeroTarget : public Target {
 public:
  explicit ZeroTarget(uint64_t length) : length_(length) {}
  std::string type() const override { return "zero"; }
  uint64_t size() const override { return length_; }
  DeviceCaps caps() const override {
    DeviceCaps c;
    c.can_trim = true;
    c.trim_zeroes = true;
    c.fast_zero = true;
    return c;
  }

 protected:
  Status do_read(uint64_t, std::span<uint8_t> buf) override {
    std::fill(buf.begin(), buf.end(), 0);
    return Status::Ok();
  }
  // Like dm-zero, writes are accepted and dropped.
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return Status::Ok(); }
  Status do_trim(uint64_t, uint64_t) override { return Status::Ok(); }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override { return Status::Ok(); }
  Status do_flush() override { return Status::Ok(); }
  Status do_allocation(uint64_t, uint64_t len, AllocMap& out) override {
    out.push_back(AllocRun{len, AllocKind::kHole, 0});
    return Status::Ok();
  }

 private:
  uint64_t length_;
};

class ErrorTarget : public Target {
 public:
  explicit ErrorTarget(uint64_t length) : length_(length) {}
  std::string type() const override { return "error"; }
  uint64_t size() const override { return length_; }

 protected:
  Status do_read(uint64_t, std::span<uint8_t>) override { return IoError("error target: read"); }
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return IoError("error target: write"); }
  Status do_trim(uint64_t, uint64_t) override { return IoError("error target: discard"); }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override { return IoError("error target: write zeroes"); }
  Status do_flush() override { return Status::Ok(); }

 private:
  uint64_t length_;
};

Result<TargetPtr> make_linear(const TargetParams& p) {
  TargetArgs a("linear", p.args);
  UDM_ASSIGN_OR_RETURN(std::string spec, a.next("<device>"));
  UDM_ASSIGN_OR_RETURN(uint64_t off, a.next_sectors("<offset_sectors>"));
  UDM_TRY(a.done());
  UDM_ASSIGN_OR_RETURN(DevicePtr dev, p.resolver->open(spec, true));
  if (off > dev->size() || p.length > dev->size() - off)
    return Invalid(fmt::format(
        "linear: device {} is too small: {} bytes, the segment needs {} bytes from offset {}",
        spec, dev->size(), p.length, off));
  return TargetPtr(std::make_shared<LinearTarget>(std::move(dev), off, p.length));
}

Result<TargetPtr> make_zero(const TargetParams& p) {
  UDM_TRY(TargetArgs("zero", p.args).done());
  return TargetPtr(std::make_shared<ZeroTarget>(p.length));
}

Result<TargetPtr> make_error(const TargetParams& p) {
  UDM_TRY(TargetArgs("error", p.args).done());
  return TargetPtr(std::make_shared<ErrorTarget>(p.length));
}

}  // namespace

void register_core_targets(TargetRegistry& r) {
  r.add("linear", make_linear, "linear <device> <offset_sectors>");
  r.add("zero", make_zero, "zero");
  r.add("error", make_error, "error");
}

}  // namespace udm
