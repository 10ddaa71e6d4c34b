#include "device/mapped_device.h"

#include <fmt/format.h>

#include <algorithm>

#include "util/log.h"

namespace udm {

// ---------------------------------------------------------------- Table

Result<std::shared_ptr<Table>> Table::build(const TableSpec& spec, DeviceResolver& resolver,
                                            const TargetRegistry& registry,
                                            const std::string& device_name) {
  auto t = std::make_shared<Table>();
  bool first = true;
  for (const auto& line : spec.lines) {
    TargetParams p;
    p.type = line.type;
    p.start = line.start * kSectorSize;
    p.length = line.length * kSectorSize;
    p.args = line.args;
    p.resolver = &resolver;
    p.device_name = device_name;
    auto target = registry.create(p);
    if (!target.ok())
      return target.status().context(fmt::format("line {}: {}", line.line_no, line.type));
    if ((*target)->size() != p.length)
      return Invalid(fmt::format("line {}: {} target has size {} but the segment is {} bytes",
                                 line.line_no, line.type, (*target)->size(), p.length));
    DeviceCaps c = (*target)->caps();
    if (first) {
      t->caps_ = c;
      first = false;
    } else {
      t->caps_.read_only |= c.read_only;
      t->caps_.can_trim |= c.can_trim;
      t->caps_.trim_zeroes &= c.trim_zeroes;
      t->caps_.can_write_zeroes &= c.can_write_zeroes;
      t->caps_.fast_zero &= c.fast_zero;
      t->caps_.can_flush |= c.can_flush;
      t->caps_.logical_block = std::max(t->caps_.logical_block, c.logical_block);
      t->caps_.physical_block = std::max(t->caps_.physical_block, c.physical_block);
      t->caps_.max_io = std::min(t->caps_.max_io, c.max_io);
    }
    t->segments_.push_back(Segment{p.start, p.length, line.type, line.args_text(), *target});
    t->size_ = p.start + p.length;
  }
  return t;
}

size_t Table::find(uint64_t offset) const {
  // Segments are sorted by start and contiguous from 0.
  auto it = std::upper_bound(segments_.begin(), segments_.end(), offset,
                             [](uint64_t off, const Segment& s) { return off < s.start; });
  return static_cast<size_t>(it - segments_.begin()) - 1;
}

std::string Table::text() const {
  std::string out;
  for (const auto& s : segments_) {
    out += fmt::format("{} {} {}", s.start / kSectorSize, s.length / kSectorSize, s.type);
    if (!s.args.empty()) out += " " + s.args;
    out += "\n";
  }
  return out;
}

// ---------------------------------------------------------------- MappedDevice

MappedDevice::MappedDevice(std::string name, std::shared_ptr<Table> table, bool read_only)
    : name_(std::move(name)), active_(std::move(table)), read_only_(read_only) {
  size_ = active_->size();
  for (auto& s : active_->segments()) s.target->resume();
}

MappedDevice::~MappedDevice() {
  Status s = shutdown();
  if (!s.ok()) log::warn("{}: shutdown: {}", name_, s.to_string());
}

uint64_t MappedDevice::size() const { return size_.load(std::memory_order_relaxed); }

DeviceCaps MappedDevice::caps() const {
  DeviceCaps c = active_table()->caps();
  c.read_only |= read_only_.load();
  return c;
}

void MappedDevice::enter() {
  for (;;) {
    in_flight_.fetch_add(1);
    if (!suspended_.load()) return;
    leave();
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !suspended_.load(); });
  }
}

void MappedDevice::leave() {
  if (in_flight_.fetch_sub(1) == 1 && suspended_.load()) {
    std::lock_guard lk(mu_);
    cv_.notify_all();
  }
}

namespace {
struct GateGuard {
  MappedDevice* d;
  void (MappedDevice::*leave)();
  ~GateGuard() { (d->*leave)(); }
};
}  // namespace

