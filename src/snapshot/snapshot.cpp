#include "snapshot/snapshot.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "io/path_resolver.h"
#include "util/log.h"

namespace udm::snapshot {

Result<std::string> device_identity(const std::string& spec) {
  if (spec.empty() || spec[0] != '/') return "udm:" + spec;
  struct stat st;
  if (::stat(spec.c_str(), &st) != 0) return ErrnoStatus("stat " + spec);
  if (S_ISBLK(st.st_mode)) return "blk:" + std::to_string(uint64_t(st.st_rdev));
  return "file:" + std::to_string(uint64_t(st.st_dev)) + ":" + std::to_string(uint64_t(st.st_ino));
}

// ---------------------------------------------------------------- registry

namespace {
std::mutex g_entries_mu;
std::map<std::string, std::weak_ptr<OriginEntry>>& entries() {
  static auto* m = new std::map<std::string, std::weak_ptr<OriginEntry>>();
  return *m;
}
}  // namespace

std::shared_ptr<OriginEntry> origin_entry(const std::string& key) {
  std::lock_guard lk(g_entries_mu);
  auto& m = entries();
  for (auto it = m.begin(); it != m.end();) it = it->second.expired() ? m.erase(it) : std::next(it);
  auto& w = m[key];
  auto e = w.lock();
  if (!e) {
    e = std::make_shared<OriginEntry>();
    w = e;
  }
  return e;
}

void OriginEntry::save_range(uint64_t offset, uint64_t len, const SnapshotCore* except) {
  if (len == 0) return;
  // The caller holds io_mu shared and every change of snaps_ holds it
  // exclusively, so the list is stable here without a copy or list_mu_.
  for (auto& s : snaps_) {
    if (s.get() == except) continue;
    uint64_t cb = s->chunk_bytes();
    uint64_t end = std::min(offset + len, s->origin_size());
    for (uint64_t c = offset / cb; c * cb < end; c++) s->save_before_origin_write(c);
  }
}

std::shared_ptr<SnapshotCore> OriginEntry::attach(std::shared_ptr<SnapshotCore> core) {
  std::unique_lock io(io_mu);  // no origin write is between its saves and its write
  std::lock_guard lk(list_mu_);
  for (auto& s : snaps_)
    if (s->cow_key() == core->cow_key()) return s;
  snaps_.push_back(core);
  return core;
}

std::shared_ptr<SnapshotCore> OriginEntry::take(const std::string& cow_key) {
  std::unique_lock io(io_mu);
  std::lock_guard lk(list_mu_);
  for (auto it = snaps_.begin(); it != snaps_.end(); ++it) {
    if ((*it)->cow_key() == cow_key) {
      auto s = *it;
      snaps_.erase(it);
      return s;
    }
  }
  return nullptr;
}

void OriginEntry::detach(SnapshotCore* core) {
  std::unique_lock io(io_mu);
  std::lock_guard lk(list_mu_);
  snaps_.erase(std::remove_if(snaps_.begin(), snaps_.end(),
                              [&](auto& s) { return s.get() == core; }),
               snaps_.end());
}

size_t OriginEntry::count() const {
  std::lock_guard lk(list_mu_);
  return snaps_.size();
}

// ---------------------------------------------------------------- core

SnapshotCore::SnapshotCore(DevicePtr origin, std::unique_ptr<ExceptionStore> store,
                           std::string cow_key, bool overflow_ok)
    : origin_(std::move(origin)),
      store_(std::move(store)),
      cow_key_(std::move(cow_key)),
      overflow_ok_(overflow_ok),
      locks_(new std::shared_mutex[kStripes]) {}

Status SnapshotCore::read_origin_chunk(uint64_t chunk, std::vector<uint8_t>& buf) {
  const uint64_t cb = chunk_bytes();
  uint64_t off = chunk * cb;
  buf.resize(std::min(cb, origin_->size() - off));
  return origin_->read(off, buf).context("snapshot: reading origin chunk");
}

void SnapshotCore::invalidate(const Status& why) {
  if (!store_->valid()) return;
  log::warn("snapshot: invalidating snapshot (COW {}): {}", cow_key_, why.to_string());
  Status st = store_->invalidate();
  if (!st.ok()) log::warn("snapshot: {}", st.to_string());
}

void SnapshotCore::save_before_origin_write(uint64_t chunk) {
  // Fast path (every rewrite): an exception, once visible, is durable and
  // stays while the snapshot is listed for its origin.
  if (store_->has_exception(chunk) || !store_->valid()) return;
  std::unique_lock lk(lock_for(chunk));
  if (!store_->valid() || store_->lookup(chunk)) return;
  auto nc = store_->allocate();
  if (!nc.ok()) return invalidate(nc.status());
  // Order: the old chunk is read, then the commit writes it to the COW
  // (cached, together with the other data chunks of its group), flushes and
  // writes the area (FUA) -> return; the caller writes the origin only after.
  thread_local std::vector<uint8_t> buf;
  Status st = read_origin_chunk(chunk, buf);
  if (st.ok()) st = store_->commit({chunk, *nc}, buf);
  if (!st.ok()) invalidate(st);
}

Status SnapshotCore::read(uint64_t offset, std::span<uint8_t> buf) {
  const uint64_t cb = chunk_bytes();
  size_t done = 0;
  while (done < buf.size()) {
    if (!store_->valid()) return IoError("snapshot is invalid");
    uint64_t off = offset + done, c = off / cb, in = off % cb;
    size_t n = std::min<uint64_t>(cb - in, buf.size() - done);
    std::shared_lock lk(lock_for(c));
    auto nc = store_->lookup(c);
    if (nc)
      UDM_TRY(store_->cow().read(*nc * cb + in, buf.subspan(done, n)));
    else
      UDM_TRY(origin_->read(off, buf.subspan(done, n)));
    done += n;
  }
  return Status::Ok();
}

Status SnapshotCore::write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  const uint64_t cb = chunk_bytes();
  size_t done = 0;
  while (done < buf.size()) {
    if (!store_->valid()) return IoError("snapshot is invalid");
    uint64_t off = offset + done, c = off / cb, in = off % cb;
    size_t n = std::min<uint64_t>(cb - in, buf.size() - done);
    auto piece = buf.subspan(done, n);
    done += n;
    {
      std::shared_lock lk(lock_for(c));
      if (auto nc = store_->lookup(c)) {
        UDM_TRY(store_->cow().write(*nc * cb + in, piece, fua));
        continue;
      }
    }
    std::unique_lock lk(lock_for(c));
    if (auto nc = store_->lookup(c)) {
      UDM_TRY(store_->cow().write(*nc * cb + in, piece, fua));
      continue;
    }
    if (overflow_) return IoError("snapshot overflowed: no room for a new exception");
    auto nc = store_->allocate();
    if (!nc.ok()) {
      if (nc.status().code() == ENOSPC && overflow_ok_ && store_->persistent()) {
        overflow_ = true;
        return IoError("snapshot overflowed: COW is full");
      }
      invalidate(nc.status());
      return IoError("snapshot invalidated: " + nc.status().message());
    }
    uint64_t chunk_len = std::min(cb, origin_->size() - c * cb);
    Status st;
    std::span<const uint8_t> data = piece;
    thread_local std::vector<uint8_t> buf;
    if (in != 0 || n < chunk_len) {
      // Partial chunk: the old chunk with this write on top, one COW write.
      st = read_origin_chunk(c, buf);
      if (st.ok()) memcpy(buf.data() + in, piece.data(), n);
      data = buf;
    }
    // The commit writes the data and flushes before the record goes out.
    if (st.ok()) st = store_->commit({c, *nc}, data);
    if (!st.ok()) {
      invalidate(st);
      return st;
    }
  }
  return Status::Ok();
}

