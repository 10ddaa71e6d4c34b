#include "overlaybd/zfile_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "overlaybd/tar_format.h"

namespace udm::obd {

BlockCache::BlockCache(size_t capacity_bytes) : cap_per_shard_(std::max<size_t>(capacity_bytes / kShards, 1)) {}

std::shared_ptr<BlockCache> BlockCache::shared() {
  static auto c = std::make_shared<BlockCache>(128u << 20);
  return c;
}

uint64_t BlockCache::new_device_id() {
  static std::atomic<uint64_t> next{1};
  return next++;
}

static uint64_t cache_key(uint64_t dev, uint64_t blk) { return (dev << 40) ^ blk; }

BlockCache::Block BlockCache::get(uint64_t dev, uint64_t blk) {
  uint64_t k = cache_key(dev, blk);
  Shard& s = shards_[(k * 0x9E3779B97F4A7C15ull) >> 60];
  std::lock_guard g(s.mu);
  auto it = s.map.find(k);
  if (it == s.map.end()) {
    misses_++;
    return nullptr;
  }
  s.lru.splice(s.lru.begin(), s.lru, it->second);
  hits_++;
  return it->second->second;
}

void BlockCache::put(uint64_t dev, uint64_t blk, Block b) {
  uint64_t k = cache_key(dev, blk);
  Shard& s = shards_[(k * 0x9E3779B97F4A7C15ull) >> 60];
  std::lock_guard g(s.mu);
  auto it = s.map.find(k);
  if (it != s.map.end()) return;
  s.bytes += b->size();
  s.lru.emplace_front(k, std::move(b));
  s.map[k] = s.lru.begin();
  while (s.bytes > cap_per_shard_ && s.lru.size() > 1) {
    auto& back = s.lru.back();
    s.bytes -= back.second->size();
    s.map.erase(back.first);
    s.lru.pop_back();
  }
}

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
  UDM_TRY(blob->read(0, hb));
  UDM_ASSIGN_OR_RETURN(ZFileHeader h, parse_zfile_header(hb, "header"));
  std::optional<ZFileHeader> trailer;
  if (!h.has(kZfHeaderOverwrite)) {
    UDM_TRY(blob->read(fsize - kZFileHeaderSize, tb));
    UDM_ASSIGN_OR_RETURN(ZFileHeader t, parse_zfile_header(tb, "trailer"));
    trailer = t;
  }
  UDM_ASSIGN_OR_RETURN(ZFileHeader fin, zfile_final_fields(h, trailer ? &*trailer : nullptr, fsize));
  std::vector<uint8_t> index(fin.index_size * 4);
  if (!index.empty()) UDM_TRY(blob->read(fin.index_offset, index));
  UDM_ASSIGN_OR_RETURN(ZFileLayout layout, zfile_build_layout(fin, index, fsize));
  std::shared_ptr<ZFileDevice> d(new ZFileDevice());
  d->blob_ = std::move(blob);
  d->cache_ = cache ? std::move(cache) : BlockCache::shared();
  d->header_ = h;
  d->layout_ = std::move(layout);
  d->id_ = BlockCache::new_device_id();
  return d;
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
  uint64_t b0 = off / bs, b1 = (end - 1) / bs;  // inclusive
  if (b1 >= nblocks) return Corrupt("zfile: read beyond the last block");
  uint64_t fetch_end = b1;
  // A small read that continues the previous one also decompresses the next
  // readahead_ bytes into the cache. Large reads need none: they already
  // cover many blocks, and concurrent large sequential requests would only
  // decode each other's blocks twice.
  bool seq = last_end_.exchange(end) == off;
  if (seq && readahead_ > 0 && buf.size() < readahead_)
    fetch_end = std::min<uint64_t>(nblocks - 1, b1 + std::max<uint64_t>(1, readahead_ / bs));
  // A block the request covers entirely is decoded straight into `buf` and
  // not cached; partly covered and read-ahead blocks go through the cache.
  auto whole = [&](uint64_t b) { return b <= b1 && b * bs >= off && b * bs + block_len(b) <= end; };
  std::vector<BlockCache::Block> blocks(fetch_end - b0 + 1);
  for (uint64_t b = b0; b <= fetch_end; b++)
    if (!whole(b)) blocks[b - b0] = cache_->get(id_, b);
  std::vector<bool> done(fetch_end - b0 + 1, false);
  // Fetch each run of missing blocks with one read of the stored bytes.
  std::vector<uint8_t> stored;
  for (uint64_t b = b0; b <= fetch_end;) {
    if (blocks[b - b0]) {
      b++;
      continue;
    }
    uint64_t e = b;
    while (e + 1 <= fetch_end && !blocks[e + 1 - b0] && layout_.starts[e + 2] - layout_.starts[b] <= (16u << 20))
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
        continue;
      }
      auto blk = std::make_shared<std::vector<uint8_t>>(block_len(x));
      Status ds = zfile_decode_block(layout_.h, x, src, *blk);
      if (!ds.ok()) {
        if (x > b1) break;
        return ds;
      }
      blocks[x - b0] = blk;
      cache_->put(id_, x, blk);
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

Result<DevicePtr> open_layer_blob(DevicePtr blob, std::shared_ptr<BlockCache> cache) {
  DevicePtr dev = blob;
  uint64_t sz = dev->size();
  if (sz >= 3 * kTarBlock) {
    std::vector<uint8_t> head(3 * kTarBlock);
    UDM_TRY(dev->read(0, head));
    if (is_tar_header(head)) {
      UDM_ASSIGN_OR_RETURN(TarMember m, parse_tar_member(head, sz));
      dev = std::make_shared<SliceDevice>(dev, m.offset, m.size);
    }
  }
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
