#include "android_cow/acow_image.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "util/crc.h"
#include "util/endian.h"

namespace udm::acow {

namespace {
constexpr uint64_t kStashMagic = 0x6873617473776f63ull;  // "cowstash"
constexpr uint32_t kStashHead = 32;
constexpr uint32_t kScratchMeta = 8192;  // snapuserd's BufferState + ScratchMetadata region
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
  if (img->order_ok_ && img->merged_ < img->order_.size() && f.h.buffer_size >= kScratchMeta + kStashHead + bs &&
      img->self_reading(f.ops[img->order_[img->merged_]])) {
    UDM_ASSIGN_OR_RETURN(auto st, img->stash_read(img->merged_));
    if (st) {
      img->stash_pos_ = img->merged_;
      img->stash_ = std::move(*st);
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
      for (uint32_t i = 0; i < bs; i++) out[i] ^= (*u)[i];
      return Status::Ok();
    }
  }
  return Corrupt("internal: bad op type");
}

Status CowImage::read(BlockDevice& base, uint64_t off, std::span<uint8_t> buf) {
  const uint32_t bs = block_size();
  std::shared_lock lk(merge_mu_);
  const uint64_t merged = this->merged();
  std::vector<uint8_t> tmp;
  size_t done = 0;
  while (done < buf.size()) {
    const uint64_t pos = off + done;
    const uint64_t blk = pos / bs;
    auto from_base = [&](uint64_t b) {
      int32_t o = map_[b];
      return o < 0 || (order_ok_ && pos_of_op_[o] < merged);
    };
    if (from_base(blk)) {
      // A run of blocks the base holds: one read.
      uint64_t end_blk = blk + 1;
      const uint64_t last_blk = (off + buf.size() - 1) / bs;
      while (end_blk <= last_blk && from_base(end_blk)) end_blk++;
      const uint64_t end = std::min<uint64_t>(end_blk * bs, off + buf.size());
      UDM_TRY(base.read(pos, buf.subspan(done, static_cast<size_t>(end - pos))));
      done += static_cast<size_t>(end - pos);
      continue;
    }
    const Op& op = f_.ops[map_[blk]];
    const uint64_t in = pos - blk * bs;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bs - in, buf.size() - done));
    const uint8_t* stash = !stash_.empty() && order_ok_ && pos_of_op_[map_[blk]] == stash_pos_ ? stash_.data() : nullptr;
    if (in == 0 && n == bs) {
      UDM_TRY(compute_block(base, op, blk, buf.data() + done, stash));
    } else {
      tmp.resize(bs);
      UDM_TRY(compute_block(base, op, blk, tmp.data(), stash));
      std::memcpy(buf.data() + done, tmp.data() + in, n);
    }
    done += n;
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

// udm's stash record, at the end of the COW's scratch area (past snapuserd's
// metadata region): u64 magic | u64 merge position | u32 length | u32 crc32c
// of the data | 12 zero bytes | data.
Status CowImage::stash_write(BlockDevice& cow_rw, uint64_t pos, const std::vector<uint8_t>& data) {
  const uint64_t at = uint64_t{f_.h.header_size} + f_.h.buffer_size - kStashHead - block_size();
  std::vector<uint8_t> rec(kStashHead + data.size());
  put_le64(rec.data(), kStashMagic);
  put_le64(rec.data() + 8, pos);
  put_le32(rec.data() + 16, static_cast<uint32_t>(data.size()));
  put_le32(rec.data() + 20, crc32c_raw(~0u, data.data(), data.size()));
  std::memcpy(rec.data() + kStashHead, data.data(), data.size());
  UDM_TRY(cow_rw.write(at, rec));
  return cow_rw.flush();
}

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
  // Choose the batch.
  uint64_t end = start, blocks = 0;
  bool self = false;
  std::vector<uint64_t> reads;
  while (end < order_.size()) {
    const Op& op = f_.ops[order_[end]];
    reads.clear();
    op_read_blocks(op, bs, reads);
    const bool s = self_reading(op);
    if (end > start) {
      if (s || blocks + op.blocks() > max_batch_blocks) break;
      bool conflict = false;
      for (uint64_t b = op.new_block; b < op.new_block + op.blocks() && !conflict; b++)
        conflict = stamp_r_[b] == batch_id_;
      for (uint64_t b : reads) conflict = conflict || stamp_w_[b] == batch_id_;
      if (conflict) break;
    }
    for (uint64_t b = op.new_block; b < op.new_block + op.blocks(); b++) stamp_w_[b] = batch_id_;
    for (uint64_t b : reads) stamp_r_[b] = batch_id_;
    blocks += op.blocks();
    end++;
    if (s) {
      self = true;
      break;
    }
  }
  // An op reading its own block: its old bytes go to the stash first.
  std::optional<std::vector<uint8_t>> stash;
  if (self) {
    const Op& op = f_.ops[order_[start]];
    if (f_.h.buffer_size < kScratchMeta + kStashHead + bs)
      return NotSupported(fmt::format("merge position {}: XOR to block {} reads its own block; merging it crash-safely "
                                      "needs a scratch area in the COW (buffer_size {} is too small)",
                                      start, op.new_block, f_.h.buffer_size));
    UDM_ASSIGN_OR_RETURN(stash, stash_read(start));
    if (!stash) {
      std::vector<uint8_t> pre(bs);
      UDM_TRY(base.read(op.source, pre));
      UDM_TRY(stash_write(cow_rw, start, pre));
      stash = std::move(pre);
    }
    std::unique_lock lk(merge_mu_);
    stash_pos_ = start;
    stash_ = *stash;
  }
  // Compute every block of the batch, then write them.
  std::vector<uint8_t> out(static_cast<size_t>(blocks * bs));
  size_t o = 0;
  for (uint64_t j = start; j < end; j++) {
    const Op& op = f_.ops[order_[j]];
    for (uint64_t b = op.new_block; b < op.new_block + op.blocks(); b++, o += bs)
      UDM_TRY(compute_block(base, op, b, out.data() + o, stash ? stash->data() : nullptr));
  }
  {
    std::unique_lock lk(merge_mu_);
    o = 0;
    for (uint64_t j = start; j < end; j++) {
      const Op& op = f_.ops[order_[j]];
      const size_t n = static_cast<size_t>(op.blocks() * bs);
      if (op.type == kZero)
        UDM_TRY(base.write_zeroes(op.new_block * bs, n));
      else
        UDM_TRY(base.write(op.new_block * bs, std::span<const uint8_t>(out.data() + o, n)));
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