template <class F>
Status MappedDevice::for_each_piece(uint64_t offset, uint64_t length, F&& f) {
  const Table& t = *active_;
  if (length == 0) return Status::Ok();
  size_t i = t.find(offset);
  uint64_t pos = offset, done = 0;
  while (done < length) {
    const Segment& s = t.segments()[i];
    uint64_t in_seg = pos - s.start;
    uint64_t n = std::min(length - done, s.length - in_seg);
    UDM_TRY(f(s, in_seg, done, n));
    done += n;
    pos += n;
    i++;
  }
  return Status::Ok();
}

// The public call checked the range against the size when it arrived; a
// request that then waited at the gate may meet a reloaded table of another
// size, so each hook checks again once inside the gate.
Status MappedDevice::do_read(uint64_t offset, std::span<uint8_t> buf) {
  enter();
  GateGuard g{this, &MappedDevice::leave};
  UDM_TRY(check_range(offset, buf.size(), "read"));
  return for_each_piece(offset, buf.size(),
                        [&](const Segment& s, uint64_t off, uint64_t at, uint64_t n) {
                          return s.target->read(off, buf.subspan(at, n));
                        });
}

Status MappedDevice::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  enter();
  GateGuard g{this, &MappedDevice::leave};
  if (read_only_) return ReadOnly(name_ + ": device is read-only");
  UDM_TRY(check_range(offset, buf.size(), "write"));
  return for_each_piece(offset, buf.size(),
                        [&](const Segment& s, uint64_t off, uint64_t at, uint64_t n) {
                          return s.target->write(off, buf.subspan(at, n), fua);
                        });
}

Status MappedDevice::do_trim(uint64_t offset, uint64_t length) {
  enter();
  GateGuard g{this, &MappedDevice::leave};
  if (read_only_) return ReadOnly(name_ + ": device is read-only");
  UDM_TRY(check_range(offset, length, "trim"));
  return for_each_piece(offset, length,
                        [&](const Segment& s, uint64_t off, uint64_t, uint64_t n) {
                          Status st = s.target->trim(off, n);
                          // Discard is advisory: a segment that cannot trim ignores it.
                          if (st.code() == EOPNOTSUPP) return Status::Ok();
                          return st;
                        });
}

Status MappedDevice::do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) {
  enter();
  GateGuard g{this, &MappedDevice::leave};
  if (read_only_) return ReadOnly(name_ + ": device is read-only");
  UDM_TRY(check_range(offset, length, "write_zeroes"));
  return for_each_piece(offset, length,
                        [&](const Segment& s, uint64_t off, uint64_t, uint64_t n) {
                          return s.target->write_zeroes(off, n, fua, may_unmap);
                        });
}

Status MappedDevice::do_flush() {
  enter();
  GateGuard g{this, &MappedDevice::leave};
  Status first;
  for (const auto& s : active_->segments()) {
    Status st = s.target->flush();
    if (!st.ok() && first.ok()) first = st;
  }
  return first;
}

// Each segment's map in turn; stops after a segment that described only a
// prefix of its piece (or once the map is long enough).
Status MappedDevice::do_allocation(uint64_t offset, uint64_t length, AllocMap& out) {
  enter();
  GateGuard g{this, &MappedDevice::leave};
  UDM_TRY(check_range(offset, length, "allocation"));
  const Table& t = *active_;
  size_t i = t.find(offset);
  uint64_t pos = offset, done = 0;
  AllocMap piece;
  while (done < length && out.size() < kMaxAllocRuns) {
    const Segment& s = t.segments()[i++];
    uint64_t in_seg = pos - s.start;
    uint64_t n = std::min(length - done, s.length - in_seg);
    UDM_TRY(s.target->allocation(in_seg, n, piece));
    uint64_t got = 0;
    for (const AllocRun& r : piece) {
      add_alloc_run(out, r.length, r.kind, r.depth);
      got += r.length;
    }
    if (got < n) break;
    done += n;
    pos += n;
  }
  return Status::Ok();
}

void MappedDevice::do_keep_cached(uint64_t offset, uint64_t length) {
  enter();
  GateGuard g{this, &MappedDevice::leave};
  if (!check_range(offset, length, "keep_cached").ok()) return;  // a reload shrank the device meanwhile
  (void)for_each_piece(offset, length, [&](const Segment& s, uint64_t off, uint64_t, uint64_t n) {
    s.target->keep_cached(off, n);
    return Status::Ok();
  });
}

