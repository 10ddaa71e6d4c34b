#include "overlaybd/targets.h"

#include <fmt/format.h>

#include "device/target_args.h"
#include "device/target_kit.h"
#include "io/resolver.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/zfile_device.h"

namespace udm::obd {
namespace {

// The decompressed contents of a ZFile, read-only.
class ZFileTarget : public ReadOnlyTarget {
 public:
  ZFileTarget(std::shared_ptr<ZFileDevice> z, uint64_t len) : z_(std::move(z)), len_(len) {}
  std::string type() const override { return "zfile"; }
  uint64_t size() const override { return len_; }
  DeviceCaps caps() const override { return z_->caps(); }
  std::string status() const override {
    const auto& h = z_->layout().h;
    return fmt::format("{} {} {} {} {} {}", h.algo == 1 ? "lz4" : "zstd", h.block_size, z_->layout().num_blocks(),
                       z_->stored_size(), z_->cache_hits(), z_->cache_misses());
  }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override { return z_->read(off, buf); }
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override { return z_->allocation(off, len, out); }
  void do_keep_cached(uint64_t off, uint64_t len) override { z_->keep_cached(off, len); }

 private:
  std::shared_ptr<ZFileDevice> z_;
  uint64_t len_;
};

// lsmt without a writable layer: the merged read-only layers.
class LsmtReadOnlyTarget : public ReadOnlyTarget {
 public:
  explicit LsmtReadOnlyTarget(std::shared_ptr<LsmtDevice> d) : d_(std::move(d)) {}
  std::string type() const override { return "lsmt"; }
  uint64_t size() const override { return d_->size(); }
  DeviceCaps caps() const override { return d_->caps(); }
  std::string status() const override { return d_->status(); }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override { return d_->read(off, buf); }
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override {
    return d_->allocation(off, len, out);
  }

 private:
  std::shared_ptr<LsmtDevice> d_;
};

}  // namespace

Result<TargetPtr> make_zfile_target(const TargetParams& p) {
  TargetArgs a("zfile", p.args);
  UDM_ASSIGN_OR_RETURN(std::string spec, a.next("<dev>"));
  UDM_TRY(a.done());
  auto blob = p.resolver->open(spec, false);
  if (!blob.ok()) return blob.status().context("zfile: <dev>");
  // A tar-wrapped layer blob is accepted as well.
  auto member = open_tar_member(*blob);
  if (!member.ok()) return member.status().context("zfile " + spec);
  auto z = ZFileDevice::open(*member);
  if (!z.ok()) return z.status().context("zfile " + spec);
  uint64_t sz = (*z)->size();
  if (p.length > sz)
    return Invalid(fmt::format("zfile: table length {} exceeds the decompressed size {}", p.length, sz));
  return TargetPtr(std::make_shared<ZFileTarget>(*z, p.length));
}

Result<TargetPtr> make_lsmt_target(const TargetParams& p) {
  TargetArgs a("lsmt", p.args);
  std::vector<std::string> layer_specs;
  std::optional<std::pair<std::string, std::string>> rw;
  while (!a.empty()) {
    UDM_ASSIGN_OR_RETURN(std::string spec, a.next("<layer>"));
    if (spec != "rw") {
      layer_specs.push_back(std::move(spec));
      continue;
    }
    // rw <data> <index> ends the line.
    UDM_ASSIGN_OR_RETURN(std::string data, a.next("<data>"));
    UDM_ASSIGN_OR_RETURN(std::string index, a.next("<index>"));
    UDM_TRY(a.done());
    if (spec_kind(data) != SpecKind::kPath) return a.error("<data>", fmt::format("'{}' is not a file path", data));
    if (spec_kind(index) != SpecKind::kPath) return a.error("<index>", fmt::format("'{}' is not a file path", index));
    rw = {std::move(data), std::move(index)};
  }
  if (layer_specs.empty() && !rw) return Invalid("lsmt: missing <layer> (lsmt <layer> [<layer> ...] [rw <data> <index>])");
  std::vector<LsmtLayer> layers;
  for (size_t i = 0; i < layer_specs.size(); i++) {
    const std::string& spec = layer_specs[i];
    std::string what = fmt::format("lsmt: <layer> {} ({})", i, spec);
    auto blob = p.resolver->open(spec, false);
    if (!blob.ok()) return blob.status().context(what);
    auto dev = open_layer_blob(*blob);
    if (!dev.ok()) return dev.status().context(what);
    auto L = open_lsmt_layer(*dev, spec);
    if (!L.ok()) return L.status().context(what);
    layers.push_back(std::move(*L));
  }
  std::optional<RwLayerFiles> files;
  if (rw) {
    auto d = open_grow_file(rw->first, true);
    if (!d.ok()) return d.status().context("lsmt: <data>");
    auto x = open_grow_file(rw->second, true);
    if (!x.ok()) return x.status().context("lsmt: <index>");
    files = RwLayerFiles{*d, *x};
  }
  auto dev = LsmtDevice::open(std::move(layers), std::move(files));
  if (!dev.ok()) return dev.status();
  if (p.length > (*dev)->virtual_size())
    return Invalid(fmt::format("lsmt: table length {} exceeds the virtual size {}", p.length, (*dev)->virtual_size()));
  (*dev)->set_length(p.length);
  if (!(*dev)->writable()) return TargetPtr(std::make_shared<LsmtReadOnlyTarget>(*dev));
  return TargetPtr(*dev);
}

}  // namespace udm::obd
