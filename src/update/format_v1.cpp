#include "update/format_v1.h"

#include <fmt/format.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_d_format / ZSTD_c_format (magicless delta frames)
#include <zstd.h>

#include <algorithm>
#include <deque>
#include <cstring>
#include <memory>

#include "update/format.h"
#include "util/crc.h"
#include "util/endian.h"

namespace udm::update {

static_assert(v1_max_frame_bytes(4096) == ZSTD_COMPRESSBOUND(4096));
static_assert(v1_max_frame_bytes(kV1MaxChunkBytes) == ZSTD_COMPRESSBOUND(kV1MaxChunkBytes));
static_assert(v1_max_frame_bytes(kV1MaxGroup << kV1MaxBlockBits) == ZSTD_COMPRESSBOUND(kV1MaxGroup << kV1MaxBlockBits));

namespace {
constexpr size_t kCrcEnd = 156;
constexpr size_t kCkptLen = 28;

void put_varint(std::vector<uint8_t>& o, uint64_t v) {
  while (v >= 0x80) {
    o.push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  o.push_back(static_cast<uint8_t>(v));
}
uint64_t zz(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
int64_t unzz(uint64_t v) { return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1); }

struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  bool ok = true;
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) return ok = false, 0;
      uint8_t b = *p++;
      v |= uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return v;
    }
    ok = false;
    return 0;
  }
  uint8_t byte() {
    if (p >= end) return ok = false, 0;
    return *p++;
  }
};

// CRC-32 as zlib computes it (util/crc.h).
uint32_t crc(const uint8_t* p, size_t n) { return crc32_ieee(0, p, n); }
// The header CRC covers bytes 0..155 and, with the old-size flag, continues
// over old_blocks (bytes 160..167), then with the verity flag over the
// record's place and size (bytes 168..179).
uint32_t header_crc(const uint8_t* b) {
  uint32_t c = crc32_ieee(0, b, kCrcEnd);
  if (le16(b + 10) & kV1FlagOldBlocks) c = crc32_ieee(c, b + kV1OldBlocksOffset, 8);
  if (le16(b + 10) & kV1FlagVerity) c = crc32_ieee(c, b + kV1VerityFieldOffset, 12);
  return c;
}
constexpr char kVerityMagic[8] = {'u', 'd', 'm', 'v', 'r', 't', 'y', 0};
constexpr uint32_t kVerityRecordVersion = 1;
constexpr size_t kVerityRootMax = 64;
}  // namespace

std::string hex(std::span<const uint8_t> b) {
  std::string s;
  for (uint8_t c : b) s += fmt::format("{:02x}", c);
  return s;
}

std::array<uint8_t, kV1HeaderSize> encode_v1_header(const V1Header& h) {
  std::array<uint8_t, kV1HeaderSize> b{};
  std::memcpy(b.data(), kDiffMagic, 8);
  b[8] = kVersion1;
  b[9] = h.block_bits;
  const bool own_old = h.old_blocks != 0 && h.old_blocks != h.image_blocks;
  put_le16(&b[10], static_cast<uint16_t>((own_old ? kV1FlagOldBlocks : 0) | (h.chunk_refs ? kV1FlagChunkRefs : 0) |
                                         (h.verity_size ? kV1FlagVerity : 0) |
                                         (h.chunk_new_refs ? kV1FlagChunkNewRefs : 0)));
  put_le32(&b[12], h.chunk_blocks);
  std::memcpy(&b[16], h.compression.data(), std::min<size_t>(h.compression.size(), 15));
  put_le64(&b[32], h.image_blocks);
  put_le64(&b[40], h.op_count);
  put_le64(&b[48], h.meta_offset);
  put_le64(&b[56], h.meta_size);
  put_le64(&b[64], h.meta_raw_size);
  put_le64(&b[72], h.data_offset);
  put_le64(&b[80], h.data_size);
  std::memcpy(&b[88], h.old_sha256.data(), 32);
  std::memcpy(&b[120], h.new_sha256.data(), 32);
  put_le32(&b[152], h.stash_blocks);
  if (own_old) put_le64(&b[kV1OldBlocksOffset], h.old_blocks);
  if (h.verity_size) {
    put_le64(&b[kV1VerityFieldOffset], h.verity_offset);
    put_le32(&b[kV1VerityFieldOffset + 8], h.verity_size);
  }
  put_le32(&b[kCrcEnd], header_crc(b.data()));
  put_le32(&b[kV1CkptOffset], h.ckpt_state ? kV1CkptTag : 0);
  put_le32(&b[kV1CkptOffset + 4], h.ckpt_state);
  put_le64(&b[kV1CkptOffset + 8], h.ckpt_done);
  put_le64(&b[kV1CkptOffset + 16], h.ckpt_state == 2 ? h.ckpt_batch_end : h.ckpt_stash_op);
  put_le32(&b[kV1CkptOffset + 24], h.ckpt_state == 2 ? h.ckpt_batch_crc : h.ckpt_stash_crc);
  put_le32(&b[kV1CkptOffset + kCkptLen], crc(&b[kV1CkptOffset], kCkptLen));
  return b;
}

uint64_t v1_header_max_meta_raw(const V1Header& h) {
  return v1_max_meta_raw(h.op_count, h.chunk_refs ? v1_max_chunk_refs(h.block_bits) : 0);
}

