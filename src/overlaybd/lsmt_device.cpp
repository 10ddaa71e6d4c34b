#include "overlaybd/lsmt_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace udm::obd {
namespace {

// Walks the RW map's segments over [start, end): f(s, e, seg-or-null).
template <class F>
void walk_map(const std::map<uint64_t, Seg>& m, uint64_t start, uint64_t end, F&& f) {
  auto it = m.upper_bound(start);
  if (it != m.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > start) it = prev;
  }
  uint64_t pos = start;
  for (; it != m.end() && pos < end; ++it) {
    const Seg& s = it->second;
    if (s.start >= end) break;
    if (s.start > pos) {
      f(pos, s.start, nullptr);
      pos = s.start;
    }
    uint64_t e = std::min(s.end, end);
    f(pos, e, &s);
    pos = e;
  }
  if (pos < end) f(pos, end, nullptr);
}

Status read_clipped(BlockDevice& dev, uint64_t off, std::span<uint8_t> buf) {
  // Reads past the end of a layer file are zero-filled (as the reference does).
  uint64_t sz = dev.size();
  if (off >= sz) {
    std::memset(buf.data(), 0, buf.size());
    return Status::Ok();
  }
  uint64_t n = std::min<uint64_t>(buf.size(), sz - off);
  UDM_TRY(dev.read(off, buf.first(n)));
  if (n < buf.size()) std::memset(buf.data() + n, 0, buf.size() - n);
  return Status::Ok();
}

}  // namespace

Result<LsmtLayer> open_lsmt_layer(DevicePtr file, std::string name) {
  LsmtLayer L;
  L.name = name;
  uint64_t fsize = file->size();
  if (fsize < 2 * kLsmtHeaderSize)
    return Corrupt(fmt::format("lsmt {}: file too small ({} bytes)", name, fsize));
  std::vector<uint8_t> hb(kLsmtHeaderSize);
  // What every open reads stays cached on a remote file (pinned): header, trailer, index.
  file->keep_cached(0, kLsmtHeaderSize);
  UDM_TRY(file->read(0, hb));
  UDM_ASSIGN_OR_RETURN(L.header, parse_lsmt_header(hb, "header"));
  if (!L.header.has(kLfIsHeader)) return Corrupt("lsmt header: field flags lacks is_header");
  if (!L.header.has(kLfIsDataFile))
    return Corrupt("lsmt header: field flags lacks is_data_file (an RW index file? use rw <data> <index>)");
  if (L.header.has(kLfSparseRw)) return NotSupported("lsmt header: sparse RW layers are not supported");
  uint64_t toff = fsize - kLsmtHeaderSize;
  if (fsize % 512) return Corrupt(fmt::format("lsmt: file size {} not a multiple of 512", fsize));
  file->keep_cached(toff, kLsmtHeaderSize);
  UDM_TRY(file->read(toff, hb));
  UDM_ASSIGN_OR_RETURN(L.trailer, parse_lsmt_header(hb, "trailer"));
  const LsmtHeader& t = L.trailer;
  if (t.has(kLfIsHeader)) return Corrupt("lsmt trailer: field flags has is_header (file not sealed or committed)");
  if (!t.has(kLfIsDataFile)) return Corrupt("lsmt trailer: field flags lacks is_data_file");
  if (!t.has(kLfSealed)) return Corrupt("lsmt trailer: field flags lacks sealed");
  if (t.index_offset % 512 || t.index_offset < kLsmtHeaderSize || t.index_offset > toff)
    return Corrupt(fmt::format("lsmt trailer: field index_offset {} invalid", t.index_offset));
  if (t.index_size > kLsmtMaxRoEntries || t.index_size * 16 > toff - t.index_offset)
    return Corrupt(fmt::format("lsmt trailer: field index_size {} too large", t.index_size));
  std::vector<uint8_t> idx(t.index_size * 16);
  if (!idx.empty()) {
    file->keep_cached(t.index_offset, idx.size());
    UDM_TRY(file->read(t.index_offset, idx));
  }
  UDM_ASSIGN_OR_RETURN(L.entries, parse_ro_index(idx, t.index_offset));
  L.padding_entries = t.index_size - L.entries.size();
  for (auto& e : L.entries)
    if (e.end() > (t.virtual_size >> 9) && t.virtual_size)
      return Corrupt(fmt::format("lsmt index: entry at sector {} +{} beyond virtual_size {}", e.offset,
                                 e.length, t.virtual_size));
  L.file = std::move(file);
  return L;
}

