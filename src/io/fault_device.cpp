#include "io/fault_device.h"

#include <fmt/format.h>

#include <cstring>

namespace udm {

FaultDevice::FaultDevice(uint64_t size) : size_(size), durable_(size, 0), cache_(size, 0) {}

FaultDevice::FaultDevice(std::vector<uint8_t> initial)
    : size_(initial.size()), durable_(initial), cache_(std::move(initial)) {}

DeviceCaps FaultDevice::caps() const {
  DeviceCaps c;
  c.can_trim = true;
  c.trim_zeroes = true;
  c.fast_zero = true;
  return c;
}

void FaultDevice::apply(std::vector<uint8_t>& img, const Record& r) const {
  if (r.data.empty())
    std::memset(img.data() + r.offset, 0, r.length);
  else
    std::memcpy(img.data() + r.offset, r.data.data(), r.length);
}

void FaultDevice::cut_locked() {
  if (dead_) return;
  if (survival_ > 0) {
    std::bernoulli_distribution keep(survival_);
    for (const auto& r : pending_)
      if (keep(rng_)) apply(durable_, r);
  }
  pending_.clear();
  cache_ = durable_;
  dead_ = true;
}

Status FaultDevice::check_failure_locked(std::vector<Failure>& list, uint64_t offset,
                                         uint64_t len, const char* op) {
  for (auto& f : list) {
    if (f.count == 0) continue;
    if (offset < f.offset + f.len && f.offset < offset + len) {
      if (f.count > 0) f.count--;
      return Status::Error(f.err, fmt::format("injected {} error at offset {}", op, offset));
    }
  }
  return Status::Ok();
}

Status FaultDevice::account_write_locked(uint64_t offset, uint64_t len) {
  if (dead_) return IoError("fault device: power is cut");
  if (cut_after_ && write_ops_ >= *cut_after_) {
    cut_locked();
    return IoError(fmt::format("fault device: power cut at write op {}", write_ops_ + 1));
  }
  UDM_TRY(check_failure_locked(write_failures_, offset, len, "write"));
  write_ops_++;
  return Status::Ok();
}

Status FaultDevice::do_read(uint64_t offset, std::span<uint8_t> buf) {
  std::lock_guard lk(mu_);
  if (dead_) return IoError("fault device: power is cut");
  UDM_TRY(check_failure_locked(read_failures_, offset, buf.size(), "read"));
  if (!buf.empty()) std::memcpy(buf.data(), cache_.data() + offset, buf.size());
  return Status::Ok();
}

Status FaultDevice::store(Record r, bool fua) {
  std::lock_guard lk(mu_);
  UDM_TRY(account_write_locked(r.offset, r.length));
  apply(cache_, r);
  if (fua)
    apply(durable_, r);
  else
    pending_.push_back(std::move(r));
  return Status::Ok();
}

Status FaultDevice::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  if (buf.empty()) return Status::Ok();
  return store(Record{offset, buf.size(), std::vector<uint8_t>(buf.begin(), buf.end())}, fua);
}

Status FaultDevice::do_trim(uint64_t offset, uint64_t length) {
  if (length == 0) return Status::Ok();
  return store(Record{offset, length, {}}, false);
}

Status FaultDevice::do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) {
  if (length == 0) return Status::Ok();
  return store(Record{offset, length, {}}, fua);
}

Status FaultDevice::do_flush() {
  std::lock_guard lk(mu_);
  if (dead_) return IoError("fault device: power is cut");
  for (const auto& r : pending_) apply(durable_, r);
  pending_.clear();
  flushes_++;
  return Status::Ok();
}

void FaultDevice::cut_after_writes(uint64_t n) {
  std::lock_guard lk(mu_);
  cut_after_ = write_ops_ + n;
}

void FaultDevice::disarm() {
  std::lock_guard lk(mu_);
  cut_after_.reset();
}

void FaultDevice::power_cut() {
  std::lock_guard lk(mu_);
  cut_locked();
}

void FaultDevice::revive() {
  std::lock_guard lk(mu_);
  if (!dead_) cut_locked();
  dead_ = false;
  cut_after_.reset();
}

bool FaultDevice::dead() const {
  std::lock_guard lk(mu_);
  return dead_;
}

void FaultDevice::set_unflushed_survival(double p, uint64_t seed) {
  std::lock_guard lk(mu_);
  survival_ = p;
  rng_.seed(seed);
}

void FaultDevice::fail_reads(uint64_t offset, uint64_t len, int err, int count) {
  std::lock_guard lk(mu_);
  read_failures_.push_back({offset, len, err, count});
}

void FaultDevice::fail_writes(uint64_t offset, uint64_t len, int err, int count) {
  std::lock_guard lk(mu_);
  write_failures_.push_back({offset, len, err, count});
}

void FaultDevice::clear_failures() {
  std::lock_guard lk(mu_);
  read_failures_.clear();
  write_failures_.clear();
}

uint64_t FaultDevice::write_ops() const {
  std::lock_guard lk(mu_);
  return write_ops_;
}

uint64_t FaultDevice::flushes() const {
  std::lock_guard lk(mu_);
  return flushes_;
}

std::vector<uint8_t> FaultDevice::durable_image() const {
  std::lock_guard lk(mu_);
  if (dead_) return durable_;
  // As if power were cut now, with the survival policy applied to a copy.
  std::vector<uint8_t> img = durable_;
  if (survival_ > 0) {
    std::mt19937_64 rng = rng_;
    std::bernoulli_distribution keep(survival_);
    for (const auto& r : pending_)
      if (keep(rng)) apply(img, r);
  }
  return img;
}

std::vector<uint8_t> FaultDevice::current_image() const {
  std::lock_guard lk(mu_);
  return cache_;
}

}  // namespace udm