Status v1_validate_header(const V1Header& h) {
  if (h.block_bits < kV1MinBlockBits || h.block_bits > kV1MaxBlockBits)
    return Corrupt(fmt::format("v1 header block_bits: {} (must be {}..{})", h.block_bits, kV1MinBlockBits, kV1MaxBlockBits));
  if (h.chunk_blocks == 0 || (uint64_t{h.chunk_blocks} << h.block_bits) > kV1MaxChunkBytes)
    return Corrupt(fmt::format("v1 header chunk_blocks: {} (must be 1.. and chunks at most {} MiB)", h.chunk_blocks,
                               kV1MaxChunkBytes >> 20));
  if (h.compression != "zstd") return Corrupt("v1 header compression: '" + h.compression + "' (v1 requires zstd)");
  if (h.image_blocks == 0 || h.image_blocks > kV1MaxImageBlocks)
    return Corrupt(fmt::format("v1 header image_blocks: {} (must be 1..2^40-1)", h.image_blocks));
  if (h.old_blocks > kV1MaxImageBlocks)
    return Corrupt(fmt::format("v1 header old_blocks: {} (must be 1..2^40-1)", h.old_blocks));
  if (h.op_count > v1_max_ops(h.image_blocks))
    return Corrupt(fmt::format("v1 header op_count: {} for {} blocks (at most {}: one operation per block and one SAVE "
                               "per block, at most {} in all)",
                               h.op_count, h.image_blocks, v1_max_ops(h.image_blocks), kV1MaxOps));
  if (h.stash_blocks > kV1MaxStashBlocks)
    return Corrupt(fmt::format("v1 header stash_blocks: {} (must be 0 or {})", h.stash_blocks, kV1MaxStashBlocks));
  if (h.meta_offset != kV1HeaderSize + (uint64_t{h.stash_blocks} << h.block_bits))
    return Corrupt(fmt::format("v1 header meta_offset: {} (must be {} after the header and stash)", h.meta_offset,
                               kV1HeaderSize + (uint64_t{h.stash_blocks} << h.block_bits)));
  if (h.meta_size == 0 || h.meta_size > kV1MaxMetaSize) return Corrupt(fmt::format("v1 header meta_size: {}", h.meta_size));
  const uint64_t max_raw = v1_header_max_meta_raw(h);
  if (h.meta_raw_size == 0 || h.meta_raw_size > max_raw)
    return Corrupt(fmt::format("v1 header meta_raw_size: {} is implausible for {} operations (at most {})", h.meta_raw_size,
                               h.op_count, max_raw));
  if (h.data_offset != h.meta_offset + h.meta_size)
    return Corrupt(fmt::format("v1 header data_offset: {} (must follow the metadata at {})", h.data_offset,
                               h.meta_offset + h.meta_size));
  if (h.data_size > kV1MaxDataSize) return Corrupt(fmt::format("v1 header data_size: {}", h.data_size));
  if (h.verity_size && h.verity_size != kV1VerityRecordSize)
    return Corrupt(fmt::format("v1 header verity_size: {} (the record is {} bytes)", h.verity_size, kV1VerityRecordSize));
  if (h.verity_size && h.verity_offset != h.data_offset + h.data_size)
    return Corrupt(fmt::format("v1 header verity_offset: {} (the record follows the data at {})", h.verity_offset,
                               h.data_offset + h.data_size));
  if (!h.verity_size && h.verity_offset) return Corrupt("v1 header verity_offset: set without a verity record");
  return Status::Ok();
}

Result<V1Header> decode_v1_header(std::span<const uint8_t> b) {
  if (b.size() < kV1HeaderSize)
    return Corrupt(fmt::format("v1 header: diff is {} bytes, shorter than the {}-byte header", b.size(), kV1HeaderSize));
  if (!has_diff_magic(b)) return Corrupt("header magic: not an update diff (want \"update\\0\")");
  if (b[8] != kVersion1) return Corrupt(fmt::format("header version: {} is not 1", b[8]));
  if (le32(&b[kCrcEnd]) != header_crc(b.data()))
    return Corrupt("v1 header checksum: the CRC-32 at byte 156 does not match the header bytes it covers");
  V1Header h;
  h.block_bits = b[9];
  const uint16_t flags = le16(&b[10]);
  if (flags & ~kV1KnownFlags)
    return Corrupt(fmt::format("v1 header flags: {:#x} (only bit 0, the old image's own size, bit 1, REPLACE chunk "
                               "references, bit 2, a regenerated verity tree, and bit 3, chunk references to the "
                               "new image, are defined)", flags));
  h.chunk_refs = (flags & kV1FlagChunkRefs) != 0;
  h.chunk_new_refs = (flags & kV1FlagChunkNewRefs) != 0;
  if (h.chunk_new_refs && !h.chunk_refs)
    return Corrupt(fmt::format("v1 header flags: {:#x} (bit 3, chunk references to the new image, needs bit 1, chunk "
                               "references)", flags));
  h.chunk_blocks = le32(&b[12]);
  h.image_blocks = le64(&b[32]);
  h.op_count = le64(&b[40]);
  h.meta_offset = le64(&b[48]);
  h.meta_size = le64(&b[56]);
  h.meta_raw_size = le64(&b[64]);
  h.data_offset = le64(&b[72]);
  h.data_size = le64(&b[80]);
  std::memcpy(h.old_sha256.data(), &b[88], 32);
  std::memcpy(h.new_sha256.data(), &b[120], 32);
  h.stash_blocks = le32(&b[152]);
  size_t reserved_from = kCrcEnd + 4;
  if (flags & kV1FlagOldBlocks) {
    for (size_t i = reserved_from; i < kV1OldBlocksOffset; i++)
      if (b[i]) return Corrupt(fmt::format("v1 header reserved byte {}: not zero", i));
    h.old_blocks = le64(&b[kV1OldBlocksOffset]);
    if (h.old_blocks == 0 || h.old_blocks > kV1MaxImageBlocks)
      return Corrupt(fmt::format("v1 header old_blocks: {} (must be 1..2^40-1)", h.old_blocks));
    if (h.old_blocks == h.image_blocks)
      return Corrupt(fmt::format("v1 header old_blocks: {} equals image_blocks (the flag is only for images of "
                                 "different sizes)", h.old_blocks));
    reserved_from = kV1OldBlocksOffset + 8;
  } else {
    h.old_blocks = h.image_blocks;
  }
  if (flags & kV1FlagVerity) {
    for (size_t i = reserved_from; i < kV1VerityFieldOffset; i++)
      if (b[i]) return Corrupt(fmt::format("v1 header reserved byte {}: not zero", i));
    h.verity_offset = le64(&b[kV1VerityFieldOffset]);
    h.verity_size = le32(&b[kV1VerityFieldOffset + 8]);
    if (h.verity_size == 0) return Corrupt("v1 header verity_size: 0 with the verity flag set");
    reserved_from = kV1VerityFieldOffset + 12;
  }
  for (size_t i = reserved_from; i < kV1CkptOffset; i++)
    if (b[i]) return Corrupt(fmt::format("v1 header reserved byte {}: not zero", i));
  const uint8_t* name = &b[16];
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(name, 0, 16));
  if (!nul) return Corrupt("v1 header compression: name is not NUL-terminated");
  h.compression.assign(reinterpret_cast<const char*>(name), static_cast<size_t>(nul - name));
  for (const uint8_t* q = nul; q < name + 16; q++)
    if (*q) return Corrupt("v1 header compression: bytes after the NUL are not zero");
  UDM_TRY(v1_validate_header(h));
  // Checkpoint: absent (all zero) or tagged with a valid CRC.
  const uint8_t* c = &b[kV1CkptOffset];
  uint32_t tag = le32(c);
  if (tag == kV1CkptTag && le32(c + kCkptLen) == crc(c, kCkptLen)) {
    h.ckpt_state = le32(c + 4);
    h.ckpt_done = le64(c + 8);
    if (h.ckpt_state > 2) return Corrupt(fmt::format("v1 checkpoint state: {}", h.ckpt_state));
    if (h.ckpt_state == 2) {
      h.ckpt_batch_end = le64(c + 16);
      h.ckpt_batch_crc = le32(c + 24);
      if (h.ckpt_batch_end <= h.ckpt_done || h.ckpt_batch_end > h.op_count ||
          h.ckpt_batch_end - h.ckpt_done > kV1MaxBatchOps)
        return Corrupt(fmt::format("v1 checkpoint: logged batch of operations [{}, {}) ({} operations, at most {})",
                                   h.ckpt_done, h.ckpt_batch_end, h.op_count, kV1MaxBatchOps));
    } else {
      h.ckpt_stash_op = le64(c + 16);
      h.ckpt_stash_crc = le32(c + 24);
      if (h.ckpt_stash_op && (!h.stash_blocks || h.ckpt_stash_op != h.ckpt_done + 1))
        return Corrupt(fmt::format("v1 checkpoint: stash for operation {} with {} done", h.ckpt_stash_op, h.ckpt_done));
    }
    if (h.ckpt_done > h.op_count)
      return Corrupt(fmt::format("v1 checkpoint: {} operations done of {}", h.ckpt_done, h.op_count));
  } else if (tag != 0) {
    return Corrupt("v1 checkpoint: bad tag or checksum");
  }
  return h;
}