std::string SnapshotCore::status() const {
  if (!store_->valid()) return "Invalid";
  if (overflow_) return "Overflow";
  return store_->usage_status();
}

// ---------------------------------------------------------------- targets

static DeviceCaps passthrough_caps(const BlockDevice& a, const BlockDevice* b) {
  DeviceCaps c;
  c.read_only = a.caps().read_only;
  c.logical_block = std::max(a.caps().logical_block, b ? b->caps().logical_block : 512u);
  c.can_trim = false;
  return c;
}

DeviceCaps OriginTarget::caps() const { return passthrough_caps(*origin_, nullptr); }

Status OriginTarget::do_read(uint64_t offset, std::span<uint8_t> buf) {
  return origin_->read(offset, buf);
}

Status OriginTarget::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  // Every snapshot has the old chunks durable in its COW before the origin
  // write is issued (save_before_origin_write returns after the commit).
  std::shared_lock io(entry_->io_mu);
  entry_->save_range(offset, buf.size());
  return origin_->write(offset, buf, fua);
}

SnapshotTarget::SnapshotTarget(std::shared_ptr<SnapshotCore> core,
                               std::shared_ptr<OriginEntry> entry, uint64_t length)
    : core_(std::move(core)), entry_(std::move(entry)), length_(length) {}