Result<bool> MappedDevice::do_direct_extent(uint64_t offset, uint64_t length, const DirectExtentUse& use) {
  enter();
  GateGuard g{this, &MappedDevice::leave};
  UDM_TRY(check_range(offset, length, "read"));
  const Table& t = *active_;
  const Segment& s = t.segments()[t.find(offset)];
  uint64_t in_seg = offset - s.start;
  return s.target->direct_extent(in_seg, std::min(length, s.length - in_seg), use);
}

void MappedDevice::load(std::shared_ptr<Table> inactive) {
  std::lock_guard lk(mu_);
  inactive_ = std::move(inactive);
}

void MappedDevice::clear_inactive() {
  std::lock_guard lk(mu_);
  inactive_.reset();
}

bool MappedDevice::has_inactive() const {
  std::lock_guard lk(mu_);
  return inactive_ != nullptr;
}

bool MappedDevice::suspended() const { return suspended_.load(); }

std::shared_ptr<Table> MappedDevice::active_table() const {
  std::lock_guard lk(mu_);
  return active_;
}

std::shared_ptr<Table> MappedDevice::inactive_table() const {
  std::lock_guard lk(mu_);
  return inactive_;
}

Status MappedDevice::suspend() {
  std::lock_guard ctl(control_mu_);
  if (suspended_) return Status::Ok();
  auto table = active_;
  for (auto& s : table->segments()) s.target->presuspend();
  {
    std::unique_lock lk(mu_);
    suspended_ = true;
    cv_.wait(lk, [&] { return in_flight_.load() == 0; });
  }
  Status first;
  for (auto& s : table->segments()) {
    Status st = s.target->flush();
    if (!st.ok() && first.ok()) first = st.context("flush on suspend");
  }
  for (auto& s : table->segments()) s.target->postsuspend();
  event_nr_++;
  return first;
}

Status MappedDevice::resume() {
  std::shared_ptr<Table> old;
  {
    std::unique_lock ctl(control_mu_);
    bool need_swap;
    {
      std::lock_guard lk(mu_);
      need_swap = inactive_ != nullptr;
    }
    if (need_swap && !suspended_) {
      ctl.unlock();
      UDM_TRY(suspend());
      ctl.lock();
    }
    if (!suspended_) return Status::Ok();
    {
      std::lock_guard lk(mu_);
      if (inactive_) {
        old = std::move(active_);
        active_ = std::move(inactive_);
        inactive_.reset();
        size_ = active_->size();
      }
    }
    for (auto& s : active_->segments()) s.target->resume();
    {
      std::lock_guard lk(mu_);
      suspended_ = false;
      cv_.notify_all();
    }
    event_nr_++;
  }
  old.reset();  // old targets are destroyed outside the locks
  return Status::Ok();
}

Status MappedDevice::shutdown() {
  Status st = suspend();
  std::lock_guard lk(mu_);
  inactive_.reset();
  return st;
}

std::vector<std::string> MappedDevice::status_lines() const {
  auto t = active_table();
  std::vector<std::string> out;
  for (const auto& s : t->segments()) {
    std::string st = s.target->status();
    out.push_back(fmt::format("{} {} {}{}{}", s.start / kSectorSize, s.length / kSectorSize, s.type,
                              st.empty() ? "" : " ", st));
  }
  return out;
}

std::vector<std::string> MappedDevice::table_lines() const {
  auto t = active_table();
  std::vector<std::string> out;
  for (const auto& s : t->segments())
    out.push_back(fmt::format("{} {} {}{}{}", s.start / kSectorSize, s.length / kSectorSize,
                              s.type, s.args.empty() ? "" : " ", s.args));
  return out;
}

Result<std::string> MappedDevice::message(uint64_t sector, const std::vector<std::string>& args) {
  auto t = active_table();
  if (args.empty()) return Invalid("message: no message given");
  uint64_t off;
  if (__builtin_mul_overflow(sector, kSectorSize, &off) || off >= t->size())
    return Invalid(fmt::format("message: sector {} is beyond the end of {}", sector, name_));
  const Segment& s = t->segments()[t->find(off)];
  return s.target->message(args);
}

}  // namespace udm