std::vector<uint8_t> encode_v1_meta(const std::vector<V1Op>& ops, const std::vector<uint64_t>& chunk_lengths,
                                    const std::vector<V1Frame>& frames, const std::vector<uint64_t>& xchunk_lengths,
                                    uint8_t block_bits, const std::vector<std::vector<uint64_t>>* chunk_refs) {
  std::vector<uint8_t> o;
  put_varint(o, chunk_lengths.size());
  for (size_t c = 0; c < chunk_lengths.size(); c++) {
    put_varint(o, chunk_lengths[c]);
    if (!chunk_refs) continue;
    // Reference count, then the (increasing) blocks as gaps.
    const auto& refs = (*chunk_refs)[c];
    put_varint(o, refs.size());
    uint64_t prev = 0;
    for (size_t k = 0; k < refs.size(); k++) {
      put_varint(o, k ? refs[k] - prev - 1 : refs[k]);
      prev = refs[k];
    }
  }
  put_varint(o, xchunk_lengths.size());
  for (uint64_t l : xchunk_lengths) put_varint(o, l);
  put_varint(o, frames.size());
  int64_t prev_dest = -1, prev_delta = 0, prev_shift = 0;
  for (const auto& op : ops) {
    o.push_back(static_cast<uint8_t>(op.type));
    put_varint(o, zz(static_cast<int64_t>(op.dest) - (prev_dest + 1)));
    prev_dest = static_cast<int64_t>(op.dest);
    if (op.type == OpType::Copy || op.type == OpType::Save) {
      int64_t d = static_cast<int64_t>(op.src) - static_cast<int64_t>(op.dest);
      put_varint(o, zz(d - prev_delta));
      prev_delta = d;
    } else if (op.type == OpType::Xor) {
      // Source as a byte shift from the destination's own offset, delta-coded
      // against the previous XOR's (constant along a shifted file).
      int64_t shift = static_cast<int64_t>(op.src) - static_cast<int64_t>(op.dest << block_bits);
      put_varint(o, zz(shift - prev_shift));
      prev_shift = shift;
    } else if (op.type == OpType::Delta && op.member == 0) {
      // The first member of a frame carries the frame; the others nothing.
      const V1Frame& f = frames[op.index];
      put_varint(o, f.length);
      put_varint(o, f.blocks);
      put_varint(o, f.refs.size());
      for (uint64_t r : f.refs) put_varint(o, zz(static_cast<int64_t>(r) - static_cast<int64_t>(op.dest)));
    }
  }
  return o;
}

int64_t V1Index::save_of(uint64_t b) const {
  auto it = std::lower_bound(saves.begin(), saves.end(), b,
                             [](const std::pair<uint64_t, uint32_t>& e, uint64_t d) { return e.first < d; });
  if (it == saves.end() || it->first != b) return -1;
  return it->second;
}

int64_t V1Index::find(uint64_t dest) const {
  auto it = std::lower_bound(by_dest.begin(), by_dest.end(), dest,
                             [](const std::pair<uint64_t, uint32_t>& e, uint64_t d) { return e.first < d; });
  if (it == by_dest.end() || it->first != dest) return -1;
  return it->second;
}