SnapshotTarget::~SnapshotTarget() {
  if (attached_ && --core_->owners == 0) entry_->detach(core_.get());
}

void SnapshotTarget::resume() {
  if (attached_) return;
  core_ = entry_->attach(core_);  // adopts a live core over the same COW
  core_->owners++;
  attached_ = true;
}

DeviceCaps SnapshotTarget::caps() const {
  DeviceCaps c;
  c.logical_block = 512;
  return c;
}

std::string SnapshotTarget::status() const { return core_->status(); }

Status SnapshotTarget::do_read(uint64_t offset, std::span<uint8_t> buf) {
  return core_->read(offset, buf);
}
Status SnapshotTarget::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  return core_->write(offset, buf, fua);
}
Status SnapshotTarget::do_flush() { return core_->store().cow().flush(); }

// ---------------------------------------------------------------- merge

MergeTarget::MergeTarget(DevicePtr origin, std::shared_ptr<SnapshotCore> core,
                         std::shared_ptr<OriginEntry> entry, uint64_t length)
    : origin_(std::move(origin)), core_(std::move(core)), entry_(std::move(entry)),
      length_(length) {
  if (core_->store().exception_count() == 0) done_ = true;
}

MergeTarget::~MergeTarget() { stop_thread(); }

DeviceCaps MergeTarget::caps() const { return passthrough_caps(*origin_, nullptr); }

std::string MergeTarget::status() const {
  if (!core_->store().valid()) return "Invalid";
  if (failed_) return "Merge failed";
  return core_->store().usage_status();
}

void MergeTarget::stop_thread() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void MergeTarget::presuspend() { stop_thread(); }

void MergeTarget::resume() {
  if (!adopted_) {
    // A snapshot over the same COW still listed for this origin hands over
    // its live table (it may have exceptions newer than what we loaded).
    if (auto live = entry_->take(core_->cow_key())) core_ = std::move(live);
    adopted_ = true;
    done_ = core_->store().exception_count() == 0;
  }
  if (done_ || failed_ || thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] {
    Status st = run_merge();
    std::lock_guard lk(run_mu_);
    result_ = st;
    run_cv_.notify_all();
  });
}

Status MergeTarget::wait() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard lk(run_mu_);
  return result_;
}

Status MergeTarget::run_merge(const std::function<void(uint64_t)>& progress) {
  if (!core_->store().valid()) return IoError("snapshot is invalid: refusing to merge");
  while (!stop_) {
    bool finished = false;
    Status st = merge_one_batch(&finished);
    if (!st.ok()) {
      failed_ = true;
      log::warn("snapshot-merge: {}", st.to_string());
      return st;
    }
    if (progress) progress(core_->store().exception_count());
    if (finished) {
      done_ = true;
      return Status::Ok();
    }
  }
  return Status::Ok();
}

