#include "overlaybd/zfile_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "overlaybd/tar_format.h"

namespace udm::obd {

DeviceCaps SliceDevice::caps() const {
  DeviceCaps c = dev_->caps();
  c.read_only = true;
  c.can_trim = false;
  c.trim_zeroes = false;
  c.can_write_zeroes = false;
  c.fast_zero = false;
  return c;
}

DeviceCaps ZFileDevice::caps() const {
  DeviceCaps c;
  c.read_only = true;
  c.can_write_zeroes = false;
  c.can_flush = false;
  c.logical_block = 512;
  c.physical_block = std::max<uint32_t>(4096, header_.block_size);
  return c;
}

Result<std::shared_ptr<ZFileDevice>> ZFileDevice::open(DevicePtr blob, std::shared_ptr<BlockCache> cache) {
  uint64_t fsize = blob->size();
  if (fsize < 2 * kZFileHeaderSize) return Corrupt(fmt::format("zfile: file too small ({} bytes)", fsize));
  std::vector<uint8_t> hb(kZFileHeaderSize), tb(kZFileHeaderSize);
  // What every open reads stays cached on a remote blob (pinned): header, trailer, jump table.
  blob->keep_cached(0, kZFileHeaderSize);
  UDM_TRY(blob->read(0, hb));
  UDM_ASSIGN_OR_RETURN(ZFileHeader h, parse_zfile_header(hb, "header"));
  std::optional<ZFileHeader> trailer;
  if (!h.has(kZfHeaderOverwrite)) {
    blob->keep_cached(fsize - kZFileHeaderSize, kZFileHeaderSize);
    UDM_TRY(blob->read(fsize - kZFileHeaderSize, tb));
    UDM_ASSIGN_OR_RETURN(ZFileHeader t, parse_zfile_header(tb, "trailer"));
    trailer = t;
  }
  UDM_ASSIGN_OR_RETURN(ZFileHeader fin, zfile_final_fields(h, trailer ? &*trailer : nullptr, fsize));
  std::vector<uint8_t> index(fin.index_size * 4);
  if (!index.empty()) {
    blob->keep_cached(fin.index_offset, index.size());
    UDM_TRY(blob->read(fin.index_offset, index));
  }
  UDM_ASSIGN_OR_RETURN(ZFileLayout layout, zfile_build_layout(fin, index, fsize));
  std::shared_ptr<ZFileDevice> d(new ZFileDevice());
  d->blob_ = std::move(blob);
  d->cache_ = cache ? std::move(cache) : BlockCache::shared();
  d->header_ = h;
  d->layout_ = std::move(layout);
  d->owner_ = BlockCache::new_owner();
  d->zero_state_ = std::make_unique<std::atomic<uint8_t>[]>(d->layout_.num_blocks());
  return d;
}

ZFileDevice::~ZFileDevice() {
  if (cache_) cache_->drop_owner(owner_);
}

uint64_t ZFileDevice::block_len(uint64_t b) const {
  uint64_t bs = layout_.h.block_size;
  return std::min<uint64_t>(bs, layout_.h.original_file_size - b * bs);
}

Status ZFileDevice::do_read(uint64_t off, std::span<uint8_t> buf) {
  if (buf.empty()) return Status::Ok();
  const uint64_t bs = layout_.h.block_size;
  const uint64_t nblocks = layout_.num_blocks();
  const uint64_t end = off + buf.size();
  // size() is original_file_size, which needs exactly nblocks blocks, so the
  // public read's range check keeps b1 < nblocks.
  const uint64_t b0 = off / bs, b1 = (end - 1) / bs;  // inclusive
  uint64_t last = b1;
  // A small read that continues the previous one reads ahead: when less than
  // half of the readahead_ window beyond it has been decompressed into the
  // cache, the blocks up to a window ahead are. Large reads need none: they
  // already cover many blocks, and concurrent large sequential requests
  // would only decode each other's blocks twice.
  const bool seq = last_end_.exchange(end) == off && buf.size() < readahead_;
  if (seq) {
    uint64_t window = std::max<uint64_t>(1, readahead_ / bs), next = ra_next_.load();
    if (next <= b1 + window / 2 || next > b1 + window + 1) {  // running out, or another stream's
      last = std::min<uint64_t>(nblocks - 1, b1 + window);
      ra_next_.store(last + 1);
    }
  }
  // A block the request covers entirely is decoded straight into `buf` and
  // not cached; partly covered and read-ahead blocks go through the cache.
  auto whole = [&](uint64_t b) { return b <= b1 && b * bs >= off && b * bs + block_len(b) <= end; };
  std::vector<BlockCache::Block> blocks(last - b0 + 1);
  std::vector<bool> done(last - b0 + 1, false);
  // What the cache holds: partly covered and read-ahead blocks, and the
  // whole blocks of a sequential read (read-ahead put them there).
  for (uint64_t b = b0; b <= last; b++) {
    if (whole(b) && !seq) continue;
    blocks[b - b0] = cache_->peek(owner_, b);
    if (blocks[b - b0] && b <= b1) hits_++;
  }
  // Fetch each run of missing blocks with one read of the stored bytes.
  std::vector<uint8_t> stored;
  for (uint64_t b = b0; b <= last;) {
    if (blocks[b - b0]) {
      b++;
      continue;
    }
    uint64_t e = b;
    while (e + 1 <= last && !blocks[e + 1 - b0] && layout_.starts[e + 2] - layout_.starts[b] <= (16u << 20))
      e++;
    uint64_t s0 = layout_.starts[b], s1 = layout_.starts[e + 1];
    stored.resize(s1 - s0);
    Status st = blob_->read(s0, stored);
    if (!st.ok()) {
      if (b > b1) break;  // read-ahead failure is not the caller's
      return st.context(fmt::format("zfile: reading blocks {}..{}", b, e));
    }
    for (uint64_t x = b; x <= e; x++) {
      std::span<const uint8_t> src(stored.data() + (layout_.starts[x] - s0),
                                   layout_.starts[x + 1] - layout_.starts[x]);
      if (whole(x)) {
        UDM_TRY(zfile_decode_block(layout_.h, x, src,
                                   std::span<uint8_t>(buf.data() + (x * bs - off), block_len(x))));
        done[x - b0] = true;
        if (x <= b1) misses_++;
        continue;
      }
      // Decoded once however many readers want it: a reader that finds the
      // block in flight waits for that decode instead.
      bool decoded = false;
      auto r = cache_->get(owner_, x, [&]() -> Result<std::vector<uint8_t>> {
        decoded = true;
        std::vector<uint8_t> out(block_len(x));
        UDM_TRY(zfile_decode_block(layout_.h, x, src, out));
        return out;
      });
      if (!r.ok()) {
        if (x > b1) break;
        return r.status();
      }
      blocks[x - b0] = std::move(r).value();
      if (x <= b1) (decoded ? misses_ : hits_)++;
    }
    b = e + 1;
  }
  // Copy the wanted slices of the cached blocks.
  for (uint64_t b = b0; b <= b1; b++) {
    if (done[b - b0]) continue;
    uint64_t bstart = b * bs;
    uint64_t from = std::max(off, bstart), to = std::min(end, bstart + blocks[b - b0]->size());
    std::memcpy(buf.data() + (from - off), blocks[b - b0]->data() + (from - bstart), to - from);
  }
  return Status::Ok();
}

void ZFileDevice::do_keep_cached(uint64_t off, uint64_t len) {
  // size() is original_file_size, so b1 < num_blocks(); starts[b] is where
  // block b's stored bytes begin in the blob, starts[b + 1] where they end.
  const uint64_t bs = layout_.h.block_size;
  const uint64_t b0 = off / bs, b1 = (off + len - 1) / bs;
  blob_->keep_cached(layout_.starts[b0], layout_.starts[b1 + 1] - layout_.starts[b0]);
}

bool ZFileDevice::maybe_zero(uint64_t b) const {
  uint64_t stored = layout_.starts[b + 1] - layout_.starts[b];
  return stored <= block_len(b) / 200 + 64;
}

Status ZFileDevice::do_allocation(uint64_t off, uint64_t len, AllocMap& out) {
  const uint64_t bs = layout_.h.block_size;
  // At most 64 Ki blocks per call (a prefix is a valid answer).
  const uint64_t b0 = off / bs, b1 = std::min((off + len - 1) / bs, b0 + (1 << 16) - 1);  // inclusive
  // Decode the candidates whose state is not known yet, one stored read per run.
  std::vector<uint8_t> stored, plain;
  for (uint64_t b = b0; b <= b1;) {
    if (!maybe_zero(b) || zero_state_[b].load(std::memory_order_relaxed) != 0) {
      b++;
      continue;
    }
    uint64_t e = b;
    while (e + 1 <= b1 && maybe_zero(e + 1) && zero_state_[e + 1].load(std::memory_order_relaxed) == 0 &&
           e - b < 4096)
      e++;
    uint64_t s0 = layout_.starts[b], s1 = layout_.starts[e + 1];
    stored.resize(s1 - s0);
    UDM_TRY(blob_->read(s0, stored).context(fmt::format("zfile: reading blocks {}..{}", b, e)));
    for (uint64_t x = b; x <= e; x++) {
      plain.resize(block_len(x));
      std::span<const uint8_t> src(stored.data() + (layout_.starts[x] - s0), layout_.starts[x + 1] - layout_.starts[x]);
      // A block that does not decode is data: its read reports the error.
      bool zero = zfile_decode_block(layout_.h, x, src, plain).ok() &&
                  std::all_of(plain.begin(), plain.end(), [](uint8_t v) { return v == 0; });
      zero_state_[x].store(zero ? 1 : 2, std::memory_order_relaxed);
    }
    b = e + 1;
  }
  uint64_t pos = off;
  const uint64_t end = std::min(off + len, (b1 + 1) * bs);
  for (uint64_t b = b0; b <= b1 && pos < end; b++) {
    uint64_t n = std::min(end, b * bs + block_len(b)) - pos;
    bool zero = maybe_zero(b) && zero_state_[b].load(std::memory_order_relaxed) == 1;
    add_alloc_run(out, n, zero ? AllocKind::kZero : AllocKind::kData);
    pos += n;
  }
  return Status::Ok();
}

Result<DevicePtr> open_tar_member(DevicePtr blob) {
  uint64_t sz = blob->size();
  if (sz < 3 * kTarBlock) return blob;
  std::vector<uint8_t> head(3 * kTarBlock);
  UDM_TRY(blob->read(0, head));
  if (!is_tar_header(head)) return blob;
  UDM_ASSIGN_OR_RETURN(TarMember m, parse_tar_member(head, sz));
  return DevicePtr(std::make_shared<SliceDevice>(std::move(blob), m.offset, m.size));
}

Result<DevicePtr> open_layer_blob(DevicePtr blob, std::shared_ptr<BlockCache> cache) {
  UDM_ASSIGN_OR_RETURN(DevicePtr dev, open_tar_member(std::move(blob)));
  if (dev->size() >= kZFileHeaderSize) {
    uint8_t magic[24];
    UDM_TRY(dev->read_exact(0, magic, sizeof magic));
    if (is_zfile_magic(magic)) {
      UDM_ASSIGN_OR_RETURN(auto z, ZFileDevice::open(dev, std::move(cache)));
      return DevicePtr(z);
    }
  }
  return dev;
}

}  // namespace udm::obd