// Wrapping addition: hostile varints must not overflow signed arithmetic;
// a wrapped result is then refused by the range checks.
static int64_t wadd(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

Result<V1Index> parse_v1_header(std::span<const uint8_t> header, uint64_t file_size) {
  V1Index idx;
  idx.file_size = file_size;
  if (idx.file_size < kV1HeaderSize)
    return Corrupt(fmt::format("v1 header: diff is {} bytes, shorter than the {}-byte header", idx.file_size, kV1HeaderSize));
  UDM_ASSIGN_OR_RETURN(idx.h, decode_v1_header(header));
  const V1Header& h = idx.h;
  if (h.data_offset > idx.file_size || h.data_size > idx.file_size - h.data_offset)
    return Corrupt(fmt::format("v1 header data_offset/data_size: [{}, +{}) is outside the {}-byte file", h.data_offset,
                               h.data_size, idx.file_size));
  if (h.verity_size && (h.verity_offset > idx.file_size || h.verity_size > idx.file_size - h.verity_offset))
    return Corrupt(fmt::format("v1 header verity_offset/verity_size: [{}, +{}) is outside the {}-byte file",
                               h.verity_offset, h.verity_size, idx.file_size));
  return idx;
}

Result<uint64_t> v1_verity_region_blocks(const verity::Params& p, uint64_t hash_offset, bool superblock,
                                         uint32_t block_size) {
  UDM_ASSIGN_OR_RETURN(verity::Geometry g, verity::compute_geometry(p));
  const uint64_t end = g.end_block();
  if (end > UINT64_MAX / p.hash_block_size) return Corrupt("verity tree end overflows");
  const uint64_t end_bytes = std::max(end * p.hash_block_size, hash_offset + (superblock ? verity::kSuperblockSize : 0));
  if (end_bytes <= hash_offset) return Corrupt("verity hash area is empty");
  return (end_bytes - hash_offset + block_size - 1) / block_size;
}

std::array<uint8_t, kV1VerityRecordSize> encode_v1_verity(const V1Verity& v) {
  std::array<uint8_t, kV1VerityRecordSize> b{};
  std::memcpy(b.data(), kVerityMagic, 8);
  put_le32(&b[8], kVerityRecordVersion);
  put_le32(&b[12], v.superblock ? 1 : 0);
  put_le64(&b[16], v.hash_offset);
  put_le64(&b[24], v.region_blocks);
  put_le32(&b[32], static_cast<uint32_t>(v.root.size()));
  auto sb = verity::encode_superblock(v.sb);
  std::memcpy(&b[64], sb.data(), sb.size());
  std::memcpy(&b[576], v.root.data(), std::min(v.root.size(), kVerityRootMax));
  put_le32(&b[kV1VerityRecordSize - 4], crc(b.data(), kV1VerityRecordSize - 4));
  return b;
}

Status parse_v1_verity(V1Index& idx, std::span<const uint8_t> b) {
  const V1Header& h = idx.h;
  if (!h.verity_size) return Status::Ok();
  if (b.size() != kV1VerityRecordSize)
    return Corrupt(fmt::format("v1 verity record: {} bytes, want {}", b.size(), kV1VerityRecordSize));
  if (std::memcmp(b.data(), kVerityMagic, 8) != 0) return Corrupt("v1 verity record magic: not \"udmvrty\"");
  if (le32(&b[kV1VerityRecordSize - 4]) != crc(b.data(), kV1VerityRecordSize - 4))
    return Corrupt("v1 verity record checksum: the CRC-32 at byte 1020 does not match");
  if (le32(&b[8]) != kVerityRecordVersion) return Corrupt(fmt::format("v1 verity record version: {}", le32(&b[8])));
  const uint32_t flags = le32(&b[12]);
  if (flags & ~1u) return Corrupt(fmt::format("v1 verity record flags: {:#x} (only bit 0, superblock, is defined)", flags));
  V1Verity v;
  v.superblock = flags & 1;
  v.hash_offset = le64(&b[16]);
  v.region_blocks = le64(&b[24]);
  const uint32_t root_size = le32(&b[32]);
  for (size_t i = 36; i < 64; i++)
    if (b[i]) return Corrupt(fmt::format("v1 verity record reserved byte {}: not zero", i));
  for (size_t i = 640; i < kV1VerityRecordSize - 4; i++)
    if (b[i]) return Corrupt(fmt::format("v1 verity record reserved byte {}: not zero", i));
  auto sb = verity::decode_superblock(b.subspan(64, verity::kSuperblockSize));
  if (!sb.ok()) return Corrupt("v1 verity record superblock: " + sb.status().message());
  v.sb = *sb;
  const uint64_t bs = idx.block_size();
  if (v.hash_offset % bs)
    return Corrupt(fmt::format("v1 verity record hash_offset: {} is not a multiple of the diff's block size {}",
                               v.hash_offset, bs));
  auto hs = verity::hash_start_for_offset(v.hash_offset, v.sb.hash_block_size, v.superblock);
  if (!hs.ok()) return Corrupt("v1 verity record hash_offset: " + hs.status().message());
  v.params = verity::params_of(v.sb, *hs);
  auto g = verity::compute_geometry(v.params);
  if (!g.ok()) return Corrupt("v1 verity record: " + g.status().message());
  if (root_size != g->digest_size || root_size > kVerityRootMax)
    return Corrupt(fmt::format("v1 verity record root_size: {} ({} digests are {} bytes)", root_size, v.params.algorithm,
                               g->digest_size));
  for (size_t i = 576 + root_size; i < 640; i++)
    if (b[i]) return Corrupt(fmt::format("v1 verity record root: byte {} after the digest is not zero", i));
  v.root.assign(b.begin() + 576, b.begin() + 576 + root_size);
  UDM_ASSIGN_OR_RETURN(uint64_t want, v1_verity_region_blocks(v.params, v.hash_offset, v.superblock, idx.block_size()));
  if (v.region_blocks != want)
    return Corrupt(fmt::format("v1 verity record region_blocks: {} (the hash area at {} with these parameters covers {})",
                               v.region_blocks, v.hash_offset, want));
  const uint64_t first = v.hash_offset / bs;
  if (first > h.image_blocks || v.region_blocks > h.image_blocks - first)
    return Corrupt(fmt::format("v1 verity record: the hash area (blocks [{}, +{})) runs past the new image ({} blocks)",
                               first, v.region_blocks, h.image_blocks));
  if (v.sb.data_blocks > v.hash_offset / v.sb.data_block_size)
    return Corrupt(fmt::format("v1 verity record: {} data blocks of {} bytes overlap the hash area at byte {}",
                               v.sb.data_blocks, v.sb.data_block_size, v.hash_offset));
  idx.region_first = first;
  idx.region_end = first + v.region_blocks;
  idx.verity = std::move(v);
  return Status::Ok();
}

Result<std::vector<uint8_t>> v1_verity_region(const V1Index& idx, std::span<const uint8_t> tree) {
  if (!idx.verity) return Invalid("v1 diff has no verity record");
  const V1Verity& v = *idx.verity;
  UDM_ASSIGN_OR_RETURN(verity::Geometry g, verity::compute_geometry(v.params));
  const uint64_t hbs = v.params.hash_block_size;
  if (tree.size() != g.tree_blocks * hbs)
    return Invalid(fmt::format("verity tree of {} bytes, want {}", tree.size(), g.tree_blocks * hbs));
  std::vector<uint8_t> out(idx.region_blocks() * idx.block_size(), 0);
  if (v.superblock) {
    auto sb = verity::encode_superblock(v.sb);
    std::memcpy(out.data(), sb.data(), sb.size());
  }
  const uint64_t at = v.params.hash_start * hbs - v.hash_offset;
  if (at > out.size() || tree.size() > out.size() - at) return Invalid("verity tree does not fit its region");
  if (!tree.empty()) std::memcpy(out.data() + at, tree.data(), tree.size());
  return out;
}

Status parse_v1_meta(V1Index& idx, std::span<const uint8_t> cmeta) {
  const V1Header& h = idx.h;
  if (cmeta.size() != h.meta_size)
    return Invalid(fmt::format("parse_v1_meta: {} bytes given for {}-byte metadata", cmeta.size(), h.meta_size));
  unsigned long long fsz = ZSTD_getFrameContentSize(cmeta.data(), cmeta.size());
  if (fsz != h.meta_raw_size)
    return Corrupt(fmt::format("v1 metadata: frame content size does not match meta_raw_size {}", h.meta_raw_size));
  std::vector<uint8_t> meta(h.meta_raw_size);
  size_t got = ZSTD_decompress(meta.data(), meta.size(), cmeta.data(), cmeta.size());
  if (ZSTD_isError(got)) return Corrupt(std::string("v1 metadata: zstd: ") + ZSTD_getErrorName(got));
  if (got != meta.size()) return Corrupt(fmt::format("v1 metadata: decompresses to {} bytes, want {}", got, meta.size()));

  Reader r{meta.data(), meta.data() + meta.size()};
  const uint64_t bs = idx.block_size();
  const uint64_t chunk_bytes = uint64_t{h.chunk_blocks} * bs;
  const uint64_t old_blocks = idx.old_blocks();
  uint64_t n_chunks = r.varint();
  if (!r.ok || n_chunks > h.op_count) return Corrupt(fmt::format("v1 metadata: chunk count {} is bad", n_chunks));
  uint64_t off = h.data_offset, end = h.data_offset + h.data_size;
  const uint64_t chunk_limit = v1_max_frame_bytes(chunk_bytes);
  for (uint64_t i = 0; i < n_chunks; i++) {
    uint64_t l = r.varint();
    if (!r.ok || l == 0 || l > chunk_limit || l > end - off)
      return Corrupt(fmt::format("v1 metadata: chunk {} length {} is bad or runs past the data", i, l));
    V1Frame c{off, l, {}};
    if (h.chunk_refs) {
      // Old blocks, then (flag CHUNK_NEW_REFS) old_blocks + a new-image block.
      const uint64_t ref_end = old_blocks + (h.chunk_new_refs ? h.image_blocks : 0);
      const uint64_t nref = r.varint();
      if (!r.ok || nref > v1_max_chunk_refs(h.block_bits) || nref > ref_end)
        return Corrupt(fmt::format("v1 metadata: chunk {} has {} reference blocks (at most {} and the images' {})", i,
                                   nref, v1_max_chunk_refs(h.block_bits), ref_end));
      uint64_t prev = 0;
      for (uint64_t k = 0; k < nref; k++) {
        const uint64_t gap = r.varint();
        const uint64_t ref = k ? prev + 1 + gap : gap;
        if (!r.ok || gap >= ref_end || ref >= ref_end || (k && ref <= prev))
          return Corrupt(fmt::format("v1 metadata: chunk {} reference {} is outside the {} ({} blocks)", i, k,
                                     h.chunk_new_refs ? "old and new images" : "old image", ref_end));
        c.refs.push_back(ref);
        prev = ref;
      }
    }
    idx.chunks.push_back(std::move(c));
    off += l;
  }
  uint64_t n_xchunks = r.varint();
  if (!r.ok || n_xchunks > h.op_count) return Corrupt(fmt::format("v1 metadata: XOR chunk count {} is bad", n_xchunks));
  for (uint64_t i = 0; i < n_xchunks; i++) {
    uint64_t l = r.varint();
    if (!r.ok || l == 0 || l > chunk_limit || l > end - off)
      return Corrupt(fmt::format("v1 metadata: XOR chunk {} length {} is bad or runs past the data", i, l));
    idx.xchunks.push_back(V1Frame{off, l, {}});
    off += l;
  }
  uint64_t n_frames = r.varint();
  if (!r.ok || n_frames > h.op_count) return Corrupt(fmt::format("v1 metadata: delta frame count {} is bad", n_frames));
  idx.ops.resize(h.op_count);
  idx.by_dest.reserve(h.op_count);
  int64_t prev_dest = -1, prev_delta = 0, prev_shift = 0;
  uint64_t n_replace = 0, n_xor = 0;
  std::vector<uint32_t> xor_ops;
  // Old content is read only from the old image's blocks; destinations lie in
  // the new image. A COPY may also read a parking block (checked below).
  const uint64_t old_bytes = old_blocks * bs;
  const uint64_t dev_blocks = std::max(old_blocks, h.image_blocks);
  uint32_t frame_left = 0;  // members of the current DELTA frame still to come
  std::vector<uint32_t> replace_ops;
  for (uint64_t i = 0; i < h.op_count; i++) {
    V1Op& op = idx.ops[i];
    uint8_t t = r.byte();
    if (!r.ok || t > 5) return Corrupt(fmt::format("v1 operation {}: type {} is bad or missing", i, t));
    op.type = static_cast<OpType>(t);
    int64_t dd = unzz(r.varint());
    int64_t dest = wadd(prev_dest + 1, dd);
    if (!r.ok || dest < 0 || static_cast<uint64_t>(dest) >= h.image_blocks)
      return Corrupt(fmt::format("v1 operation {}: destination {} is outside the image ({} blocks)", i, dest, h.image_blocks));
    op.dest = static_cast<uint64_t>(dest);
    prev_dest = dest;
    if (idx.generated(op.dest))
      return Corrupt(fmt::format("v1 operation {}: writes block {} inside the regenerated verity area [{}, {})", i,
                                 op.dest, idx.region_first, idx.region_end));
    if (op.type == OpType::Copy || op.type == OpType::Save) {
      int64_t d = wadd(prev_delta, unzz(r.varint()));
      int64_t src = wadd(dest, d);
      const uint64_t src_limit = op.type == OpType::Save ? old_blocks : dev_blocks;
      if (!r.ok || src < 0 || static_cast<uint64_t>(src) >= src_limit || src == dest)
        return Corrupt(fmt::format("v1 operation {}: {} source {} is bad (the old image has {} blocks)", i,
                                   op.type == OpType::Save ? "SAVE" : "COPY", src, old_blocks));
      op.src = static_cast<uint64_t>(src);
      prev_delta = d;
    } else if (op.type == OpType::Replace) {
      if (n_replace >= n_chunks * h.chunk_blocks)
        return Corrupt(fmt::format("v1 operation {}: more REPLACE blocks than {} chunks hold", i, n_chunks));
      n_replace++;
      replace_ops.push_back(static_cast<uint32_t>(i));
    } else if (op.type == OpType::Xor) {
      int64_t shift = wadd(prev_shift, unzz(r.varint()));
      int64_t src = wadd(static_cast<int64_t>(op.dest * bs), shift);
      if (!r.ok || src < 0 || static_cast<uint64_t>(src) > old_bytes - bs)
        return Corrupt(fmt::format("v1 operation {}: XOR source bytes at {} are outside the old image ({} bytes)", i, src,
                                   old_bytes));
      if (n_xor >= n_xchunks * h.chunk_blocks)
        return Corrupt(fmt::format("v1 operation {}: more XOR blocks than {} XOR chunks hold", i, n_xchunks));
      op.src = static_cast<uint64_t>(src);
      prev_shift = shift;
      n_xor++;
      xor_ops.push_back(static_cast<uint32_t>(i));
    } else if (op.type == OpType::Delta && frame_left > 0) {
      V1Frame& f = idx.frames.back();
      op.index = static_cast<uint32_t>(idx.frames.size() - 1);
      op.member = f.blocks - frame_left--;
    } else if (op.type == OpType::Delta) {
      if (idx.frames.size() >= n_frames) return Corrupt(fmt::format("v1 operation {}: more DELTA frames than {} listed", i, n_frames));
      V1Frame f;
      f.length = r.varint();
      uint64_t nblk = r.varint();
      uint64_t nref = r.varint();
      if (!r.ok || nblk == 0 || nblk > kV1MaxGroup)
        return Corrupt(fmt::format("v1 operation {}: delta frame of {} blocks (must be 1..{})", i, nblk, kV1MaxGroup));
      f.blocks = static_cast<uint32_t>(nblk);
      if (f.length == 0 || f.length > v1_max_frame_bytes(nblk * bs) || f.length > end - off)
        return Corrupt(fmt::format("v1 operation {}: delta frame length {} is bad or runs past the data", i, f.length));
      if (nref == 0 || nref > kV1MaxRefs)
        return Corrupt(fmt::format("v1 operation {}: {} reference blocks (must be 1..{})", i, nref, kV1MaxRefs));
      for (uint64_t k = 0; k < nref; k++) {
        int64_t ref = wadd(dest, unzz(r.varint()));
        if (!r.ok || ref < 0 || static_cast<uint64_t>(ref) >= old_blocks)
          return Corrupt(fmt::format("v1 operation {}: reference block {} is outside the old image ({} blocks)", i, ref,
                                     old_blocks));
        f.refs.push_back(static_cast<uint64_t>(ref));
      }
      f.offset = off;
      off += f.length;
      op.index = static_cast<uint32_t>(idx.frames.size());
      op.member = 0;
      frame_left = f.blocks - 1;
      idx.frames.push_back(std::move(f));
    }
    if (op.type == OpType::Save) idx.saves.push_back({op.dest, static_cast<uint32_t>(i)});
    else idx.by_dest.push_back({op.dest, static_cast<uint32_t>(i)});
  }
  idx.n_replace = n_replace;
  if (r.p != r.end) return Corrupt(fmt::format("v1 metadata: {} bytes left over after the operations", r.end - r.p));
  if (frame_left)
    return Corrupt(fmt::format("v1 metadata: the last delta frame misses {} of its DELTA operations", frame_left));
  if (idx.frames.size() != n_frames)
    return Corrupt(fmt::format("v1 metadata: {} delta frames listed but the DELTA operations use {}", n_frames,
                               idx.frames.size()));
  // REPLACE blocks sit in the chunks in destination order (neighbouring
  // blocks of a file compress together whatever their apply order).
  std::sort(replace_ops.begin(), replace_ops.end(), [&](uint32_t a, uint32_t b) {
    return idx.ops[a].dest != idx.ops[b].dest ? idx.ops[a].dest < idx.ops[b].dest : a < b;
  });
  for (size_t k = 0; k < replace_ops.size(); k++) idx.ops[replace_ops[k]].index = static_cast<uint32_t>(k);
  if ((n_xor + h.chunk_blocks - 1) / h.chunk_blocks != n_xchunks)
    return Corrupt(fmt::format("v1 metadata: {} XOR blocks do not fill {} XOR chunks of {}", n_xor, n_xchunks, h.chunk_blocks));
  std::sort(xor_ops.begin(), xor_ops.end(), [&](uint32_t a, uint32_t b) {
    return idx.ops[a].dest != idx.ops[b].dest ? idx.ops[a].dest < idx.ops[b].dest : a < b;
  });
  for (size_t k = 0; k < xor_ops.size(); k++) idx.ops[xor_ops[k]].index = static_cast<uint32_t>(k);
  idx.n_xor = n_xor;
  if ((n_replace + h.chunk_blocks - 1) / h.chunk_blocks != n_chunks)
    return Corrupt(fmt::format("v1 metadata: {} REPLACE blocks do not fill {} chunks of {}", n_replace, n_chunks, h.chunk_blocks));
  if (off != end) return Corrupt(fmt::format("v1 metadata: chunks and frames cover {} of {} data bytes", off - h.data_offset, h.data_size));
  std::sort(idx.by_dest.begin(), idx.by_dest.end());
  for (size_t i = 1; i < idx.by_dest.size(); i++)
    if (idx.by_dest[i].first == idx.by_dest[i - 1].first)
      return Corrupt(fmt::format("v1 operations: block {} is written twice", idx.by_dest[i].first));
  if (h.image_blocks > old_blocks) {
    // The new image's blocks past the old image's end hold whatever the
    // system device had there: each must get its content from the diff.
    auto first_new = std::lower_bound(idx.by_dest.begin(), idx.by_dest.end(), std::pair<uint64_t, uint32_t>{old_blocks, 0});
    // (The regenerated verity area is the device's own to write.)
    uint64_t have = static_cast<uint64_t>(idx.by_dest.end() - first_new);
    const uint64_t gen = idx.region_end > old_blocks ? idx.region_end - std::max(old_blocks, idx.region_first) : 0;
    if (have + gen != h.image_blocks - old_blocks) {
      uint64_t b = old_blocks;
      for (auto it = first_new; b < h.image_blocks; b++) {
        if (idx.generated(b)) continue;
        if (it == idx.by_dest.end() || it->first != b) break;
        ++it;
      }
      return Corrupt(fmt::format("v1 operations: block {} lies past the old image's end ({} blocks) and has no operation",
                                 b, old_blocks));
    }
  }
  std::sort(idx.saves.begin(), idx.saves.end());
  for (size_t i = 0; i < idx.saves.size(); i++) {
    if (i > 0 && idx.saves[i].first == idx.saves[i - 1].first)
      return Corrupt(fmt::format("v1 operations: block {} parks two SAVEs", idx.saves[i].first));
    int64_t w = idx.find(idx.saves[i].first);
    if (w < 0 || w < idx.saves[i].second)
      return Corrupt(fmt::format("v1 operation {}: SAVE into block {} that no later operation writes",
                                 idx.saves[i].second, idx.saves[i].first));
  }
  // Order check: an operation may read an old block only before the
  // operation that overwrites it (or, for DELTA, while writing it itself).
  idx.last_reader.assign(h.op_count, -1);
  std::vector<uint64_t> self_readers;  // operations that read their own block
  auto check_read = [&](uint64_t i, uint64_t b, bool self_ok) -> Status {
    int64_t w = idx.find(b);
    int64_t sv = idx.save_of(b);
    if (sv >= 0) {
      if (static_cast<int64_t>(i) < sv) {  // reads the old block before it is parked over
        idx.last_reader[sv] = std::max<int64_t>(idx.last_reader[sv], static_cast<int64_t>(i));
      } else if (idx.ops[i].type == OpType::Copy && static_cast<int64_t>(i) < w) {  // reads the parked block
        idx.last_reader[w] = std::max<int64_t>(idx.last_reader[w], static_cast<int64_t>(i));
        return Status::Ok();
      } else {
        return Corrupt(fmt::format("v1 operation {}: reads block {} after SAVE {} parked a block there", i, b, sv));
      }
    }
    if (b >= old_blocks)
      return Corrupt(fmt::format("v1 operation {}: reads block {} past the old image's end ({} blocks)", i, b, old_blocks));
    if (w < 0) return Status::Ok();
    if (static_cast<uint64_t>(w) < i || (static_cast<uint64_t>(w) == i && !self_ok))
      return Corrupt(fmt::format("v1 operation {}: reads block {} after operation {} overwrote it", i, b, w));
    if (static_cast<uint64_t>(w) == i && (self_readers.empty() || self_readers.back() != i)) self_readers.push_back(i);
    if (static_cast<uint64_t>(w) > i) idx.last_reader[w] = std::max<int64_t>(idx.last_reader[w], static_cast<int64_t>(i));
    return Status::Ok();
  };
  for (uint64_t i = 0; i < h.op_count; i++) {
    const V1Op& op = idx.ops[i];
    if (op.type == OpType::Copy || op.type == OpType::Save) UDM_TRY(check_read(i, op.src, false));
    if (op.type == OpType::Save && idx.save_of(op.src) >= 0)
      return Corrupt(fmt::format("v1 operation {}: SAVE of block {} which is itself a parking block", i, op.src));
    if (op.type == OpType::Delta)
      for (uint64_t ref : idx.frames[op.index].refs) UDM_TRY(check_read(i, ref, true));
    if (op.type == OpType::Xor) {
      auto [b0, b1] = v1_xor_blocks(idx, op);
      UDM_TRY(check_read(i, b0, true));
      if (b1 != b0) UDM_TRY(check_read(i, b1, true));
    }
  }
  if (h.chunk_refs) {
    // Every block of a REPLACE chunk reads the chunk's references, so they
    // must stay intact (never overwritten, never parked over) until the
    // chunk's last block in the apply order is written: checked for that
    // last block, which also becomes their last reader.
    std::vector<int64_t> last_member(idx.chunks.size(), -1);
    for (uint32_t i : replace_ops) {
      int64_t& lm = last_member[idx.ops[i].index / h.chunk_blocks];
      lm = std::max<int64_t>(lm, i);
    }
    for (size_t c = 0; c < idx.chunks.size(); c++)
      for (uint64_t ref : idx.chunks[c].refs) {
        if (idx.new_ref(ref)) {
          // A new-image block: its operation must be a COPY (its bytes are
          // then an old block at every moment; docs/update-format.md).
          const uint64_t nb = ref - old_blocks;
          const int64_t e = idx.find(nb);
          if (e < 0)
            return Corrupt(fmt::format("v1 REPLACE chunk {}: reference to new-image block {}, which no operation "
                                       "writes (only a COPY's block may be referenced)", c, nb));
          if (idx.ops[static_cast<size_t>(e)].type != OpType::Copy)
            return Corrupt(fmt::format("v1 REPLACE chunk {}: reference to new-image block {}, whose operation {} is "
                                       "not a COPY", c, nb, e));
          continue;
        }
        Status s = check_read(static_cast<uint64_t>(last_member[c]), ref, false);
        if (!s.ok()) return Corrupt(fmt::format("v1 REPLACE chunk {}: {}", c, s.message()));
      }
  }
  if (!h.stash_blocks && !self_readers.empty()) {
    // Without a stash each of them must find a scratch block (kV1SelfScratchScan).
    const int64_t i = V1ScratchPlanner(idx).first_without_scratch(self_readers, kV1SelfScratchScan);
    if (i >= 0)
      return Corrupt(fmt::format("v1 operation {}: reads its own block {}, and the diff has neither a stash nor a "
                                 "scratch block for it in the {} operations after it",
                                 i, idx.ops[static_cast<size_t>(i)].dest, kV1SelfScratchScan));
  }
  if (h.ckpt_state == 0 && h.ckpt_done != 0) return Corrupt("v1 checkpoint: progress without the started state");
  return Status::Ok();
}


Result<V1Index> load_v1_head(std::span<const uint8_t> header, std::span<const uint8_t> cmeta, uint64_t file_size,
                             std::span<const uint8_t> verity_record) {
  UDM_ASSIGN_OR_RETURN(V1Index idx, parse_v1_header(header, file_size));
  UDM_TRY(parse_v1_verity(idx, verity_record));
  UDM_TRY(parse_v1_meta(idx, cmeta));
  return idx;
}

Result<V1Index> load_v1_bytes(std::span<const uint8_t> file) {
  UDM_ASSIGN_OR_RETURN(V1Index idx, parse_v1_header(file.first(std::min(file.size(), kV1HeaderSize)), file.size()));
  if (idx.h.verity_size) UDM_TRY(parse_v1_verity(idx, file.subspan(idx.h.verity_offset, idx.h.verity_size)));
  UDM_TRY(parse_v1_meta(idx, file.subspan(idx.h.meta_offset, idx.h.meta_size)));
  return idx;
}

uint64_t v1_chunk_blocks(const V1Index& idx, size_t ci, bool xor_chunk) {
  return std::min<uint64_t>(idx.h.chunk_blocks,
                            (xor_chunk ? idx.n_xor : idx.n_replace) - uint64_t{idx.h.chunk_blocks} * ci);
}

Status decode_v1_chunk(const V1Index& idx, size_t ci, bool xor_chunk, std::span<const uint8_t> src,
                       std::span<uint8_t> out, std::span<const uint8_t> prefix) {
  const V1Frame& c = xor_chunk ? idx.xchunks[ci] : idx.chunks[ci];
  uint64_t want = v1_chunk_blocks(idx, ci, xor_chunk) * idx.block_size();
  if (out.size() < want) return Invalid("v1 chunk: output buffer too small");
  if (prefix.size() != c.refs.size() * idx.block_size())
    return Invalid(fmt::format("v1 chunk {}: {} prefix bytes for {} reference blocks", ci, prefix.size(), c.refs.size()));
  thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_and_parameters);
  ZSTD_DCtx_setParameter(dctx.get(), ZSTD_d_windowLogMax, kV1ChunkWindowLog);
  if (!prefix.empty()) ZSTD_DCtx_refPrefix(dctx.get(), prefix.data(), prefix.size());
  size_t n = ZSTD_decompressDCtx(dctx.get(), out.data(), want, src.data(), src.size());
  if (ZSTD_isError(n)) return Corrupt(fmt::format("v1 chunk {} at {}: zstd: {}", ci, c.offset, ZSTD_getErrorName(n)));
  if (n != want) return Corrupt(fmt::format("v1 chunk {} at {}: decompresses to {} bytes, want {}", ci, c.offset, n, want));
  return Status::Ok();
}