Status MergeTarget::merge_one_batch(bool* finished) {
  ExceptionStore& store = core_->store();
  const uint64_t cb = store.chunk_bytes();
  const size_t max = std::max<uint64_t>(1, (4u << 20) / cb);
  std::vector<CowRecord> batch = store.merge_batch(max);
  if (batch.empty()) {
    *finished = true;
    return Status::Ok();
  }
  {
    std::lock_guard lk(run_mu_);
    for (auto& r : batch) merging_.insert(r.old_chunk);
  }
  // Drain writes that entered these chunks before they were marked; later
  // writers see the mark (under the chunk lock) and wait.
  for (auto& r : batch) std::unique_lock l(core_->lock_for(r.old_chunk));
  Status st;
  {
    std::shared_lock io(entry_->io_mu);
    // Read the batch's COW chunks with as few reads as possible (records of
    // one area mostly have consecutive COW chunks), then write the origin in
    // runs of consecutive origin chunks.
    std::vector<CowRecord> s = batch;
    std::sort(s.begin(), s.end(), [](auto& a, auto& b) { return a.new_chunk < b.new_chunk; });
    thread_local std::vector<uint8_t> data, run;
    data.resize(s.size() * cb);
    for (size_t i = 0; i < s.size() && st.ok();) {
      size_t j = i + 1;
      while (j < s.size() && s[j].new_chunk == s[j - 1].new_chunk + 1) j++;
      st = store.cow()
               .read(s[i].new_chunk * cb, std::span<uint8_t>(data.data() + i * cb, (j - i) * cb))
               .context("merge: reading COW");
      i = j;
    }
    // Slot of each record's data in `data`, ordered by origin chunk.
    std::vector<std::pair<uint64_t, size_t>> by_old(s.size());
    for (size_t i = 0; i < s.size(); i++) by_old[i] = {s[i].old_chunk, i};
    std::sort(by_old.begin(), by_old.end());
    for (size_t i = 0; i < by_old.size() && st.ok();) {
      size_t j = i + 1;
      bool contiguous = true;
      while (j < by_old.size() && by_old[j].first == by_old[j - 1].first + 1) {
        contiguous = contiguous && by_old[j].second == by_old[j - 1].second + 1;
        j++;
      }
      uint64_t off = by_old[i].first * cb;
      uint64_t len = std::min<uint64_t>((j - i) * cb, origin_->size() - off);
      const uint8_t* src = data.data() + by_old[i].second * cb;
      if (!contiguous) {
        run.resize((j - i) * cb);
        for (size_t k = i; k < j; k++)
          memcpy(run.data() + (k - i) * cb, data.data() + by_old[k].second * cb, cb);
        src = run.data();
      }
      // A merge write is an origin write for the other snapshots.
      entry_->save_range(off, len, core_.get());
      st = origin_->write(off, std::span<const uint8_t>(src, len)).context("merge: writing origin");
      i = j;
    }
  }
  // The origin copies must be durable before their records disappear.
  if (st.ok()) st = origin_->flush().context("merge: flushing origin");
  if (st.ok()) st = store.commit_merge(batch.size());
  {
    std::lock_guard lk(run_mu_);
    for (auto& r : batch) merging_.erase(r.old_chunk);
    run_cv_.notify_all();
  }
  return st;
}

Status MergeTarget::do_read(uint64_t offset, std::span<uint8_t> buf) {
  ExceptionStore& store = core_->store();
  const uint64_t cb = store.chunk_bytes();
  size_t done = 0;
  while (done < buf.size()) {
    uint64_t off = offset + done, c = off / cb, in = off % cb;
    size_t n = std::min<uint64_t>(cb - in, buf.size() - done);
    std::shared_lock lk(core_->lock_for(c));
    if (auto nc = store.lookup(c))
      UDM_TRY(store.cow().read(*nc * cb + in, buf.subspan(done, n)));
    else
      UDM_TRY(origin_->read(off, buf.subspan(done, n)));
    done += n;
  }
  return Status::Ok();
}

