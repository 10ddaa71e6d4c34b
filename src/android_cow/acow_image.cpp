#include "android_cow/acow_image.h"

#include "device/allocation.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "util/crc.h"
#include "util/endian.h"

namespace udm::acow {

namespace {
constexpr uint64_t kStashMagic = 0x6873617473776f63ull;   // "cowstash": one op (older udm; still read)
constexpr uint64_t kStash2Magic = 0x3268737473776f63ull;  // "cowstsh2": a batch's self-reading ops
constexpr uint32_t kStashHead = 32;
constexpr uint32_t kScratchMeta = 8192;  // snapuserd's BufferState + ScratchMetadata region

void xor_into(uint8_t* out, const uint8_t* x, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t a, b;
    std::memcpy(&a, out + i, 8);
    std::memcpy(&b, x + i, 8);
    a ^= b;
    std::memcpy(out + i, &a, 8);
  }
  for (; i < n; i++) out[i] ^= x[i];
}
}  // namespace

Result<std::shared_ptr<CowImage>> CowImage::open(DevicePtr cow, uint64_t base_bytes, uint64_t view_bytes,
                                                 std::optional<uint64_t> label, bool want_merge) {
  std::shared_ptr<CowImage> img(new CowImage());
  UDM_ASSIGN_OR_RETURN(img->f_, parse_cow(*cow, label));
  const CowFile& f = img->f_;
  const uint32_t bs = f.block_size();
  if (view_bytes % bs)
    return Invalid(fmt::format("the device ({} bytes) is not a multiple of the COW's block size {}", view_bytes, bs));
  UDM_TRY(check_ops(f, base_bytes, view_bytes));
  img->cow_ = std::move(cow);
  img->base_bytes_ = base_bytes;
  img->view_bytes_ = view_bytes;
  img->map_.assign(static_cast<size_t>(view_bytes / bs), -1);
  if (f.ops.size() > INT32_MAX) return Invalid("too many ops");
  for (size_t i = 0; i < f.ops.size(); i++)
    for (uint64_t b = f.ops[i].new_block; b < f.ops[i].new_block + f.ops[i].blocks(); b++)
      img->map_[b] = static_cast<int32_t>(i);

  auto order = build_merge_order(f);
  Status order_status = order.ok() ? verify_merge_order(f, *order) : order.status();
  if (order_status.ok()) {
    img->order_ = std::move(*order);
    img->order_ok_ = true;
    img->pos_of_op_.resize(f.ops.size());
    for (uint32_t i = 0; i < img->order_.size(); i++) img->pos_of_op_[img->order_[i]] = i;
  }
  if (want_merge && !order_status.ok()) return order_status.context("merge order");
  if (f.h.num_merge_ops) {
    if (!order_status.ok())
      return order_status.context(fmt::format("the base is partly merged (num_merge_ops {}), but the merge order", f.h.num_merge_ops));
    if (f.h.num_merge_ops > img->order_.size())
      return Corrupt(fmt::format("num_merge_ops {} is past the merge order's {} ops", f.h.num_merge_ops, img->order_.size()));
    img->merged_ = f.h.num_merge_ops;
  }
  if (img->order_ok_ && img->merged_ < img->order_.size() && f.h.buffer_size >= kScratchMeta + kStashHead + 8 + bs) {
    UDM_TRY(img->stash_load(img->merged_));
    if (img->stash_.empty() && f.h.buffer_size >= kScratchMeta + kStashHead + bs &&
        img->self_reading(f.ops[img->order_[img->merged_]])) {
      UDM_ASSIGN_OR_RETURN(auto st, img->stash_read(img->merged_));
      if (st) {
        img->stash_[img->merged_] = std::move(*st);
        img->stash_start_ = img->merged_;
        img->stash_end_ = img->merged_ + 1;
      }
    }
  }
  img->cache_ = BlockCache::shared();
  img->owner_ = BlockCache::new_owner();
  return img;
}

CowImage::~CowImage() {
  if (cache_) cache_->drop_owner(owner_);
}

Result<BlockCache::Block> CowImage::payload(uint32_t i) {
  return cache_->get(owner_, i, [&]() { return read_payload(*cow_, f_, f_.ops[i]); });
}

// For the merge: the cached payload if a reader decoded it, else decoded
// without caching it (once merged, the op's blocks are read from the base).
Result<BlockCache::Block> CowImage::payload_once(uint32_t i) {
  if (auto b = cache_->peek(owner_, i)) return b;
  UDM_ASSIGN_OR_RETURN(auto v, read_payload(*cow_, f_, f_.ops[i]));
  return BlockCache::Block(std::make_shared<const std::vector<uint8_t>>(std::move(v)));
}