Status create_rw_layer(GrowFile& data, GrowFile& index, uint64_t vsize, const std::string& uuid,
                       const std::string& parent_uuid) {
  if (vsize == 0 || vsize % 512) return Invalid(fmt::format("rw layer: virtual size {} must be a positive multiple of 512", vsize));
  LsmtHeader h;
  h.flags = kLfIsHeader | kLfIsDataFile;
  h.virtual_size = vsize;
  h.uuid = uuid.empty() ? random_uuid() : uuid;
  h.parent_uuid = parent_uuid;
  std::vector<uint8_t> b(kLsmtHeaderSize);
  encode_lsmt_header(h, b);
  UDM_TRY(data.pwrite(0, b));
  h.flags = kLfIsHeader;
  h.index_offset = kLsmtHeaderSize;
  h.index_size = 0;
  encode_lsmt_header(h, b);
  UDM_TRY(index.pwrite(0, b));
  UDM_TRY(data.sync());
  return index.sync();
}

Result<std::shared_ptr<LsmtDevice>> LsmtDevice::open(std::vector<LsmtLayer> layers,
                                                     std::optional<RwLayerFiles> rw, Options opts) {
  if (layers.size() > 255) return Invalid("lsmt: at most 255 read-only layers");
  std::shared_ptr<LsmtDevice> d(new LsmtDevice());
  if (opts.check_chain) {
    for (size_t i = 1; i < layers.size(); i++) {
      const auto& p = layers[i].trailer.parent_uuid;
      const auto& u = layers[i - 1].trailer.uuid;
      if (!is_zero_uuid(p) && !is_zero_uuid(u) && p != u)
        return Invalid(fmt::format("lsmt: layer {} ({}) has parent_uuid {} but layer {} ({}) has uuid {}", i,
                                   layers[i].name, p, i - 1, layers[i - 1].name, u));
    }
  }
  for (auto it = layers.rbegin(); it != layers.rend() && d->vsize_ == 0; ++it)
    d->vsize_ = it->trailer.virtual_size;
  SegMap merged;
  for (size_t i = 0; i < layers.size(); i++)
    for (const auto& e : layers[i].entries)
      merged.insert(Seg{e.offset, e.end(), e.moffset, static_cast<uint32_t>(i), e.zeroed});
  d->ro_ = merged.to_vector();
  d->layers_ = std::move(layers);
  if (rw) {
    std::vector<uint8_t> hb(kLsmtHeaderSize);
    UDM_TRY(rw->data->pread(0, hb));
    UDM_ASSIGN_OR_RETURN(LsmtHeader dh, parse_lsmt_header(hb, "rw data header"));
    if (!dh.has(kLfIsHeader) || !dh.has(kLfIsDataFile))
      return Corrupt("lsmt rw data header: field flags is not a data-file header");
    if (dh.has(kLfSealed)) return Corrupt("lsmt rw data header: field flags has sealed (layer is read-only)");
    if (dh.has(kLfSparseRw)) return NotSupported("lsmt rw data header: sparse RW layers are not supported");
    uint64_t data_size = rw->data->size();
    if (data_size < kLsmtHeaderSize) return Corrupt("lsmt rw data file: truncated header");
    UDM_TRY(rw->index->pread(0, hb));
    UDM_ASSIGN_OR_RETURN(LsmtHeader ih, parse_lsmt_header(hb, "rw index header"));
    if (!ih.has(kLfIsHeader) || ih.has(kLfIsDataFile))
      return Corrupt("lsmt rw index header: field flags is not an index-file header");
    if (ih.index_offset != kLsmtHeaderSize)
      return Corrupt(fmt::format("lsmt rw index header: field index_offset {} (expected 4096)", ih.index_offset));
    uint64_t isize = rw->index->size();
    if (isize < kLsmtHeaderSize) return Corrupt("lsmt rw index file: truncated header");
    uint64_t nrec = (isize - kLsmtHeaderSize) / 16;
    if (nrec > (1ull << 28)) return Corrupt("lsmt rw index file: too many records");
    std::vector<uint8_t> recs(nrec * 16);
    if (!recs.empty()) UDM_TRY(rw->index->pread(kLsmtHeaderSize, recs));
    UDM_ASSIGN_OR_RETURN(auto segs, parse_rw_index(recs, data_size));
    if (opts.check_chain && !d->layers_.empty()) {
      const auto& u = d->layers_.back().trailer.uuid;
      if (!is_zero_uuid(dh.parent_uuid) && !is_zero_uuid(u) && dh.parent_uuid != u)
        return Invalid(fmt::format("lsmt: rw layer has parent_uuid {} but the top layer ({}) has uuid {}",
                                   dh.parent_uuid, d->layers_.back().name, u));
    }
    for (auto& s : segs) d->rw_map_.insert(s);
    d->data_end_ = (data_size + 511) / 512 * 512;
    d->index_end_ = kLsmtHeaderSize + nrec * 16;
    if (dh.virtual_size) d->vsize_ = dh.virtual_size;
    d->rw_header_ = dh;
    d->rw_ = std::move(rw);
  }
  if (d->vsize_ == 0) return Invalid("lsmt: no layer has a virtual size");
  d->length_ = d->vsize_;
  return d;
}