Status decode_v1_delta(const V1Index& idx, size_t fi, std::span<const uint8_t> prefix, std::span<const uint8_t> src,
                       std::span<uint8_t> out) {
  const V1Frame& f = idx.frames[fi];
  const uint64_t want = uint64_t{f.blocks} * idx.block_size();
  if (out.size() < want) return Invalid("v1 delta frame: output buffer too small");
  thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_and_parameters);
  ZSTD_DCtx_setParameter(dctx.get(), ZSTD_d_windowLogMax, 27);
  ZSTD_DCtx_setParameter(dctx.get(), ZSTD_d_format, ZSTD_f_zstd1_magicless);
  ZSTD_DCtx_refPrefix(dctx.get(), prefix.data(), prefix.size());
  size_t n = ZSTD_decompressDCtx(dctx.get(), out.data(), want, src.data(), src.size());
  if (ZSTD_isError(n)) return Corrupt(fmt::format("v1 delta frame {} at {}: zstd: {}", fi, f.offset, ZSTD_getErrorName(n)));
  if (n != want)
    return Corrupt(fmt::format("v1 delta frame {} at {}: decompresses to {} bytes, want {}", fi, f.offset, n, want));
  return Status::Ok();
}

void v1_xor_into(std::span<uint8_t> out, const uint8_t* pay) {
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    uint64_t a, b;
    std::memcpy(&a, out.data() + i, 8);
    std::memcpy(&b, pay + i, 8);
    a ^= b;
    std::memcpy(out.data() + i, &a, 8);
  }
  for (; i < out.size(); i++) out[i] ^= pay[i];
}


