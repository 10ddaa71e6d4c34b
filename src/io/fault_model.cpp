#include "io/fault_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace udm {

// ------------------------------------------------------------------ FaultDisk

void FaultDisk::cut_locked() {
  if (dead_) return;
  for (FaultImage* img : images_) img->cut_locked(rng_, survival_);
  dead_ = true;
}

bool FaultDisk::cut_due_locked() const { return cut_after_ && cut_points_ >= *cut_after_; }

Status FaultDisk::cut_now_locked(const char* at) {
  cut_locked();
  return IoError(fmt::format("fault device: power cut at {} (write op {})", at, write_ops_ + 1));
}

void FaultDisk::cut_after_writes(uint64_t n) {
  std::lock_guard lk(mu_);
  cut_after_ = cut_points_ + n;
}

void FaultDisk::set_cut_at_flushes(bool on) {
  std::lock_guard lk(mu_);
  cut_at_flushes_ = on;
}

uint64_t FaultDisk::cut_points() const {
  std::lock_guard lk(mu_);
  return cut_points_;
}

void FaultDisk::disarm() {
  std::lock_guard lk(mu_);
  cut_after_.reset();
}

void FaultDisk::power_cut() {
  std::lock_guard lk(mu_);
  cut_locked();
}

void FaultDisk::revive() {
  std::lock_guard lk(mu_);
  if (!dead_) cut_locked();
  dead_ = false;
  cut_after_.reset();
}

bool FaultDisk::dead() const {
  std::lock_guard lk(mu_);
  return dead_;
}

void FaultDisk::set_unflushed_survival(double p, uint64_t seed) {
  std::lock_guard lk(mu_);
  survival_ = p;
  rng_.seed(seed);
}

uint64_t FaultDisk::write_ops() const {
  std::lock_guard lk(mu_);
  return write_ops_;
}

uint64_t FaultDisk::flushes() const {
  std::lock_guard lk(mu_);
  return flushes_;
}

// ----------------------------------------------------------------- FaultImage

FaultImage::FaultImage(std::shared_ptr<FaultDisk> disk, std::vector<uint8_t> initial)
    : disk_(std::move(disk)), durable_(initial), cache_(std::move(initial)) {
  std::lock_guard lk(disk_->mu_);
  disk_->images_.push_back(this);
}

FaultImage::~FaultImage() {
  std::lock_guard lk(disk_->mu_);
  auto& v = disk_->images_;
  v.erase(std::remove(v.begin(), v.end(), this), v.end());
}

void FaultImage::apply(std::vector<uint8_t>& img, const Record& r) {
  if (img.size() < r.offset + r.length) img.resize(r.offset + r.length, 0);
  if (r.data.empty())
    std::memset(img.data() + r.offset, 0, r.length);
  else
    std::memcpy(img.data() + r.offset, r.data.data(), r.length);
}

void FaultImage::cut_locked(std::mt19937_64& rng, double survival) {
  if (survival > 0) {
    std::bernoulli_distribution keep(survival);
    for (const auto& r : pending_)
      if (keep(rng)) apply(durable_, r);
  }
  pending_.clear();
  cache_ = durable_;
}

Status FaultImage::check_failure(std::vector<Failure>& list, uint64_t offset, uint64_t len, const char* op) {
  for (auto& f : list) {
    if (f.count == 0) continue;
    if (offset < f.offset + f.len && f.offset < offset + len) {
      if (f.count > 0) f.count--;
      return Status::Error(f.err, fmt::format("injected {} error at offset {}", op, offset));
    }
  }
  return Status::Ok();
}

uint64_t FaultImage::size() const {
  std::lock_guard lk(disk_->mu_);
  return cache_.size();
}