Status MergeTarget::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  ExceptionStore& store = core_->store();
  const uint64_t cb = store.chunk_bytes();
  size_t done = 0;
  while (done < buf.size()) {
    uint64_t off = offset + done, c = off / cb, in = off % cb;
    size_t n = std::min<uint64_t>(cb - in, buf.size() - done);
    auto piece = buf.subspan(done, n);
    std::shared_lock lk(core_->lock_for(c));
    for (;;) {
      std::unique_lock r(run_mu_);
      if (!merging_.count(c)) break;
      lk.unlock();
      run_cv_.wait(r, [&] { return merging_.count(c) == 0; });
      r.unlock();
      lk.lock();
    }
    if (auto nc = store.lookup(c)) {
      // Not merged yet: the new data goes to the COW chunk and is merged later.
      UDM_TRY(store.cow().write(*nc * cb + in, piece, fua));
    } else {
      std::shared_lock io(entry_->io_mu);
      entry_->save_range(off, n, core_.get());
      UDM_TRY(origin_->write(off, piece, fua));
    }
    done += n;
  }
  return Status::Ok();
}

Status MergeTarget::do_flush() {
  UDM_TRY(origin_->flush());
  return core_->store().cow().flush();
}

// ---------------------------------------------------------------- factories

namespace {

struct CommonArgs {
  DevicePtr origin, cow;
  std::string origin_key, cow_key;
  std::string store_type;  // P, PO, N
  uint32_t chunk = 0;
};

Result<CommonArgs> parse_common(const TargetParams& p, size_t min_args, bool origin_writable,
                                const char* usage) {
  if (p.args.size() < min_args)
    return Invalid(p.type + ": expected " + usage + ", got " + std::to_string(p.args.size()) +
                   " arguments");
  CommonArgs a;
  std::string t = p.args[2];
  for (auto& ch : t) ch = char(toupper(ch));
  if (t != "P" && t != "PO" && t != "N")
    return Invalid(p.type + ": store type '" + p.args[2] + "' must be P, PO or N");
  a.store_type = t;
  UDM_ASSIGN_OR_RETURN(uint64_t cs, parse_u64_arg(p.args[3], "chunk_size"));
  if (cs != 0) UDM_TRY(validate_chunk_sectors(cs, p.type + ": chunk_size"));
  a.chunk = uint32_t(cs);
  if (p.args.size() > 4) {
    UDM_ASSIGN_OR_RETURN(uint64_t nf, parse_u64_arg(p.args[4], "#feature_args"));
    if (p.args.size() != 5 + nf)
      return Invalid(p.type + ": #feature_args says " + std::to_string(nf) + " but " +
                     std::to_string(p.args.size() - 5) + " follow");
    for (size_t i = 5; i < p.args.size(); i++)
      return NotSupported(p.type + ": feature argument '" + p.args[i] +
                          "' is not supported by udm");
  }
  if (!p.resolver) return Invalid(p.type + ": no device resolver");
  UDM_ASSIGN_OR_RETURN(a.origin_key, device_identity(p.args[0]));
  UDM_ASSIGN_OR_RETURN(a.cow_key, device_identity(p.args[1]));
  if (a.origin_key == a.cow_key) return Invalid(p.type + ": origin and COW are the same device");
  UDM_ASSIGN_OR_RETURN(a.origin, p.resolver->open(p.args[0], origin_writable));
  UDM_ASSIGN_OR_RETURN(a.cow, p.resolver->open(p.args[1], true));
  if (p.length > a.origin->size())
    return Invalid(p.type + ": segment length " + std::to_string(p.length) +
                   " bytes exceeds the origin (" + std::to_string(a.origin->size()) + " bytes)");
  return a;
}

Status check_block_sizes(const CommonArgs& a, const ExceptionStore& s, const std::string& type) {
  uint64_t cb = s.chunk_bytes();
  if (cb % a.origin->caps().logical_block || cb % a.cow->caps().logical_block)
    return Invalid(type + ": chunk size " + std::to_string(cb) +
                   " bytes is not a multiple of the devices' logical block size");
  return Status::Ok();
}

}  // namespace