void put_v1_checkpoint(std::span<uint8_t> sector, uint32_t state, uint64_t done, std::span<const uint8_t> stash) {
  uint8_t* c = &sector[kV1CkptOffset];
  put_le32(c, kV1CkptTag);
  put_le32(c + 4, state);
  put_le64(c + 8, done);
  put_le64(c + 16, stash.empty() ? 0 : done + 1);
  put_le32(c + 24, stash.empty() ? 0 : crc(stash.data(), stash.size()));
  put_le32(c + kCkptLen, crc(c, kCkptLen));
}

void put_v1_batch_checkpoint(std::span<uint8_t> sector, uint64_t done, uint64_t end, uint32_t batch_crc) {
  uint8_t* c = &sector[kV1CkptOffset];
  put_le32(c, kV1CkptTag);
  put_le32(c + 4, 2);
  put_le64(c + 8, done);
  put_le64(c + 16, end);
  put_le32(c + 24, batch_crc);
  put_le32(c + kCkptLen, crc(c, kCkptLen));
}

uint32_t v1_crc(std::span<const uint8_t> bytes) { return crc(bytes.data(), bytes.size()); }

V1ScratchPlanner::V1ScratchPlanner(const V1Index& idx) : idx_(idx) {
  std::vector<std::pair<uint64_t, uint32_t>> w, r;
  w.reserve(idx.ops.size());
  for (uint32_t i = 0; i < idx.ops.size(); i++) {
    const V1Op& op = idx.ops[i];
    w.emplace_back(op.dest, i);
    // Every block the operation may read, in any state (a COPY of a parked
    // block reads the parking block: SAVE's destination, counted below).
    if (op.type == OpType::Copy || op.type == OpType::Save) r.emplace_back(op.src, i);
    if (op.type == OpType::Copy) {
      int64_t sv = idx.save_of(op.src);
      if (sv >= 0) r.emplace_back(idx.ops[static_cast<size_t>(sv)].dest, i);
    }
    if (op.type == OpType::Delta)
      for (uint64_t ref : idx.frames[op.index].refs) r.emplace_back(ref, i);
    if (op.type == OpType::Xor) {
      auto [b0, b1] = v1_xor_blocks(idx, op);
      r.emplace_back(b0, i);
      r.emplace_back(b1, i);
    }
    // A REPLACE chunk's reference blocks (flag CHUNK_REFS) are read by every
    // operation of the chunk (whichever decodes it first).
    if (op.type == OpType::Replace && idx.h.chunk_blocks) {
      const size_t ci = op.index / idx.h.chunk_blocks;
      if (ci < idx.chunks.size())
        for (uint64_t ref : idx.chunks[ci].refs)
          // (A reference to the new image reads the COPY's block once it is
          // applied, never as scratch, or before that what the COPY reads,
          // which the COPY itself counts.)
          if (!idx.new_ref(ref)) r.emplace_back(ref, i);
    }
  }
  auto reduce = [](std::vector<std::pair<uint64_t, uint32_t>>& v, bool keep_min) {
    std::sort(v.begin(), v.end());
    std::vector<std::pair<uint64_t, uint32_t>> out;
    for (auto& [b, i] : v) {
      if (!out.empty() && out.back().first == b) {
        if (!keep_min) out.back().second = i;  // sorted: the last is the largest
      } else {
        out.emplace_back(b, i);
      }
    }
    v = std::move(out);
  };
  reduce(w, true);
  reduce(r, false);
  // Per operation, looked up once: the scan below runs at every barrier.
  auto lookup = [](const std::vector<std::pair<uint64_t, uint32_t>>& v, uint64_t b) -> int64_t {
    auto it = std::lower_bound(v.begin(), v.end(), std::make_pair(b, uint32_t{0}));
    return it != v.end() && it->first == b ? int64_t{it->second} : -1;
  };
  first_write_.resize(idx.ops.size());
  dest_last_read_.resize(idx.ops.size());
  for (uint32_t i = 0; i < idx.ops.size(); i++) {
    first_write_[i] = lookup(w, idx.ops[i].dest) == static_cast<int64_t>(i);
    dest_last_read_[i] = lookup(r, idx.ops[i].dest);
  }
}