Status FaultImage::read(uint64_t offset, std::span<uint8_t> buf) {
  std::lock_guard lk(disk_->mu_);
  if (disk_->dead_) return IoError("fault device: power is cut");
  UDM_TRY(check_failure(read_failures_, offset, buf.size(), "read"));
  size_t n = offset < cache_.size() ? std::min<uint64_t>(buf.size(), cache_.size() - offset) : 0;
  if (n) std::memcpy(buf.data(), cache_.data() + offset, n);
  if (n < buf.size()) std::memset(buf.data() + n, 0, buf.size() - n);
  return Status::Ok();
}

Status FaultImage::store(Record r, bool fua) {
  std::lock_guard lk(disk_->mu_);
  FaultDisk& d = *disk_;
  if (d.dead_) return IoError("fault device: power is cut");
  if (d.cut_due_locked()) return d.cut_now_locked("a write");
  UDM_TRY(check_failure(write_failures_, r.offset, r.length, "write"));  // not counted
  d.cut_points_++;
  d.write_ops_++;
  apply(cache_, r);
  if (fua) {
    apply(durable_, r);
  } else if (r.offset / kTearUnit == (r.offset + r.length - 1) / kTearUnit) {
    pending_.push_back(std::move(r));
  } else {
    // A write of several 4 KiB units may reach the disk in part: each
    // aligned unit is its own pending write (its own survival draw).
    for (uint64_t at = r.offset; at < r.offset + r.length;) {
      const uint64_t end = std::min(r.offset + r.length, (at / kTearUnit + 1) * kTearUnit);
      Record piece{at, end - at, {}};
      if (!r.data.empty())
        piece.data.assign(r.data.begin() + (at - r.offset), r.data.begin() + (end - r.offset));
      pending_.push_back(std::move(piece));
      at = end;
    }
  }
  return Status::Ok();
}

Status FaultImage::write(uint64_t offset, std::span<const uint8_t> data, bool fua) {
  if (data.empty()) return Status::Ok();
  return store(Record{offset, data.size(), std::vector<uint8_t>(data.begin(), data.end())}, fua);
}

Status FaultImage::write_zeroes(uint64_t offset, uint64_t length, bool fua) {
  if (length == 0) return Status::Ok();
  return store(Record{offset, length, {}}, fua);
}

Status FaultImage::flush() {
  std::lock_guard lk(disk_->mu_);
  if (disk_->dead_) return IoError("fault device: power is cut");
  if (disk_->cut_at_flushes_) {
    if (disk_->cut_due_locked()) return disk_->cut_now_locked("a flush");
    disk_->cut_points_++;
  }
  for (const auto& r : pending_) apply(durable_, r);
  pending_.clear();
  disk_->flushes_++;
  return Status::Ok();
}

void FaultImage::fail_reads(uint64_t offset, uint64_t len, int err, int count) {
  std::lock_guard lk(disk_->mu_);
  read_failures_.push_back({offset, len, err, count});
}

void FaultImage::fail_writes(uint64_t offset, uint64_t len, int err, int count) {
  std::lock_guard lk(disk_->mu_);
  write_failures_.push_back({offset, len, err, count});
}

void FaultImage::clear_failures() {
  std::lock_guard lk(disk_->mu_);
  read_failures_.clear();
  write_failures_.clear();
}

std::vector<uint8_t> FaultImage::durable() const {
  std::lock_guard lk(disk_->mu_);
  const FaultDisk& d = *disk_;
  if (d.dead_) return durable_;
  // As if power were cut now: the same draws, in the same order, as a cut
  // of the whole disk would make, on a copy of the generator.
  std::vector<uint8_t> img = durable_;
  if (d.survival_ > 0) {
    std::mt19937_64 rng = d.rng_;
    std::bernoulli_distribution keep(d.survival_);
    for (const FaultImage* other : d.images_)
      for (const auto& r : other->pending_)
        if (keep(rng) && other == this) apply(img, r);
  }
  return img;
}

std::vector<uint8_t> FaultImage::current() const {
  std::lock_guard lk(disk_->mu_);
  return cache_;
}

}  // namespace udm