Result<TargetPtr> make_origin_target(const TargetParams& p) {
  if (p.args.size() != 1)
    return Invalid("snapshot-origin: expected <origin>, got " + std::to_string(p.args.size()) +
                   " arguments");
  if (!p.resolver) return Invalid("snapshot-origin: no device resolver");
  UDM_ASSIGN_OR_RETURN(std::string key, device_identity(p.args[0]));
  UDM_ASSIGN_OR_RETURN(DevicePtr origin, p.resolver->open(p.args[0], true));
  if (p.length > origin->size())
    return Invalid("snapshot-origin: segment length exceeds the origin device");
  return TargetPtr(std::make_shared<OriginTarget>(origin, origin_entry(key), p.length));
}

Result<TargetPtr> make_snapshot_target(const TargetParams& p) {
  UDM_ASSIGN_OR_RETURN(CommonArgs a,
                       parse_common(p, 4, false, "<origin> <cow> <P|PO|N> <chunk_size>"));
  std::unique_ptr<ExceptionStore> store;
  if (a.store_type == "N") {
    UDM_ASSIGN_OR_RETURN(store, ExceptionStore::open_transient(a.cow, a.origin->size(), a.chunk));
  } else {
    UDM_ASSIGN_OR_RETURN(store,
                         ExceptionStore::open_persistent(a.cow, a.origin->size(), a.chunk));
  }
  UDM_TRY(check_block_sizes(a, *store, p.type));
  auto core = std::make_shared<SnapshotCore>(a.origin, std::move(store), a.cow_key,
                                             a.store_type == "PO");
  return TargetPtr(
      std::make_shared<SnapshotTarget>(std::move(core), origin_entry(a.origin_key), p.length));
}

Result<TargetPtr> make_merge_target(const TargetParams& p) {
  UDM_ASSIGN_OR_RETURN(CommonArgs a, parse_common(p, 4, true, "<origin> <cow> <P|PO> <chunk_size>"));
  if (a.store_type == "N")
    return Invalid("snapshot-merge: a transient (N) store cannot be merged");
  UDM_ASSIGN_OR_RETURN(auto store, ExceptionStore::open_persistent(a.cow, a.origin->size(),
                                                                   a.chunk, false));
  if (!store->valid()) return IoError("snapshot-merge: snapshot is invalid; refusing to merge");
  UDM_TRY(check_block_sizes(a, *store, p.type));
  auto core = std::make_shared<SnapshotCore>(a.origin, std::move(store), a.cow_key, false);
  return TargetPtr(std::make_shared<MergeTarget>(a.origin, std::move(core),
                                                 origin_entry(a.origin_key), p.length));
}

Result<std::shared_ptr<MergeTarget>> open_offline_merge(const std::string& origin,
                                                        const std::string& cow,
                                                        uint32_t chunk_sectors) {
  static PathResolver resolver;
  UDM_ASSIGN_OR_RETURN(DevicePtr o, resolver.open(origin, true));
  if (o->caps().read_only) return ReadOnly(origin + ": origin cannot be opened writable");
  TargetParams p;
  p.type = "snapshot-merge";
  p.length = o->size() / kSectorSize * kSectorSize;
  p.args = {origin, cow, "P", std::to_string(chunk_sectors)};
  p.resolver = &resolver;
  UDM_ASSIGN_OR_RETURN(TargetPtr t, make_merge_target(p));
  return std::static_pointer_cast<MergeTarget>(t);
}

}  // namespace udm::snapshot