std::vector<uint64_t> V1ScratchPlanner::scratch(uint64_t d, uint64_t e, uint64_t want, int64_t* last_read,
                                                uint64_t max_scan) const {
  std::vector<uint64_t> out;
  if (last_read) *last_read = -1;
  const uint64_t stop = max_scan >= idx_.ops.size() - std::min<uint64_t>(e, idx_.ops.size()) ? idx_.ops.size() : e + max_scan;
  for (uint64_t j = e; j < stop && out.size() < want; j++) {
    const uint64_t b = idx_.ops[j].dest;
    if (!first_write_[j]) continue;  // written earlier (or counted already)
    const int64_t lr = dest_last_read_[j];
    if (lr >= static_cast<int64_t>(d)) continue;  // still read by d or later
    if (last_read) *last_read = std::max(*last_read, lr);
    out.push_back(b);
  }
  return out;
}

int64_t V1ScratchPlanner::first_without_scratch(std::span<const uint64_t> ops, uint64_t max_scan) const {
  // scratch(i, i + 1, 1) looks at j in [i + 1, min(n, i + 1 + max_scan))
  // for a first write whose block no operation from i on reads: it finds
  // one iff the window's smallest such last reader is below i. Both window
  // ends only move forward, so a deque of candidates with increasing last
  // readers gives each window's minimum.
  const uint64_t n = idx_.ops.size();
  std::deque<uint64_t> q;  // j in the window, dest_last_read_ increasing
  uint64_t hi = 0;         // operations before hi were offered to q
  for (uint64_t i : ops) {
    const uint64_t lo = i + 1, end = max_scan >= n - std::min(lo, n) ? n : lo + max_scan;
    for (hi = std::max(hi, lo); hi < end; hi++) {
      if (!first_write_[hi]) continue;
      while (!q.empty() && dest_last_read_[q.back()] >= dest_last_read_[hi]) q.pop_back();
      q.push_back(hi);
    }
    while (!q.empty() && q.front() < lo) q.pop_front();
    if (q.empty() || dest_last_read_[q.front()] >= static_cast<int64_t>(i)) return static_cast<int64_t>(i);
  }
  return -1;
}

bool v1_has_stash(const V1Index& idx) { return idx.h.ckpt_stash_op && idx.h.ckpt_stash_op == idx.h.ckpt_done + 1; }

Status check_v1_stash(const V1Index& idx, std::span<const uint8_t> block) {
  if (crc(block.data(), idx.block_size()) != idx.h.ckpt_stash_crc)
    return Corrupt("v1 checkpoint: the stashed block does not match its checksum");
  return Status::Ok();
}

}  // namespace udm::update