Status CowImage::compute_block(BlockDevice& base, const Op& op, uint64_t blk, uint8_t* out, const uint8_t* stash) {
  const uint32_t bs = block_size();
  switch (op.type) {
    case kZero:
      std::memset(out, 0, bs);
      return Status::Ok();
    case kCopy:
      return base.read_exact(op.source * bs, out, bs);
    case kReplace: {
      UDM_ASSIGN_OR_RETURN(auto u, payload(static_cast<uint32_t>(&op - f_.ops.data())));
      std::memcpy(out, u->data() + (blk - op.new_block) * bs, bs);
      return Status::Ok();
    }
    case kXor: {
      UDM_ASSIGN_OR_RETURN(auto u, payload(static_cast<uint32_t>(&op - f_.ops.data())));
      if (stash)
        std::memcpy(out, stash, bs);
      else
        UDM_TRY(base.read_exact(op.source, out, bs));
      xor_into(out, u->data(), bs);
      return Status::Ok();
    }
  }
  return Corrupt("internal: bad op type");
}

Status CowImage::read(BlockDevice& base, uint64_t off, std::span<uint8_t> buf) {
  std::shared_lock lk(merge_mu_);
  return read_at(base, off, buf, merged(), false);
}

// The view with the ops before merge position `merged` applied to the base.
// Runs are served with one base read each: blocks the base holds, COPY ops
// whose sources follow each other, XOR ops whose source bytes do (then each
// payload XORed in); a REPLACE unit is looked up once for all its blocks in
// the request; ZERO runs are one memset.
Status CowImage::allocation(BlockDevice& base, uint64_t off, uint64_t len, AllocMap& out) const {
  const uint32_t bs = block_size();
  const uint64_t end = off + std::min<uint64_t>(len, uint64_t{1} << 30);
  // A block merged now stays merged, and an unmapped one is never written by
  // the merge: their base maps hold. An op that merges after this look was
  // answered "data" (always true) or "zero" (true before and after).
  const uint64_t merged = merged_.load(std::memory_order_acquire);
  auto live_op = [&](uint64_t b) -> int32_t {
    int32_t o = map_[b];
    return o < 0 || (order_ok_ && pos_of_op_[o] < merged) ? -1 : o;
  };
  uint64_t pos = off;
  while (pos < end && out.size() < kMaxAllocRuns) {
    const uint64_t blk = pos / bs;
    const int32_t oi = live_op(blk);
    if (oi < 0) {
      uint64_t eb = blk + 1;
      while (eb * bs < end && live_op(eb) < 0) eb++;
      const uint64_t e = std::min<uint64_t>(eb * bs, end);
      uint64_t covered = 0;
      UDM_TRY(append_allocation(base, pos, e - pos, out, 0, covered));
      pos += covered;
      if (pos < e) break;  // the map is full
      continue;
    }
    const uint64_t n = std::min<uint64_t>(end - pos, bs - pos % bs);
    add_alloc_run(out, n, f_.ops[oi].type == kZero ? AllocKind::kZero : AllocKind::kData);
    pos += n;
  }
  return Status::Ok();
}