LsmtDevice::~LsmtDevice() {
  if (rw_) (void)do_flush();
}

DeviceCaps LsmtDevice::caps() const {
  DeviceCaps c;
  c.read_only = !rw_;
  c.can_trim = rw_.has_value();
  c.trim_zeroes = rw_.has_value();
  c.can_write_zeroes = rw_.has_value();
  c.fast_zero = rw_.has_value();
  c.can_flush = rw_.has_value();
  c.logical_block = 512;
  c.physical_block = 4096;
  return c;
}

std::string LsmtDevice::status() const {
  std::shared_lock g(mu_);
  if (!rw_) return fmt::format("{} {} ro", layers_.size(), ro_.size());
  return fmt::format("{} {} rw {} {} {}", layers_.size(), ro_.size(), rw_map_.size(), pending_.size(),
                     data_end_);
}

std::vector<Seg> LsmtDevice::rw_segments() const {
  std::shared_lock g(mu_);
  return rw_map_.to_vector();
}

Status LsmtDevice::read_rw_data(uint64_t byte_off, std::span<uint8_t> buf) {
  if (!rw_) return Invalid("no rw layer");
  return rw_->data->pread(byte_off, buf);
}

Status LsmtDevice::read_ro(uint64_t start, uint64_t end, uint8_t* out) {
  Status st;
  walk_segments(ro_, start, end, [&](uint64_t s, uint64_t e, const Seg* seg) {
    if (!st.ok()) return;
    uint8_t* dst = out + (s - start) * 512;
    size_t n = (e - s) * 512;
    if (!seg || seg->zeroed) {
      std::memset(dst, 0, n);
      return;
    }
    uint64_t src = (seg->moffset + (s - seg->start)) * 512;
    st = read_clipped(*layers_[seg->layer].file, src, std::span<uint8_t>(dst, n));
  });
  return st;
}

