// linear <dev> <offset_sectors>: maps the segment onto <dev> starting at
// <offset_sectors>, like dm-linear. The nbdkit-filter-sized target.
#include <fmt/format.h>

#include "device/table.h"
#include "device/target.h"

namespace udm {
namespace {

class LinearTarget : public Target {
 public:
  LinearTarget(DevicePtr dev, uint64_t offset, uint64_t length)
      : dev_(std::move(dev)), offset_(offset), length_(length) {}
  std::string type() const override { return "linear"; }
  uint64_t size() const override { return length_; }
  DeviceCaps caps() const override { return dev_->caps(); }
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    UDM_TRY(check_range(off, buf.size(), "read"));
    return dev_->read(offset_ + off, buf);
  }
  Status do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) override {
    UDM_TRY(check_range(off, buf.size(), "write"));
    return dev_->write(offset_ + off, buf, fua);
  }
  Status do_trim(uint64_t off, uint64_t len) override {
    UDM_TRY(check_range(off, len, "trim"));
    return dev_->trim(offset_ + off, len);
  }
  Status do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool may_unmap) override {
    UDM_TRY(check_range(off, len, "write_zeroes"));
    return dev_->write_zeroes(offset_ + off, len, fua, may_unmap);
  }
  Status do_flush() override { return dev_->flush(); }

 private:
  DevicePtr dev_;
  uint64_t offset_, length_;
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
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    UDM_TRY(check_range(off, buf.size(), "read"));
    std::fill(buf.begin(), buf.end(), 0);
    return Status::Ok();
  }
  // Like dm-zero, writes are accepted and dropped.
  Status do_write(uint64_t off, std::span<const uint8_t> buf, bool) override {
    return check_range(off, buf.size(), "write");
  }
  Status do_trim(uint64_t off, uint64_t len) override { return check_range(off, len, "trim"); }
  Status do_write_zeroes(uint64_t off, uint64_t len, bool, bool) override {
    return check_range(off, len, "write_zeroes");
  }
  Status do_flush() override { return Status::Ok(); }

 private:
  uint64_t length_;
};

class ErrorTarget : public Target {
 public:
  explicit ErrorTarget(uint64_t length) : length_(length) {}
  std::string type() const override { return "error"; }
  uint64_t size() const override { return length_; }
  Status do_read(uint64_t, std::span<uint8_t>) override { return IoError("error target: read"); }
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override {
    return IoError("error target: write");
  }
  Status do_trim(uint64_t, uint64_t) override { return IoError("error target: discard"); }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override {
    return IoError("error target: write zeroes");
  }
  Status do_flush() override { return Status::Ok(); }

 private:
  uint64_t length_;
};

Result<TargetPtr> make_linear(const TargetParams& p) {
  if (p.args.size() != 2)
    return Invalid(fmt::format("linear: expected 2 arguments, got {}", p.args.size()));
  UDM_ASSIGN_OR_RETURN(uint64_t off_sectors, parse_u64_arg(p.args[1], "linear: offset"));
  if (off_sectors > UINT64_MAX / kSectorSize) return Invalid("linear: offset overflows");
  UDM_ASSIGN_OR_RETURN(DevicePtr dev, p.resolver->open(p.args[0], true));
  uint64_t off = off_sectors * kSectorSize;
  if (off > dev->size() || p.length > dev->size() - off)
    return Invalid(fmt::format(
        "linear: device {} is too small: {} bytes, the segment needs {} bytes from offset {}",
        p.args[0], dev->size(), p.length, off));
  return TargetPtr(std::make_shared<LinearTarget>(std::move(dev), off, p.length));
}

}  // namespace

void register_core_targets(TargetRegistry& r) {
  r.add("linear", make_linear, "linear <device> <offset_sectors>");
  r.add("zero",
        [](const TargetParams& p) -> Result<TargetPtr> {
          if (!p.args.empty()) return Invalid("zero: takes no arguments");
          return TargetPtr(std::make_shared<ZeroTarget>(p.length));
        },
        "zero");
  r.add("error",
        [](const TargetParams& p) -> Result<TargetPtr> {
          if (!p.args.empty()) return Invalid("error: takes no arguments");
          return TargetPtr(std::make_shared<ErrorTarget>(p.length));
        },
        "error");
}

}  // namespace udm