Status CowImage::read_at(BlockDevice& base, uint64_t off, std::span<uint8_t> buf, uint64_t merged, bool merging) {
  const uint32_t bs = block_size();
  auto get_payload = [&](int32_t o) { return merging ? payload_once(static_cast<uint32_t>(o)) : payload(static_cast<uint32_t>(o)); };
  auto live_op = [&](uint64_t b) -> int32_t {  // the op computing block b, or -1: read the base
    int32_t o = map_[b];
    return o < 0 || (order_ok_ && pos_of_op_[o] < merged) ? -1 : o;
  };
  auto stash_of = [&](int32_t o) -> const uint8_t* {
    if (stash_.empty() || !order_ok_) return nullptr;
    auto it = stash_.find(pos_of_op_[o]);
    return it == stash_.end() ? nullptr : it->second.data();
  };
  std::vector<uint8_t> tmp;
  const uint64_t end = off + buf.size();
  const uint64_t last_blk = (end - 1) / bs;
  size_t done = 0;
  while (done < buf.size()) {
    const uint64_t pos = off + done;
    const uint64_t blk = pos / bs;
    const int32_t oi = live_op(blk);
    if (oi < 0) {
      // A run of blocks the base holds: one read.
      uint64_t end_blk = blk + 1;
      while (end_blk <= last_blk && live_op(end_blk) < 0) end_blk++;
      const uint64_t e = std::min<uint64_t>(end_blk * bs, end);
      UDM_TRY(base.read(pos, buf.subspan(done, static_cast<size_t>(e - pos))));
      done += static_cast<size_t>(e - pos);
      continue;
    }
    const Op& op = f_.ops[oi];
    const uint64_t in = pos - blk * bs;
    const uint8_t* stash = stash_of(oi);
    // Whole blocks of the request from here on.
    const uint64_t full = in == 0 ? (end - pos) / bs : 0;
    if (full == 0 || stash) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(bs - in, end - pos));
      if (in == 0 && n == bs) {
        UDM_TRY(compute_block(base, op, blk, buf.data() + done, stash));
      } else {
        tmp.resize(bs);
        UDM_TRY(compute_block(base, op, blk, tmp.data(), stash));
        std::memcpy(buf.data() + done, tmp.data() + in, n);
      }
      done += n;
      continue;
    }
    uint8_t* out = buf.data() + done;
    uint64_t n = 1;  // blocks served from here
    switch (op.type) {
      case kZero:
        while (n < full && live_op(blk + n) >= 0 && f_.ops[map_[blk + n]].type == kZero) n++;
        std::memset(out, 0, static_cast<size_t>(n * bs));
        break;
      case kCopy:
        while (n < full) {
          const int32_t o = live_op(blk + n);
          if (o < 0 || f_.ops[o].type != kCopy || f_.ops[o].source != op.source + n) break;
          n++;
        }
        UDM_TRY(base.read_exact(op.source * bs, out, static_cast<size_t>(n * bs)));
        break;
      case kReplace: {
        UDM_ASSIGN_OR_RETURN(auto u, get_payload(oi));
        n = std::min<uint64_t>(full, op.new_block + op.blocks() - blk);
        std::memcpy(out, u->data() + (blk - op.new_block) * bs, static_cast<size_t>(n * bs));
        break;
      }
      case kXor: {
        while (n < full) {
          const int32_t o = live_op(blk + n);
          if (o < 0 || f_.ops[o].type != kXor || f_.ops[o].source != op.source + n * bs || stash_of(o)) break;
          n++;
        }
        UDM_TRY(base.read_exact(op.source, out, static_cast<size_t>(n * bs)));
        for (uint64_t k = 0; k < n; k++) {
          UDM_ASSIGN_OR_RETURN(auto u, get_payload(map_[blk + k]));
          xor_into(out + k * bs, u->data(), bs);
        }
        break;
      }
      default:
        return Corrupt("internal: bad op type");
    }
    done += static_cast<size_t>(n * bs);
  }
  return Status::Ok();
}

bool CowImage::self_reading(const Op& op) const {
  if (op.type != kXor) return false;
  std::vector<uint64_t> r;
  op_read_blocks(op, block_size(), r);
  for (uint64_t b : r)
    if (b >= op.new_block && b < op.new_block + op.blocks()) return true;
  return false;
}

// udm's batch stash record, in the COW's scratch area past snapuserd's 8 KiB
// metadata region: u64 magic "cowstsh2" | u64 batch start | u64 batch end |
// u32 count | u32 crc32c (of bytes 8..28, the positions and the data) |
// count x u64 merge position | count x block of old bytes (what the op at
// that position reads).
uint64_t CowImage::stash_capacity() const {
  const uint64_t room = f_.h.buffer_size > kScratchMeta + kStashHead ? f_.h.buffer_size - kScratchMeta - kStashHead : 0;
  return room / (8 + block_size());
}

Status CowImage::stash_store(BlockDevice& cow_rw, uint64_t start, uint64_t end,
                             const std::map<uint64_t, std::vector<uint8_t>>& st) {
  const uint32_t bs = block_size();
  std::vector<uint8_t> rec(kStashHead + st.size() * (8 + bs));
  put_le64(rec.data(), kStash2Magic);
  put_le64(rec.data() + 8, start);
  put_le64(rec.data() + 16, end);
  put_le32(rec.data() + 24, static_cast<uint32_t>(st.size()));
  size_t k = 0;
  for (const auto& [pos, data] : st) {
    put_le64(rec.data() + kStashHead + 8 * k, pos);
    std::memcpy(rec.data() + kStashHead + 8 * st.size() + k * bs, data.data(), bs);
    k++;
  }
  uint32_t crc = crc32c_raw(~0u, rec.data() + 8, 20);
  crc = crc32c_raw(crc, rec.data() + kStashHead, rec.size() - kStashHead);
  put_le32(rec.data() + 28, crc);
  UDM_TRY(cow_rw.write(uint64_t{f_.h.header_size} + kScratchMeta, rec));
  return cow_rw.flush();
}