Status LsmtDevice::read_aligned(uint64_t sector, uint64_t nsect, uint8_t* out) {
  if (!rw_) return read_ro(sector, sector + nsect, out);
  struct Piece {
    uint64_t s, e, moffset;
    int kind;  // 0 hole, 1 zero, 2 rw data
  };
  std::vector<Piece> pieces;
  {
    std::shared_lock g(mu_);
    walk_map(rw_map_.map(), sector, sector + nsect, [&](uint64_t s, uint64_t e, const Seg* seg) {
      if (!seg) pieces.push_back({s, e, 0, 0});
      else if (seg->zeroed) pieces.push_back({s, e, 0, 1});
      else pieces.push_back({s, e, seg->moffset + (s - seg->start), 2});
    });
  }
  // RW data is append-only: what a segment points at never changes, so the
  // reads below need no lock.
  for (const auto& p : pieces) {
    uint8_t* dst = out + (p.s - sector) * 512;
    size_t n = (p.e - p.s) * 512;
    if (p.kind == 0) UDM_TRY(read_ro(p.s, p.e, dst));
    else if (p.kind == 1) std::memset(dst, 0, n);
    else UDM_TRY(rw_->data->pread(p.moffset * 512, std::span<uint8_t>(dst, n)));
  }
  return Status::Ok();
}

Status LsmtDevice::do_read(uint64_t off, std::span<uint8_t> buf) {
  if (buf.empty()) return Status::Ok();
  if (off % 512 == 0 && buf.size() % 512 == 0) return read_aligned(off / 512, buf.size() / 512, buf.data());
  uint64_t s0 = off / 512, s1 = (off + buf.size() + 511) / 512;
  std::vector<uint8_t> tmp((s1 - s0) * 512);
  UDM_TRY(read_aligned(s0, s1 - s0, tmp.data()));
  std::memcpy(buf.data(), tmp.data() + (off - s0 * 512), buf.size());
  return Status::Ok();
}

// Durability of the RW layer: a write appends its data to the data file and
// queues an index record in memory (reads see it at once through rw_map_).
// flush() makes the data file durable (fdatasync) BEFORE it appends the
// queued records to the index file and syncs that; so an index record on
// disk never points at data that is not, and after a crash the layer opens
// with every write that completed before the last successful flush.
Status LsmtDevice::write_aligned(uint64_t sector, std::span<const uint8_t> buf) {
  uint64_t nsect = buf.size() / 512;
  for (uint64_t done = 0; done < nsect;) {
    uint64_t n = std::min<uint64_t>(kLsmtRwMaxWrite, nsect - done);
    uint64_t pos;
    {
      std::unique_lock g(mu_);
      pos = data_end_;
      data_end_ += n * 512;
    }
    UDM_TRY(rw_->data->pwrite(pos, buf.subspan(done * 512, n * 512)));
    {
      std::unique_lock g(mu_);
      LsmtEntry r;
      r.offset = sector + done;
      r.length = static_cast<uint32_t>(n);
      r.moffset = pos / 512;
      pending_.push_back(r);
      rw_map_.insert(Seg{r.offset, r.end(), r.moffset, 0, false});
    }
    done += n;
  }
  writes_++;
  return Status::Ok();
}

Status LsmtDevice::zero_aligned(uint64_t sector, uint64_t nsect) {
  std::unique_lock g(mu_);
  for (uint64_t done = 0; done < nsect;) {
    uint64_t n = std::min<uint64_t>(kLsmtMaxEntryLen, nsect - done);
    LsmtEntry r;
    r.offset = sector + done;
    r.length = static_cast<uint32_t>(n);
    r.moffset = data_end_ / 512;
    r.zeroed = true;
    pending_.push_back(r);
    rw_map_.insert(Seg{r.offset, r.end(), r.moffset, 0, true});
    done += n;
  }
  discards_++;
  return Status::Ok();
}

Status LsmtDevice::do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) {
  if (!rw_) return ReadOnly("lsmt: no writable layer");
  if (buf.empty()) return Status::Ok();
  if (off % 512 == 0 && buf.size() % 512 == 0) {
    UDM_TRY(write_aligned(off / 512, buf));
  } else {
    // Read-modify-write of the enclosing sectors.
    uint64_t s0 = off / 512, s1 = (off + buf.size() + 511) / 512;
    std::vector<uint8_t> tmp((s1 - s0) * 512);
    UDM_TRY(read_aligned(s0, s1 - s0, tmp.data()));
    std::memcpy(tmp.data() + (off - s0 * 512), buf.data(), buf.size());
    UDM_TRY(write_aligned(s0, tmp));
  }
  return fua ? do_flush() : Status::Ok();
}

