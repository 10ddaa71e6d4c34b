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
  JobPolicy policy;  // the merge's: paused, throttle=... (device/background_job.h)
};

// `writable`: the merge (which also takes the background-job options).
Result<Parsed> parse_line(const char* type, const TargetParams& p, bool writable) {
  TargetArgs a(type, p.args);
  UDM_ASSIGN_OR_RETURN(std::string base_spec, a.next("<base_dev>"));
  UDM_ASSIGN_OR_RETURN(std::string cow_spec, a.next("<cow_dev>"));
  UDM_ASSIGN_OR_RETURN(OptArgs o, a.opt_group());
  UDM_ASSIGN_OR_RETURN(auto label, o.u64("label"));
  Parsed r;
  if (writable) {
    UDM_ASSIGN_OR_RETURN(r.policy, JobPolicy::from_opts(o, type));
  }
  UDM_TRY(o.done());
  UDM_TRY(a.done());
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
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override {
    return img_->allocation(*base_, off, len, out);
  }

 private:
  DevicePtr base_;
  std::shared_ptr<CowImage> img_;
};

// The merge is a BackgroundJob (device/background_job.h): pause, resume,
// throttle as messages or table options, progress in ops of the merge order
// (bytes: the blocks those ops write). Each batch is durable before the next
// one is admitted (merge_step flushes the base, then records num_merge_ops),
// so a pause has nothing more to record.
class MergeTarget : public ReadOnlyTarget {
 public:
  MergeTarget(DevicePtr base, DevicePtr cow, std::shared_ptr<CowImage> img, JobPolicy policy)
      : base_(std::move(base)), cow_(std::move(cow)), img_(std::move(img)),
        job_("android-cow-merge", "operations", policy) {
    const auto& order = img_->merge_order();
    bytes_before_.resize(order.size() + 1);
    for (size_t i = 0; i < order.size(); i++)
      bytes_before_[i + 1] = bytes_before_[i] + img_->file().ops[order[i]].blocks() * img_->block_size();
    job_.set_total(img_->total(), bytes_before_.back());
    report();
  }
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
  Result<std::string> message(const std::vector<std::string>& args) override {
    if (!BackgroundJob::is_job_message(args)) return ReadOnlyTarget::message(args);
    return job_.message(args, "android-cow-merge");
  }
  std::vector<JobInfo> jobs() const override { return {job_.info()}; }
  void presuspend() override { stop(); }
  void resume() override {
    std::lock_guard lk(thread_mu_);
    if (thread_.joinable() || img_->merged() >= img_->total()) return;
    stop_ = false;
    thread_ = std::thread([this] { loop(); });
  }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    job_.foreground_io();
    return img_->read(*base_, off, buf);
  }
  Status do_flush() override { return base_->flush(); }
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override {
    return img_->allocation(*base_, off, len, out);
  }

 private:
  void report() {
    const uint64_t m = img_->merged();
    job_.set_done(m, bytes_before_[m]);
  }
  void stop() {
    std::lock_guard lk(thread_mu_);
    if (!thread_.joinable()) return;
    stop_ = true;
    job_.wake();
    thread_.join();
  }
  void loop() {
    const uint64_t bs = img_->block_size();
    constexpr uint64_t kMaxBatch = 4u << 20;
    job_.started();
    failed_ = false;
    Status st;
    while (!stop_ && img_->merged() < img_->total()) {
      // Wait while paused or while the throttle's debt lasts; then a batch
      // sized by the policy in force now (up to 4 MiB, about a tenth of a
      // second's worth while throttled), charged to the throttle by what it
      // wrote (a batch is often far smaller than its allowance: ops that
      // depend on each other end it).
      if (!job_.admit(0, stop_)) break;
      const uint64_t bytes = job_.batch_bytes(bs, kMaxBatch);
      const uint64_t before = img_->merged();
      auto r = img_->merge_step(*base_, *cow_, static_cast<uint32_t>(std::max<uint64_t>(1, bytes / bs)));
      report();
      if (!r.ok()) {
        st = r.status();
        log::error("android-cow-merge: merge stopped at {} of {}: {}", img_->merged(), img_->total(), st.message());
        failed_ = true;
        break;
      }
      if (!job_.admit(bytes_before_[*r] - bytes_before_[before], stop_)) break;
    }
    job_.finished(st);
  }

  DevicePtr base_, cow_;
  std::shared_ptr<CowImage> img_;
  std::vector<uint64_t> bytes_before_;  // merge position -> bytes the ops before it write
  BackgroundJob job_;
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
  return TargetPtr(std::make_shared<MergeTarget>(a.base, a.cow, *img, a.policy));
}

}  // namespace udm::acow
