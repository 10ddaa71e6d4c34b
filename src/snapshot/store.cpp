#include "snapshot/store.h"
#include "util/scratch.h"

#include <algorithm>
#include <cstring>

#include "util/endian.h"

namespace udm::snapshot {

ChunkTable::ChunkTable(uint64_t chunks)
    : top_n_((chunks >> kLeafBits) + 1), top_(new std::atomic<Leaf*>[top_n_]) {
  for (uint64_t i = 0; i < top_n_; i++) top_[i].store(nullptr, std::memory_order_relaxed);
}

ChunkTable::~ChunkTable() {
  for (uint64_t i = 0; i < top_n_; i++) delete top_[i].load(std::memory_order_relaxed);
}

void ChunkTable::store(uint64_t c, uint64_t v) {
  if (c >> kLeafBits >= top_n_) return;  // callers validate chunk numbers
  auto& slot = top_[c >> kLeafBits];
  Leaf* l = slot.load(std::memory_order_acquire);
  if (!l) {
    if (v == 0) return;
    std::lock_guard lk(alloc_mu_);
    l = slot.load(std::memory_order_acquire);
    if (!l) {
      l = new Leaf;
      for (auto& b : l->bits) b.store(0, std::memory_order_relaxed);
      for (auto& x : l->vals) x.store(0, std::memory_order_relaxed);
      slot.store(l, std::memory_order_release);
    }
  }
  const uint64_t i = c & kLeafMask, bit = uint64_t(1) << (c % 64);
  uint64_t old;
  if (v != 0) {
    old = l->vals[i].exchange(v, std::memory_order_acq_rel);
    l->bits[i / 64].fetch_or(bit, std::memory_order_release);
  } else {
    l->bits[i / 64].fetch_and(~bit, std::memory_order_release);
    old = l->vals[i].exchange(0, std::memory_order_acq_rel);
  }
  if (old == 0 && v != 0) count_.fetch_add(1, std::memory_order_relaxed);
  if (old != 0 && v == 0) count_.fetch_sub(1, std::memory_order_relaxed);
}

static uint64_t chunks_of(uint64_t bytes, uint64_t chunk_bytes) {
  return (bytes + chunk_bytes - 1) / chunk_bytes;
}

Result<std::unique_ptr<ExceptionStore>> ExceptionStore::open_persistent(DevicePtr cow,
                                                                        uint64_t origin_bytes,
                                                                        uint32_t table_cs,
                                                                        bool format_new) {
  std::vector<uint8_t> first(kSectorSize);
  if (cow->size() < kSectorSize) return Invalid("COW device is smaller than one sector");
  UDM_TRY(cow->read(0, first).context("reading COW header"));
  auto* dev = cow.get();
  UDM_ASSIGN_OR_RETURN(ParsedCow p,
                       parse_cow(first, cow->size(), origin_bytes, table_cs,
                                 [dev](uint64_t c, std::span<uint8_t> buf) {
                                   return dev->read(c * buf.size(), buf).context("reading COW");
                                 }));
  std::unique_ptr<ExceptionStore> s(new ExceptionStore(chunks_of(origin_bytes, p.geo.chunk_bytes)));
  s->persistent_ = true;
  s->cow_ = std::move(cow);
  s->geo_ = p.geo;
  s->cow_chunks_ = s->cow_->size() / p.geo.chunk_bytes;
  s->header_ = p.header;
  const uint64_t CB = p.geo.chunk_bytes;
  switch (p.kind) {
    case ParsedCow::Kind::kNew: {
      if (!format_new) return Invalid("COW has no snapshot header (magic 0): nothing to merge");
      if (s->cow_->caps().read_only) return ReadOnly("COW is read-only and has no header yet");
      // Area 0 zeroed (FUA) before the header (FUA): a header on disk always
      // has a readable, empty table behind it.
      std::vector<uint8_t> zero(CB, 0);
      UDM_TRY(s->cow_->write(CB, zero, true).context("formatting COW area 0"));
      s->header_ = {kCowMagic, 1, kCowVersion, p.geo.chunk_sectors};
      auto h = encode_header_chunk(s->header_, CB);
      UDM_TRY(s->cow_->write(0, h, true).context("writing COW header"));
      s->next_free_ = 2;
      s->clean_area_ = 0;
      break;
    }
    case ParsedCow::Kind::kInvalid:
      s->valid_ = false;
      s->next_free_ = 2;
      break;
    case ParsedCow::Kind::kValid: {
      s->records_ = std::move(p.records);
      s->committed_ = 0;
      for (auto& r : s->records_) s->table_.set(r.old_chunk, r.new_chunk);
      s->next_free_ = std::max<uint64_t>(2, p.max_new_chunk + 1);
      if (s->geo_.is_area_chunk(s->next_free_)) s->next_free_++;
      break;
    }
  }
  return s;
}

Result<std::unique_ptr<ExceptionStore>> ExceptionStore::open_transient(DevicePtr cow,
                                                                       uint64_t origin_bytes,
                                                                       uint32_t cs) {
  if (cs == 0) cs = kDefaultChunkSectors;
  UDM_ASSIGN_OR_RETURN(CowGeometry g, make_geometry(cs));
  std::unique_ptr<ExceptionStore> s(new ExceptionStore(chunks_of(origin_bytes, g.chunk_bytes)));
  s->persistent_ = false;
  s->cow_ = std::move(cow);
  s->geo_ = g;
  s->cow_chunks_ = s->cow_->size() / g.chunk_bytes;
  s->next_free_ = 0;
  return s;
}

Result<uint64_t> ExceptionStore::allocate() {
  std::lock_guard lk(mu_);
  if (!valid_) return IoError("snapshot is invalid");
  uint64_t c = next_free_;
  if (c + 1 > cow_chunks_) return NoSpace("COW is full");
  if (persistent_) {
    // When this chunk is the last one before the next metadata area, that
    // area must exist too: it is zeroed as the terminator when the current
    // area fills (the seed's "+ changed/E" term).
    if (geo_.is_area_chunk(c + 1) && c + 2 > cow_chunks_) return NoSpace("COW is full");
    next_free_ = c + 1;
    if (geo_.is_area_chunk(next_free_)) next_free_++;
  } else {
    next_free_ = c + 1;
  }
  return c;
}

Status ExceptionStore::write_areas(size_t first) {
  const uint64_t E = geo_.per_area, CB = geo_.chunk_bytes;
  const size_t n = records_.size();
  // Flush #1 (the kernel's PREFLUSH): every data chunk copied for these
  // records reached the COW before this point; make them durable before any
  // record that points at them.
  UDM_TRY(cow_->flush());
  uint64_t first_area = first / E, last_area = (n - 1) / E;
  if (n % E == 0) {
    // The last touched area is now full: its successor must read as an empty
    // area on disk before the full one is written.
    std::vector<uint8_t> zero(CB, 0);
    UDM_TRY(cow_->write(geo_.area_chunk(last_area + 1) * CB, zero, true));
  }
  // Newest area first, each with FUA: whatever prefix reaches the disk, the
  // on-disk table is the old table plus a prefix-closed set of new records.
  const uint64_t lb = std::max<uint64_t>(kSectorSize, cow_->caps().logical_block);
  Scratch<uint8_t> buf_scratch;
  auto& buf = *buf_scratch;
  const uint64_t clean = clean_area_;
  for (uint64_t k = last_area + 1; k-- > first_area;) {
    size_t b = k * E, e = std::min<size_t>(n, (k + 1) * E);
    // Bytes [lo, hi) of the area: the blocks holding this commit's records
    // when the rest of the area is known to be zero (or already these
    // records) on disk, the whole area otherwise.
    uint64_t lo = 0, hi = CB;
    if (k == clean && lb <= CB) {
      lo = (std::max(first, b) - b) * kRecordSize / lb * lb;
      hi = std::min<uint64_t>(CB, ((e - b) * kRecordSize + lb - 1) / lb * lb);
    }
    buf.assign(hi - lo, 0);
    for (size_t i = b + lo / kRecordSize; i < e && (i - b) * kRecordSize < hi; i++) {
      uint8_t* p = buf.data() + (i - b) * kRecordSize - lo;
      put_le64(p, records_[i].old_chunk);
      put_le64(p + 8, records_[i].new_chunk);
    }
    UDM_TRY(cow_->write(geo_.area_chunk(k) * CB + lo, buf, true));
    // The newest area's tail is zero now (a full write wrote zeros after
    // the records); an area that filled up is done.
    if (k == last_area) clean_area_ = (e - b == E) ? last_area + 1 : last_area;
  }
  return Status::Ok();
}

Status ExceptionStore::write_data(std::vector<Pending>& batch) {
  const uint64_t CB = geo_.chunk_bytes;
  std::vector<Pending*> d;
  for (auto& p : batch)
    if (!p.data.empty()) d.push_back(&p);
  std::sort(d.begin(), d.end(), [](auto* a, auto* b) { return a->r.new_chunk < b->r.new_chunk; });
  Scratch<uint8_t> run_scratch;
  auto& run = *run_scratch;
  for (size_t i = 0; i < d.size();) {
    // A run: consecutive COW chunks, every one but the last a full chunk.
    size_t j = i + 1;
    while (j < d.size() && d[j]->r.new_chunk == d[j - 1]->r.new_chunk + 1 &&
           d[j - 1]->data.size() == CB)
      j++;
    std::span<const uint8_t> out = d[i]->data;
    if (j - i > 1) {
      // The chunks of one batch sit back to back in memory already (the
      // caller's buffer, or the old chunks read in one go): no copy then.
      bool adjacent = true;
      for (size_t k = i + 1; k < j && adjacent; k++)
        adjacent = d[k]->data.data() == d[k - 1]->data.data() + CB;
      if (adjacent) {
        out = std::span<const uint8_t>(d[i]->data.data(), (j - i - 1) * CB + d[j - 1]->data.size());
      } else {
        run.resize((j - i - 1) * CB + d[j - 1]->data.size());
        for (size_t k = i; k < j; k++)
          memcpy(run.data() + (k - i) * CB, d[k]->data.data(), d[k]->data.size());
        out = run;
      }
    }
    UDM_TRY(cow_->write(d[i]->r.new_chunk * CB, out).context("writing COW data chunks"));
    i = j;
  }
  return Status::Ok();
}

Status ExceptionStore::commit(CowRecord r, std::span<const uint8_t> data) {
  CommitItem it{r, data};
  return commit(std::span<const CommitItem>(&it, 1));
}

Status ExceptionStore::commit(std::span<const CommitItem> items) {
  if (items.empty()) return Status::Ok();
  if (!persistent_) {
    for (auto& it : items)
      if (!it.data.empty())
        UDM_TRY(cow_->write(it.r.new_chunk * geo_.chunk_bytes, it.data)
                    .context("writing COW data chunk"));
  } else {
    std::unique_lock lk(mu_);
    if (!valid_) return IoError("snapshot is invalid");
    pending_.insert(pending_.end(), items.begin(), items.end());
    queued_ += items.size();
    const uint64_t my = queued_;
    while (committed_ < my) {
      if (!sticky_.ok()) return sticky_;
      if (!committing_) {
        // Become the leader: write everything queued so far in one go.
        committing_ = true;
        std::vector<Pending> batch;
        batch.swap(pending_);
        uint64_t upto = queued_;
        size_t first = records_.size();
        for (auto& p : batch) records_.push_back(p.r);
        lk.unlock();
        // Data chunks (cached) -> flush + areas (write_areas).
        Status st = write_data(batch);
        if (st.ok()) st = write_areas(first);
        lk.lock();
        committing_ = false;
        if (!st.ok())
          sticky_ = st.context("committing COW metadata");
        else
          committed_ = upto;
        cv_.notify_all();
        continue;
      }
      cv_.wait(lk);
    }
  }
  for (auto& it : items) table_.set(it.r.old_chunk, it.r.new_chunk);
  return Status::Ok();
}

Status ExceptionStore::invalidate() {
  {
    std::lock_guard lk(mu_);
    if (!valid_) return Status::Ok();
    valid_ = false;
  }
  if (!persistent_) return Status::Ok();
  CowHeader h = header_;
  h.valid = 0;
  auto buf = encode_header_chunk(h, geo_.chunk_bytes);
  return cow_->write(0, buf, true).context("invalidating COW header");
}

std::vector<CowRecord> ExceptionStore::merge_batch(size_t max) {
  std::lock_guard lk(mu_);
  const uint64_t E = geo_.per_area;
  if (!merging_) {
    merging_ = true;
    merge_area_ = records_.size() / E;
  }
  // The newest records, across areas: commit_merge rewrites every area the
  // batch empties or shortens with one flush for all of them.
  size_t n = std::min<size_t>(std::max<size_t>(max, 1), records_.size());
  return std::vector<CowRecord>(records_.end() - n, records_.end());
}

Status ExceptionStore::commit_merge(size_t n) {
  std::vector<CowRecord> dropped;
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> areas;  // (area, its new bytes), highest area first
  uint64_t k;
  {
    std::lock_guard lk(mu_);
    const uint64_t E = geo_.per_area;
    const size_t count = records_.size();
    n = std::min(n, count);
    if (n == 0) return Status::Ok();
    dropped.assign(records_.end() - n, records_.end());
    records_.resize(count - n);
    // Areas holding the dropped records: (count-n)/E .. (count-1)/E. The
    // lowest keeps the records before the batch; the others become empty.
    k = (count - n) / E;
    const uint64_t top = (count - 1) / E;
    for (uint64_t a = top + 1; a-- > k;) {
      const size_t b = static_cast<size_t>(a * E);
      const size_t e = std::min(records_.size(), static_cast<size_t>((a + 1) * E));
      areas.emplace_back(a, encode_area(std::span<const CowRecord>(records_.data() + std::min(b, e), e > b ? e - b : 0),
                                        geo_.chunk_bytes));
    }
    next_free_ = geo_.area_chunk(k) + (records_.size() - k * E) + 1;
    merge_area_ = k;
  }
  // PREFLUSH, the areas (newest first), then one flush for all: the origin
  // copies were flushed by the caller (a different device). Any subset of
  // the area writes reaching the disk is a valid store - the loader stops at
  // the first area that is not full, and an area that still lists merged
  // records only has them merged again (the origin already holds their data).
  UDM_TRY(cow_->flush());
  for (size_t i = 0; i < areas.size(); i++)
    UDM_TRY(cow_->write(geo_.area_chunk(areas[i].first) * geo_.chunk_bytes, areas[i].second,
                        i + 1 == areas.size())
                .context("writing COW metadata area during merge"));
  {
    std::lock_guard lk(mu_);
    clean_area_ = k;  // written whole: zero after its remaining records
  }
  for (auto& r : dropped) table_.clear(r.old_chunk);
  return Status::Ok();
}

std::string ExceptionStore::usage_status() const {
  std::lock_guard lk(mu_);
  uint64_t cs = geo_.chunk_sectors;
  uint64_t total = cow_->size() / kSectorSize;
  if (!persistent_) return std::to_string(next_free_ * cs) + "/" + std::to_string(total) + " 0";
  uint64_t area = merging_ ? merge_area_ : records_.size() / geo_.per_area;
  return std::to_string(next_free_ * cs) + "/" + std::to_string(total) + " " +
         std::to_string((area + 2) * cs);
}

}  // namespace udm::snapshot