Status LsmtDevice::do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool may_unmap) {
  if (!rw_) return ReadOnly("lsmt: no writable layer");
  uint64_t a = (off + 511) / 512 * 512, b = (off + len) / 512 * 512;
  if (a >= b) {
    std::vector<uint8_t> z(len, 0);
    return do_write(off, z, fua);
  }
  if (a > off) {
    std::vector<uint8_t> z(a - off, 0);
    UDM_TRY(do_write(off, z, false));
  }
  if (off + len > b) {
    std::vector<uint8_t> z(off + len - b, 0);
    UDM_TRY(do_write(b, z, false));
  }
  UDM_TRY(zero_aligned(a / 512, (b - a) / 512));
  return fua ? do_flush() : Status::Ok();
}

Status LsmtDevice::do_trim(uint64_t off, uint64_t len) { return do_write_zeroes(off, len, false, true); }

Status LsmtDevice::do_allocation(uint64_t off, uint64_t len, AllocMap& out) {
  // Work in sectors, then clip the first and last runs to the byte range.
  const uint64_t s0 = off / 512, s1 = (off + len + 511) / 512;
  const uint32_t top = rw_ ? 1 : 0;
  const uint32_t nlayers = static_cast<uint32_t>(layers_.size());
  uint64_t skip = off - s0 * 512, left = len;
  auto add = [&](uint64_t s, uint64_t e, AllocKind k, uint32_t depth) {
    uint64_t n = (e - s) * 512;
    uint64_t cut = std::min(skip, n);
    skip -= cut;
    n = std::min(n - cut, left);
    left -= n;
    add_alloc_run(out, n, k, depth);
  };
  auto ro = [&](uint64_t s, uint64_t e) {
    walk_segments(ro_, s, e, [&](uint64_t a, uint64_t b, const Seg* seg) {
      if (!seg) add(a, b, AllocKind::kHole, 0);
      else add(a, b, seg->zeroed ? AllocKind::kZero : AllocKind::kData, top + nlayers - seg->layer);
    });
  };
  if (!rw_) {
    ro(s0, s1);
    return Status::Ok();
  }
  {
    std::shared_lock g(mu_);
    walk_map(rw_map_.map(), s0, s1, [&](uint64_t s, uint64_t e, const Seg* seg) {
      if (!seg) ro(s, e);  // ro_ never changes
      else add(s, e, seg->zeroed ? AllocKind::kZero : AllocKind::kData, 1);
    });
  }
  return Status::Ok();
}

Status LsmtDevice::do_flush() {
  if (!rw_) return Status::Ok();
  std::lock_guard fg(flush_mu_);
  std::vector<LsmtEntry> batch;
  {
    std::unique_lock g(mu_);
    batch.swap(pending_);
  }
  auto requeue = [&](Status s) {
    std::unique_lock g(mu_);
    pending_.insert(pending_.begin(), batch.begin(), batch.end());
    return s;
  };
  // 1. data durable.
  Status s = rw_->data->sync();
  if (!s.ok()) return requeue(s.context("lsmt flush: data file"));
  if (batch.empty()) return Status::Ok();
  // 2. then the records pointing at it.
  std::vector<uint8_t> recs(batch.size() * 16);
  for (size_t i = 0; i < batch.size(); i++) encode_lsmt_entry(batch[i], recs.data() + 16 * i);
  s = rw_->index->pwrite(index_end_, recs);
  if (s.ok()) s = rw_->index->sync();
  if (!s.ok()) return requeue(s.context("lsmt flush: index file"));
  index_end_ += recs.size();
  return Status::Ok();
}

}  // namespace udm::obd
