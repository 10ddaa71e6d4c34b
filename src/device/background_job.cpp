#include "device/background_job.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

#include "device/target_args.h"

namespace udm {

namespace {
constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kMaxMiBps = 1e6;  // 1 TiB/s: anything above is "off"
constexpr int64_t kSampleEveryNs = 200'000'000;
constexpr int64_t kWindowNs = 5'000'000'000;
constexpr int64_t kThrottledShowNs = 500'000'000;  // "throttled" if held back this recently
}  // namespace

Result<JobPolicy> parse_throttle(std::string_view v, JobPolicy base, const std::string& what) {
  if (v == "off") {
    base.throttle = JobPolicy::Throttle::kOff;
    base.rate = 0;
    return base;
  }
  if (v == "auto") {
    base.throttle = JobPolicy::Throttle::kAuto;
    base.rate = 0;
    return base;
  }
  // A positive decimal number of MiB/s: digits, optionally '.' and digits.
  bool ok = !v.empty() && std::isdigit(static_cast<unsigned char>(v.front())) &&
            std::isdigit(static_cast<unsigned char>(v.back())) &&
            std::all_of(v.begin(), v.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; }) &&
            std::count(v.begin(), v.end(), '.') <= 1;
  double mib = 0;
  if (ok) {
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), mib);
    ok = ec == std::errc() && p == v.data() + v.size();
  }
  if (!ok)
    return Invalid(fmt::format("{}: '{}' is not a rate: give MiB/s (a positive number), auto or off", what, v));
  if (mib <= 0 || mib > kMaxMiBps)
    return Invalid(fmt::format("{}: {} MiB/s is out of range (more than 0, at most {})", what, v, kMaxMiBps));
  base.throttle = JobPolicy::Throttle::kRate;
  base.rate = std::max<uint64_t>(1, static_cast<uint64_t>(std::llround(mib * kMiB)));
  return base;
}

Result<JobPolicy> JobPolicy::from_opts(OptArgs& o, const std::string& target) {
  JobPolicy p;
  UDM_ASSIGN_OR_RETURN(p.paused, o.flag("paused"));
  UDM_ASSIGN_OR_RETURN(std::optional<std::string> t, o.value("throttle"));
  if (t) {
    UDM_ASSIGN_OR_RETURN(p, parse_throttle(*t, p, target + ": throttle"));
  }
  return p;
}

std::string JobPolicy::throttle_text() const {
  switch (throttle) {
    case Throttle::kOff: return "off";
    case Throttle::kAuto: return "auto";
    case Throttle::kRate: break;
  }
  return fmt::format("{:g}", static_cast<double>(rate) / kMiB);
}

BackgroundJob::BackgroundJob(std::string kind, std::string unit, JobPolicy policy)
    : kind_(std::move(kind)), unit_(std::move(unit)), policy_(policy), pause_epoch_(policy.paused ? 1 : 0) {}

void BackgroundJob::set_total(uint64_t units, uint64_t bytes) {
  std::lock_guard lk(mu_);
  total_ = units;
  total_bytes_ = bytes;
}

void BackgroundJob::set_done(uint64_t units, uint64_t bytes) {
  std::lock_guard lk(mu_);
  done_ = units;
  done_bytes_ = bytes;
  sample(now_ns());
}

void BackgroundJob::started() {
  std::lock_guard lk(mu_);
  running_ = true;
  failed_ = false;
  error_.clear();
  tokens_ = 0;
  refill_ns_ = now_ns();
  // The clock starts at the first admitted piece of work (not while paused).
}

void BackgroundJob::finished(const Status& st) {
  std::lock_guard lk(mu_);
  running_ = false;
  stop_clock(now_ns());
  if (!st.ok()) {
    failed_ = true;
    error_ = st.message();
  }
}

uint64_t BackgroundJob::allowed_rate(int64_t now) const {
  switch (policy_.throttle) {
    case JobPolicy::Throttle::kOff: return 0;
    case JobPolicy::Throttle::kRate: return policy_.rate;
    case JobPolicy::Throttle::kAuto: return busy(now) ? kTrickleBytesPerSecond : 0;
  }
  return 0;
}

bool BackgroundJob::admit(uint64_t bytes, const std::atomic<bool>& stop, const std::function<void()>& on_pause) {
  std::unique_lock lk(mu_);
  uint64_t notified_epoch = 0;
  for (;;) {
    if (stop.load()) return false;
    if (policy_.paused) {
      stop_clock(now_ns());
      if (on_pause && notified_epoch != pause_epoch_) {
        notified_epoch = pause_epoch_;
        lk.unlock();
        on_pause();
        lk.lock();
        continue;
      }
      parked_ = true;
      cv_.wait(lk);
      parked_ = false;
      continue;
    }
    const int64_t now = now_ns();
    if (active_since_ < 0) active_since_ = now;
    const uint64_t rate = allowed_rate(now);
    if (rate == 0) {
      tokens_ = 0;
      refill_ns_ = now;
      return true;
    }
    // Refill; the bucket holds at most a tenth of a second's worth.
    const double burst = std::max(static_cast<double>(rate) / 10, static_cast<double>(bytes));
    tokens_ = std::min(burst, tokens_ + static_cast<double>(now - refill_ns_) * 1e-9 * static_cast<double>(rate));
    refill_ns_ = now;
    if (tokens_ >= 0) {
      tokens_ -= static_cast<double>(bytes);
      return true;
    }
    // Wait out the debt, at most 50 ms at a time: a pause, a new throttle,
    // an idle device (auto) or stop is seen within that.
    last_wait_ns_ = now;
    double wait_s = std::min(0.05, -tokens_ / static_cast<double>(rate));
    cv_.wait_for(lk, std::chrono::duration<double>(wait_s));
  }
}

