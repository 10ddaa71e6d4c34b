#include "overlaybd/targets.h"

#include <fmt/format.h>

#include "overlaybd/lsmt_device.h"
#include "overlaybd/tar_format.h"
#include "overlaybd/zfile_device.h"

namespace udm::obd {
namespace {

// The decompressed contents of a ZFile, read-only.
class ZFileTarget : public Target {
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
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return ReadOnly("zfile target is read-only"); }
  Status do_trim(uint64_t, uint64_t) override { return ReadOnly("zfile target is read-only"); }
  Status do_write_zeroes(uint64_t, uint64_t, bool, bool) override { return ReadOnly("zfile target is read-only"); }
  Status do_flush() override { return Status::Ok(); }

 private:
  std::shared_ptr<ZFileDevice> z_;
  uint64_t len_;
};

Result<DevicePtr> open_spec(const TargetParams& p, const std::string& spec, bool writable) {
  if (!p.resolver) return Invalid("no device resolver");
  auto r = p.resolver->open(spec, writable);
  if (!r.ok()) return r.status().context(spec);
  return r;
}

}  // namespace

Result<TargetPtr> make_zfile_target(const TargetParams& p) {
  if (p.args.size() != 1) return Invalid("zfile: expected 1 argument: <dev>");
  UDM_ASSIGN_OR_RETURN(DevicePtr blob, open_spec(p, p.args[0], false));
  // A tar-wrapped layer blob is accepted as well.
  if (blob->size() >= 3 * kTarBlock) {
    std::vector<uint8_t> head(3 * kTarBlock);
    UDM_TRY(blob->read(0, head));
    if (is_tar_header(head)) {
      UDM_ASSIGN_OR_RETURN(TarMember m, parse_tar_member(head, blob->size()));
      blob = std::make_shared<SliceDevice>(blob, m.offset, m.size);
    }
  }
  auto z = ZFileDevice::open(blob);
  if (!z.ok()) return z.status().context("zfile " + p.args[0]);
  uint64_t sz = (*z)->size();
  if (p.length > sz)
    return Invalid(fmt::format("zfile: table length {} exceeds the decompressed size {}", p.length, sz));
  return TargetPtr(std::make_shared<ZFileTarget>(*z, p.length));
}

Result<TargetPtr> make_lsmt_target(const TargetParams& p) {
  std::vector<std::string> layer_specs;
  std::optional<std::pair<std::string, std::string>> rw;
  for (size_t i = 0; i < p.args.size(); i++) {
    if (p.args[i] == "rw") {
      if (i + 3 != p.args.size()) return Invalid("lsmt: 'rw' must be followed by exactly <data> <index> at the end");
      rw = {p.args[i + 1], p.args[i + 2]};
      break;
    }
    layer_specs.push_back(p.args[i]);
  }
  if (layer_specs.empty() && !rw) return Invalid("lsmt: expected <layer> [<layer> ...] [rw <data> <index>]");
  std::vector<LsmtLayer> layers;
  for (size_t i = 0; i < layer_specs.size(); i++) {
    UDM_ASSIGN_OR_RETURN(DevicePtr blob, open_spec(p, layer_specs[i], false));
    auto dev = open_layer_blob(blob);
    if (!dev.ok()) return dev.status().context(fmt::format("lsmt layer {} ({})", i, layer_specs[i]));
    auto L = open_lsmt_layer(*dev, layer_specs[i]);
    if (!L.ok()) return L.status().context(fmt::format("lsmt layer {} ({})", i, layer_specs[i]));
    layers.push_back(std::move(*L));
  }
  std::optional<RwLayerFiles> files;
  if (rw) {
    if (rw->first.empty() || rw->first[0] != '/' || rw->second.empty() || rw->second[0] != '/')
      return Invalid("lsmt: rw <data> <index> must be file paths (starting with '/')");
    UDM_ASSIGN_OR_RETURN(auto d, open_grow_file(rw->first, true));
    UDM_ASSIGN_OR_RETURN(auto x, open_grow_file(rw->second, true));
    files = RwLayerFiles{d, x};
  }
  auto dev = LsmtDevice::open(std::move(layers), std::move(files));
  if (!dev.ok()) return dev.status();
  if (p.length > (*dev)->virtual_size())
    return Invalid(fmt::format("lsmt: table length {} exceeds the virtual size {}", p.length, (*dev)->virtual_size()));
  (*dev)->set_length(p.length);
  return TargetPtr(*dev);
}

}  // namespace udm::obd