Status CowImage::stash_load(uint64_t start) {
  const uint32_t bs = block_size();
  const uint64_t at = uint64_t{f_.h.header_size} + kScratchMeta;
  uint8_t head[kStashHead];
  UDM_TRY(cow_->read(at, std::span<uint8_t>(head, kStashHead)));
  const uint64_t count = le32(head + 24), end = le64(head + 16);
  if (le64(head) != kStash2Magic || le64(head + 8) != start || count == 0 || count > stash_capacity() ||
      end <= start || end > order_.size())
    return Status::Ok();
  std::vector<uint8_t> rest(static_cast<size_t>(count * (8 + bs)));
  UDM_TRY(cow_->read(at + kStashHead, rest));
  uint32_t crc = crc32c_raw(~0u, head + 8, 20);
  crc = crc32c_raw(crc, rest.data(), rest.size());
  if (crc != le32(head + 28)) return Status::Ok();
  std::map<uint64_t, std::vector<uint8_t>> st;
  for (uint64_t k = 0; k < count; k++) {
    const uint64_t pos = le64(rest.data() + 8 * k);
    if (pos < start || pos >= end) return Corrupt(fmt::format("stash record: position {} outside its batch {}..{}", pos, start, end));
    const uint8_t* d = rest.data() + 8 * count + k * bs;
    st[pos] = std::vector<uint8_t>(d, d + bs);
  }
  stash_ = std::move(st);
  stash_start_ = start;
  stash_end_ = end;
  return Status::Ok();
}

// The single-op stash record of older udm versions, at the end of the
// scratch area: u64 magic | u64 merge position | u32 length | u32 crc32c of
// the data | 12 zero bytes | data. Read (a merge an older udm left), no
// longer written.
Result<std::optional<std::vector<uint8_t>>> CowImage::stash_read(uint64_t pos) {
  const uint32_t bs = block_size();
  const uint64_t at = uint64_t{f_.h.header_size} + f_.h.buffer_size - kStashHead - bs;
  std::vector<uint8_t> rec(kStashHead + bs);
  UDM_TRY(cow_->read(at, rec));
  std::vector<uint8_t> data(rec.begin() + kStashHead, rec.end());
  if (le64(rec.data()) != kStashMagic || le64(rec.data() + 8) != pos || le32(rec.data() + 16) != bs ||
      le32(rec.data() + 20) != crc32c_raw(~0u, data.data(), data.size()))
    return std::optional<std::vector<uint8_t>>();
  return std::optional<std::vector<uint8_t>>(std::move(data));
}

