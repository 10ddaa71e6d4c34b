#include "android_cow/targets.h"

#include <fmt/format.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "android_cow/acow_image.h"
#include "device/target_args.h"
#include "device/target_kit.h"
#include "util/log.h"

namespace udm::acow {

namespace {

struct Parsed {
  DevicePtr base, cow;
  std::optional<uint64_t> label;
};

Result<Parsed> parse_line(const char* type, const TargetParams& p, bool writable) {
  TargetArgs a(type, p.args);
  UDM_ASSIGN_OR_RETURN(std::string base_spec, a.next("<base_dev>"));
  UDM_ASSIGN_OR_RETURN(std::string cow_spec, a.next("<cow_dev>"));
  UDM_ASSIGN_OR_RETURN(OptArgs o, a.opt_group());
  UDM_ASSIGN_OR_RETURN(auto label, o.u64("label"));
  UDM_TRY(o.done());
  UDM_TRY(a.done());
  Parsed r;
  r.label = label;
  UDM_ASSIGN_OR_RETURN(r.base, p.resolver->open(base_spec, writable));
  UDM_ASSIGN_OR_RETURN(r.cow, p.resolver->open(cow_spec, writable));
  if (p.length > r.base->size())
    return a.error("<base_dev>", fmt::format("{} bytes, smaller than the device ({} bytes)", r.base->size(), p.length));
  return r;
}

class ViewTarget : public ReadOnlyTarget {
 public:
  ViewTarget(DevicePtr base, std::shared_ptr<CowImage> img) : base_(std::move(base)), img_(std::move(img)) {}
  std::string type() const override { return "android-cow"; }
  uint64_t size() const override { return img_->view_bytes(); }
  DeviceCaps caps() const override {
    DeviceCaps c = ReadOnlyTarget::caps();
    c.physical_block = img_->block_size();
    return c;
  }
  std::string status() const override {
    const CowFile& f = img_->file();
    return fmt::format("{} {} {} {} {}", f.ops.size(), f.n_replace, f.n_copy, f.n_xor, f.n_zero);
  }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override { return img_->read(*base_, off, buf); }

 private:
  DevicePtr base_;
  std::shared_ptr<CowImage> img_;
};

class MergeTarget : public ReadOnlyTarget {
 public:
  MergeTarget(DevicePtr base, DevicePtr cow, std::shared_ptr<CowImage> img)
      : base_(std::move(base)), cow_(std::move(cow)), img_(std::move(img)) {}
  ~MergeTarget() override { stop(); }
  std::string type() const override { return "android-cow-merge"; }
  uint64_t size() const override { return img_->view_bytes(); }
  DeviceCaps caps() const override {
    DeviceCaps c = ReadOnlyTarget::caps();
    c.physical_block = img_->block_size();
    return c;
  }
  std::string status() const override {
    std::string s = fmt::format("{} {}", img_->merged(), img_->total());
    if (failed_) s += " failed";
    return s;
  }
  void presuspend() override { stop(); }
  void resume() override {
    std::lock_guard lk(thread_mu_);
    if (thread_.joinable() || img_->merged() >= img_->total()) return;
    stop_ = false;
    thread_ = std::thread([this] { loop(); });
  }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override { return img_->read(*base_, off, buf); }
  Status do_flush() override { return base_->flush(); }

 private:
  void stop() {
    std::lock_guard lk(thread_mu_);
    if (!thread_.joinable()) return;
    stop_ = true;
    thread_.join();
  }
  void loop() {
    while (!stop_ && img_->merged() < img_->total()) {
      auto r = img_->merge_step(*base_, *cow_);
      if (!r.ok()) {
        log::error("android-cow-merge: merge stopped at {} of {}: {}", img_->merged(), img_->total(), r.status().message());
        failed_ = true;
        return;
      }
    }
  }

  DevicePtr base_, cow_;
  std::shared_ptr<CowImage> img_;
  std::atomic<bool> stop_{false}, failed_{false};
  std::mutex thread_mu_;
  std::thread thread_;
};

}  // namespace

Result<TargetPtr> make_view_target(const TargetParams& p) {
  UDM_ASSIGN_OR_RETURN(Parsed a, parse_line("android-cow", p, false));
  auto img = CowImage::open(a.cow, a.base->size(), p.length, a.label, false);
  if (!img.ok()) return img.status().context("android-cow");
  return TargetPtr(std::make_shared<ViewTarget>(a.base, *img));
}

Result<TargetPtr> make_merge_target(const TargetParams& p) {
  UDM_ASSIGN_OR_RETURN(Parsed a, parse_line("android-cow-merge", p, true));
  auto img = CowImage::open(a.cow, a.base->size(), p.length, a.label, true);
  if (!img.ok()) return img.status().context("android-cow-merge");
  return TargetPtr(std::make_shared<MergeTarget>(a.base, a.cow, *img));
}

}  // namespace udm::acow