uint64_t BackgroundJob::batch_bytes(uint64_t min, uint64_t max) const {
  std::lock_guard lk(mu_);
  const uint64_t rate = allowed_rate(now_ns());
  // Under `throttle auto` the device may turn busy any moment: small steps.
  uint64_t want = policy_.throttle == JobPolicy::Throttle::kAuto ? std::min<uint64_t>(max, 256 << 10) : max;
  if (rate) want = std::min(want, rate / 10);
  return std::clamp(want, min, std::max(min, max));
}

void BackgroundJob::wake() {
  std::lock_guard lk(mu_);
  cv_.notify_all();
}

bool BackgroundJob::is_job_message(const std::vector<std::string>& args) {
  return !args.empty() && (args[0] == "pause" || args[0] == "resume" || args[0] == "throttle");
}

Result<std::string> BackgroundJob::message(const std::vector<std::string>& args, const std::string& target) {
  const std::string& w = args.at(0);
  if (w == "pause" || w == "resume") {
    if (args.size() != 1) return Invalid(fmt::format("{}: {}: takes no arguments", target, w));
    std::lock_guard lk(mu_);
    const bool pause = w == "pause";
    if (pause && !policy_.paused) pause_epoch_++;
    policy_.paused = pause;
    cv_.notify_all();
    return std::string();
  }
  if (args.size() != 2) return Invalid(fmt::format("{}: throttle: give <MiB/s>, auto or off", target));
  std::lock_guard lk(mu_);
  UDM_ASSIGN_OR_RETURN(JobPolicy p, parse_throttle(args[1], policy_, target + ": throttle"));
  policy_ = p;
  tokens_ = 0;
  refill_ns_ = now_ns();
  cv_.notify_all();
  return std::string();
}

JobPolicy BackgroundJob::policy() const {
  std::lock_guard lk(mu_);
  return policy_;
}

void BackgroundJob::set_policy(const JobPolicy& p) {
  std::lock_guard lk(mu_);
  if (p.paused && !policy_.paused) pause_epoch_++;
  policy_ = p;
  cv_.notify_all();
}

void BackgroundJob::sample(int64_t now) const {
  if (samples_.empty() || now - samples_.back().ns >= kSampleEveryNs) samples_.push_back({now, done_bytes_});
  // Keep the newest sample at or before the window's start as the base.
  size_t drop = 0;
  while (drop + 1 < samples_.size() && now - samples_[drop + 1].ns >= kWindowNs) drop++;
  if (drop) samples_.erase(samples_.begin(), samples_.begin() + static_cast<ptrdiff_t>(drop));
}

double BackgroundJob::rate_locked(int64_t now) const {
  sample(now);
  const Sample& base = samples_.front();
  const double dt = static_cast<double>(now - base.ns) * 1e-9;
  if (dt < 0.05 || done_bytes_ < base.bytes) return 0;
  return static_cast<double>(done_bytes_ - base.bytes) / dt;
}

bool BackgroundJob::is_done() const {
  std::lock_guard lk(mu_);
  return !failed_ && !running_ && done_ >= total_;
}

JobInfo BackgroundJob::info() const {
  std::lock_guard lk(mu_);
  const int64_t now = now_ns();
  JobInfo i;
  i.kind = kind_;
  i.unit = unit_;
  i.done = done_;
  i.total = total_;
  i.done_bytes = done_bytes_;
  i.total_bytes = total_bytes_;
  i.throttle = policy_.throttle_text();
  i.paused = policy_.paused;
  i.parked = parked_;
  i.error = error_;
  i.bytes_per_second = rate_locked(now);
  i.active_seconds = static_cast<double>(active_ns_ + (active_since_ >= 0 ? now - active_since_ : 0)) * 1e-9;
  if (failed_)
    i.state = "failed";
  else if (done_ >= total_ && !running_)
    i.state = "done";
  else if (policy_.paused || !running_)
    i.state = "paused";
  else if (now - last_wait_ns_ < kThrottledShowNs)
    i.state = "throttled";
  else
    i.state = "running";
  if (i.state == "done")
    i.eta_seconds = 0.0;
  else if (i.state != "failed" && i.state != "paused" && i.bytes_per_second > 0)
    i.eta_seconds = static_cast<double>(total_bytes_ - std::min(total_bytes_, done_bytes_)) / i.bytes_per_second;
  return i;
}

}  // namespace udm