Result<uint64_t> CowImage::merge_step(BlockDevice& base, BlockDevice& cow_rw, uint32_t max_batch_blocks) {
  if (!order_ok_) return Invalid("this COW has no valid merge order");
  const uint32_t bs = block_size();
  const uint64_t start = merged();
  if (start >= order_.size()) return start;
  const size_t nblocks = static_cast<size_t>(std::max(view_bytes_, base_bytes_) / bs + 1);
  if (stamp_w_.size() < nblocks) stamp_w_.assign(nblocks, 0), stamp_r_.assign(nblocks, 0);
  if (++batch_id_ == 0) {
    std::fill(stamp_w_.begin(), stamp_w_.end(), 0);
    std::fill(stamp_r_.begin(), stamp_r_.end(), 0);
    batch_id_ = 1;
  }
  // Choose the batch. A stash record for this start (a cut came after it
  // was written) fixes the batch: the ops it covers may be half-written.
  // Ops reading their own block read the stash instead of the base, so
  // their reads do not end a batch; at most stash_capacity() of them.
  const bool forced = !stash_.empty() && stash_start_ == start;
  uint64_t end = start, blocks = 0;
  std::vector<uint64_t> selfs;
  std::vector<uint64_t> reads;
  const uint64_t cap = stash_capacity();
  while (end < order_.size()) {
    if (forced && end == stash_end_) break;
    const Op& op = f_.ops[order_[end]];
    reads.clear();
    op_read_blocks(op, bs, reads);
    const bool s = self_reading(op);
    if (s && cap == 0) {
      if (end > start) break;  // merge what comes before it first
      return NotSupported(fmt::format("merge position {}: XOR to block {} reads its own block; merging it crash-safely "
                                      "needs a scratch area in the COW (buffer_size {} is too small)",
                                      end, op.new_block, f_.h.buffer_size));
    }
    if (end > start && !forced) {
      if (blocks + op.blocks() > max_batch_blocks || (s && selfs.size() >= cap)) break;
      bool conflict = false;
      for (uint64_t b = op.new_block; b < op.new_block + op.blocks() && !conflict; b++)
        conflict = stamp_r_[b] == batch_id_;
      if (!s)
        for (uint64_t b : reads) conflict = conflict || stamp_w_[b] == batch_id_;
      if (conflict) break;
    }
    for (uint64_t b = op.new_block; b < op.new_block + op.blocks(); b++) stamp_w_[b] = batch_id_;
    if (!s)
      for (uint64_t b : reads) stamp_r_[b] = batch_id_;
    if (s) selfs.push_back(end);
    blocks += op.blocks();
    end++;
  }
  // Ops reading their own block: their old bytes go to the stash record
  // (flushed) before the batch writes anything.
  if (!selfs.empty() && !forced) {
    std::map<uint64_t, std::vector<uint8_t>> st;
    for (uint64_t pos : selfs) {
      std::vector<uint8_t> pre(bs);
      UDM_TRY(base.read(f_.ops[order_[pos]].source, pre));
      st[pos] = std::move(pre);
    }
    UDM_TRY(stash_store(cow_rw, start, end, st));
    std::unique_lock lk(merge_mu_);
    stash_ = std::move(st);
    stash_start_ = start;
    stash_end_ = end;
  }
  if (forced && selfs.size() != stash_.size())
    return Corrupt(fmt::format("stash record for merge positions {}..{} holds {} blocks, the batch has {} ops reading their own",
                               start, end, stash_.size(), selfs.size()));
  // The batch's blocks in ascending order, in runs of adjacent blocks (no op
  // of a batch reads a block another of its ops writes, so the order within
  // a batch does not matter): each run is computed as the view computes it
  // as of `start` (one base read per run of COPY sources, one payload per
  // REPLACE unit) and written with one request.
  struct Run {
    uint64_t blk, n;
    bool zero;
  };
  std::vector<std::pair<uint64_t, uint32_t>> targets;  // (new_block, op)
  targets.reserve(static_cast<size_t>(end - start));
  for (uint64_t j = start; j < end; j++) targets.emplace_back(f_.ops[order_[j]].new_block, order_[j]);
  std::sort(targets.begin(), targets.end());
  std::vector<Run> runs;
  for (auto [nb, oi] : targets) {
    const Op& op = f_.ops[oi];
    if (!runs.empty() && runs.back().blk + runs.back().n == nb) {
      runs.back().n += op.blocks();
      runs.back().zero = runs.back().zero && op.type == kZero;
    } else {
      runs.push_back({nb, op.blocks(), op.type == kZero});
    }
  }
  merge_buf_.resize(static_cast<size_t>(blocks * bs));
  size_t o = 0;
  for (const Run& r : runs) {
    const size_t n = static_cast<size_t>(r.n * bs);
    if (!r.zero) UDM_TRY(read_at(base, r.blk * bs, std::span<uint8_t>(merge_buf_.data() + o, n), start, true));
    o += n;
  }
  {
    std::unique_lock lk(merge_mu_);
    o = 0;
    for (const Run& r : runs) {
      const size_t n = static_cast<size_t>(r.n * bs);
      if (r.zero)
        UDM_TRY(base.write_zeroes(r.blk * bs, n));
      else
        UDM_TRY(base.write(r.blk * bs, std::span<const uint8_t>(merge_buf_.data() + o, n)));
      o += n;
    }
    // Reads of these blocks now go to the base; their durability follows.
    merged_.store(end, std::memory_order_release);
  }
  // The base first, then the record: a restart never skips an op whose
  // writes were lost.
  UDM_TRY(base.flush());
  uint8_t rec[8];
  put_le64(rec, end);
  UDM_TRY(cow_rw.write(kNumMergeOpsOffset, std::span<const uint8_t>(rec, 8)));
  UDM_TRY(cow_rw.flush());
  return end;
}

}  // namespace udm::acow
