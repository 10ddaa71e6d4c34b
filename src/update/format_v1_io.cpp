#include "update/format_v1_io.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace udm::update {

Result<V1Index> load_v1(BlockDevice& dev) {
  const uint64_t size = dev.size();
  std::vector<uint8_t> hb(std::min<uint64_t>(size, kV1HeaderSize));
  if (size >= kV1HeaderSize) UDM_TRY(dev.read(0, hb));
  UDM_ASSIGN_OR_RETURN(V1Index idx, parse_v1_header(hb, size));
  if (idx.h.verity_size) {
    std::vector<uint8_t> rec(idx.h.verity_size);
    UDM_TRY(dev.read(idx.h.verity_offset, rec));
    UDM_TRY(parse_v1_verity(idx, rec));
  }
  std::vector<uint8_t> cmeta(idx.h.meta_size);
  UDM_TRY(dev.read(idx.h.meta_offset, cmeta));
  UDM_TRY(parse_v1_meta(idx, cmeta));
  return idx;
}

Result<std::vector<uint8_t>> v1_regenerate_verity(const V1Index& idx, BlockDevice& new_image, unsigned threads) {
  if (!idx.verity) return Invalid("v1 diff has no verity record");
  const V1Verity& v = *idx.verity;
  UDM_ASSIGN_OR_RETURN(verity::Tree t, verity::build_tree(v.params, new_image, threads));
  if (t.root != v.root)
    return Corrupt(fmt::format("the verity tree regenerated from the new image's {} data blocks has root {}, the diff's "
                               "record says {}: the new image is not the one the diff was made from",
                               v.params.data_blocks, hex(t.root), hex(v.root)));
  return v1_verity_region(idx, t.blocks);
}

Status v1_read_chunk(BlockDevice& diff, const V1Index& idx, size_t ci, std::span<uint8_t> out, bool xor_chunk,
                     BlockDevice* old, const V1NewBlockReader* new_block) {
  const V1Frame& c = xor_chunk ? idx.xchunks[ci] : idx.chunks[ci];
  const uint64_t bs = idx.block_size();
  std::vector<uint8_t> src(c.length), prefix(c.refs.size() * bs);
  if (!c.refs.empty() && !old) return Invalid(fmt::format("v1 chunk {}: its reference blocks need the old image", ci));
  for (size_t k = 0; k < c.refs.size();) {
    if (idx.new_ref(c.refs[k])) {  // a COPY's block of the new image, as the device shows it now
      if (!new_block) return Invalid(fmt::format("v1 chunk {}: its references to the new image need a reader", ci));
      UDM_TRY((*new_block)(c.refs[k] - idx.old_blocks(), std::span<uint8_t>(prefix.data() + k * bs, bs)));
      k++;
      continue;
    }
    // Runs of consecutive old reference blocks in one read each.
    size_t e = k + 1;
    while (e < c.refs.size() && c.refs[e] == c.refs[e - 1] + 1 && !idx.new_ref(c.refs[e])) e++;
    UDM_TRY(old->read(c.refs[k] * bs, std::span<uint8_t>(prefix.data() + k * bs, (e - k) * bs)));
    k = e;
  }
  UDM_TRY(diff.read(c.offset, src));
  return decode_v1_chunk(idx, ci, xor_chunk, src, out, prefix);
}

V1NewBlockReader v1_new_block_reader(BlockDevice& diff, BlockDevice& old, const V1Index& idx, uint64_t done) {
  return [&diff, &old, &idx, done](uint64_t block, std::span<uint8_t> out) -> Status {
    const int64_t e = idx.find(block);
    if (e < 0 || idx.ops[static_cast<size_t>(e)].type != OpType::Copy)  // (the loader refused it)
      return Invalid(fmt::format("v1: new-image block {} is not a COPY's", block));
    if (static_cast<uint64_t>(e) < done) return old.read(block * idx.block_size(), out.subspan(0, idx.block_size()));
    return v1_compute(diff, old, idx, static_cast<size_t>(e), out, done);
  };
}

Status v1_read_delta(BlockDevice& diff, BlockDevice& old, const V1Index& idx, size_t fi, std::span<uint8_t> out) {
  const V1Frame& f = idx.frames[fi];
  const uint64_t bs = idx.block_size();
  if (out.size() < uint64_t{f.blocks} * bs) return Invalid("v1 delta frame: output buffer too small");
  std::vector<uint8_t> prefix(f.refs.size() * bs), src(f.length);
  for (size_t k = 0; k < f.refs.size(); k++) UDM_TRY(old.read(f.refs[k] * bs, std::span<uint8_t>(prefix.data() + k * bs, bs)));
  UDM_TRY(diff.read(f.offset, src));
  return decode_v1_delta(idx, fi, prefix, src, out);
}

Status v1_compute(BlockDevice& diff, BlockDevice& old, const V1Index& idx, size_t i, std::span<uint8_t> out,
                  uint64_t done) {
  const V1Op& op = idx.ops[i];
  const uint64_t bs = idx.block_size();
  switch (op.type) {
    case OpType::Zero:
      std::memset(out.data(), 0, bs);
      return Status::Ok();
    case OpType::Copy: {
      int64_t sv = idx.save_of(op.src);
      if (sv >= 0 && static_cast<int64_t>(i) > sv && done <= static_cast<uint64_t>(sv))
        return old.read(idx.ops[sv].src * bs, out.subspan(0, bs));  // not parked yet: the original
      return old.read(op.src * bs, out.subspan(0, bs));
    }
    case OpType::Save:
      return old.read(op.src * bs, out.subspan(0, bs));
    case OpType::Delta: {
      const V1Frame& f = idx.frames[op.index];
      if (f.blocks == 1) return v1_read_delta(diff, old, idx, op.index, out);
      std::vector<uint8_t> frame(uint64_t{f.blocks} * bs);
      UDM_TRY(v1_read_delta(diff, old, idx, op.index, frame));
      std::memcpy(out.data(), frame.data() + uint64_t{op.member} * bs, bs);
      return Status::Ok();
    }
    case OpType::Replace:
    case OpType::Xor: {
      const bool x = op.type == OpType::Xor;
      std::vector<uint8_t> chunk(uint64_t{idx.h.chunk_blocks} * bs);
      size_t ci = op.index / idx.h.chunk_blocks;
      const V1NewBlockReader nb = v1_new_block_reader(diff, old, idx, done);
      UDM_TRY(v1_read_chunk(diff, idx, ci, chunk, x, &old, &nb));
      const uint8_t* pay = chunk.data() + (op.index % idx.h.chunk_blocks) * bs;
      if (!x) {
        std::memcpy(out.data(), pay, bs);
        return Status::Ok();
      }
      UDM_TRY(old.read(op.src, out.subspan(0, bs)));
      v1_xor_into(out.subspan(0, bs), pay);
      return Status::Ok();
    }
  }
  return Invalid("bad op");
}

Status v1_write_checkpoint(BlockDevice& diff, uint32_t state, uint64_t done, std::span<const uint8_t> stash) {
  if (!stash.empty()) {
    // The block first, flushed; then the record that points at it.
    UDM_TRY(diff.write(kV1HeaderSize, stash));
    UDM_TRY(diff.flush());
  }
  std::vector<uint8_t> sector(512);
  UDM_TRY(diff.read(0, sector));
  put_v1_checkpoint(sector, state, done, stash);
  return diff.write(0, sector, /*fua=*/true);
}

Status v1_write_batch_checkpoint(BlockDevice& diff, uint64_t done, uint64_t end, uint32_t crc) {
  std::vector<uint8_t> sector(512);
  UDM_TRY(diff.read(0, sector));
  put_v1_batch_checkpoint(sector, done, end, crc);
  return diff.write(0, sector, /*fua=*/true);
}

Status v1_finish_logged_batch(BlockDevice& diff, BlockDevice& sys, V1Index& idx) {
  const uint64_t d = idx.h.ckpt_done, e = idx.h.ckpt_batch_end, bs = idx.block_size();
  auto scratch = V1ScratchPlanner(idx).scratch(d, e, e - d);
  if (scratch.size() != e - d)
    return Corrupt(fmt::format("v1 checkpoint: the logged batch [{}, {}) has {} scratch blocks, not {}", d, e,
                               scratch.size(), e - d));
  std::vector<uint8_t> blocks((e - d) * bs);
  for (uint64_t k = 0; k < e - d; k++) UDM_TRY(sys.read(scratch[k] * bs, std::span(blocks).subspan(k * bs, bs)));
  if (v1_crc(blocks) != idx.h.ckpt_batch_crc)
    return Corrupt(fmt::format("v1 checkpoint: the logged batch of operations [{}, {}) does not match its checksum "
                               "in the scratch blocks; nothing written",
                               d, e));
  for (uint64_t k = 0; k < e - d; k++)
    UDM_TRY(sys.write(idx.ops[d + k].dest * bs, std::span<const uint8_t>(blocks).subspan(k * bs, bs)));
  UDM_TRY(sys.flush());
  UDM_TRY(v1_write_checkpoint(diff, 1, e));
  idx.h.ckpt_state = 1;
  idx.h.ckpt_done = e;
  idx.h.ckpt_batch_end = 0;
  idx.h.ckpt_batch_crc = 0;
  idx.h.ckpt_stash_op = 0;
  return Status::Ok();
}

Result<bool> v1_read_stash(BlockDevice& diff, const V1Index& idx, std::span<uint8_t> out) {
  if (!v1_has_stash(idx)) return false;
  UDM_TRY(diff.read(kV1HeaderSize, out.subspan(0, idx.block_size())));
  UDM_TRY(check_v1_stash(idx, out));
  return true;
}

Result<std::array<uint8_t, 32>> sha256_device(BlockDevice& d, uint64_t bytes) {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < bytes; off += buf.size()) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), bytes - off));
    UDM_TRY(d.read(off, std::span<uint8_t>(buf.data(), n)));
    EVP_DigestUpdate(ctx.get(), buf.data(), n);
  }
  std::array<uint8_t, 32> out{};
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx.get(), out.data(), &len);
  return out;
}

}  // namespace udm::update
