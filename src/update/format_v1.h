// dm-update diff format v1 (udm's own; docs/update-format.md "Format v1").
//
//   [0, 512)        header (little-endian, explicit widths, CRC-32 over 0..155)
//   [512, 512+bs)   stash block (only if stash_blocks = 1)
//                   plus the copy-back checkpoint at byte 256 (its own CRC)
//   [meta_offset)   metadata, one zstd frame: chunk sizes, delta frame sizes
//                   and reference lists, then the operations in APPLY ORDER
//   [data_offset)   REPLACE chunks (zstd, chunk_blocks blocks each, REPLACE
//                   blocks taken in destination order), then the DELTA frames
//                   (magicless zstd, 1..32 blocks each, compressed with their
//                   reference blocks of the OLD image as a prefix)
//   [verity_offset) only with flag VERITY_TREE: the 1024-byte record of a
//                   dm-verity tree the device regenerates from the new
//                   image's data instead of reading it from the diff
//
// Operations, one per changed destination block:
//   ZERO           the block becomes zeroes
//   COPY src       the block becomes old block `src`
//   REPLACE        the block is block k of the REPLACE chunks, k = its rank
//                  among the REPLACE operations sorted by destination
//   DELTA          the block is the next block of the current delta frame
//                  (a frame holds 1..32 DELTA operations consecutive in the
//                  apply order and is decoded with the old blocks `refs`, in
//                  list order, as its zstd prefix; every member reads them)
//   XOR srcbyte    the block is the OLD image's bytes [srcbyte, srcbyte+bs)
//                  (any byte offset: content shifted inside a file) XOR
//                  block k of the XOR chunks, k = its rank among the XOR
//                  operations sorted by destination (payloads of sparse
//                  edits, mostly zeroes, compressed together)
//   SAVE src       not a final content: old block `src` is parked in block
//                  `dest` (whose own operation comes later); a COPY after the
//                  SAVE and before that operation reads the parked block.
// The stored order never lets an operation overwrite a block that a later
// operation reads (checked on load).
//
// Pure format code: bytes in, structs out (and back), no I/O. Loading a diff
// from a device, decoding payloads against the old blocks on a device and
// the checkpoint writes: format_v1_io.h; the offline apply: apply_v1.h.
#pragma once

#include <algorithm>
#include <array>
#include <optional>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"
#include "verity/format.h"

namespace udm::update {

constexpr size_t kV1HeaderSize = 512;
constexpr uint8_t kVersion1 = 1;
constexpr size_t kV1CkptOffset = 256;
constexpr uint32_t kV1CkptTag = 0x43504455;  // "UDPC"
// Header flag bit 0: the old image has its own size, `old_blocks` (u64 at
// byte 160, covered by the header CRC). Without it the old image is as
// large as the new one (image_blocks).
constexpr uint16_t kV1FlagOldBlocks = 1;
constexpr size_t kV1OldBlocksOffset = 160;
// Header flag bit 1: every REPLACE chunk carries a list of old reference
// blocks (after its length in the metadata), decoded as its zstd prefix.
// Without it (every diff written before) REPLACE chunks stand alone.
constexpr uint16_t kV1FlagChunkRefs = 2;
// Header flag bit 2: VERITY_TREE. The new image carries a dm-verity hash
// area (veritysetup's same-device layout: data, then superblock and tree at
// a hash offset); the diff holds no operation for its blocks but a record
// (verity_offset u64 at byte 168, verity_size u32 at 176, both covered by
// the header CRC) from which the device regenerates it, checked against the
// root the record names.
constexpr uint16_t kV1FlagVerity = 4;
// Header flag bit 3: CHUNK_NEW_REFS (only with CHUNK_REFS). A REPLACE
// chunk's reference may also name a block of the NEW image whose operation
// is a COPY, written as old_blocks + that block (so these sort after the old
// references). Its bytes are the COPY's old block, readable at every moment
// of the copy-back without decoding anything: the applied block, or before
// the COPY is applied the old block it reads (which stays intact until
// then, by the COPY's own ordering rule). Moved data stays a reference after
// its old place is rewritten.
constexpr uint16_t kV1FlagChunkNewRefs = 8;
constexpr uint16_t kV1KnownFlags = kV1FlagOldBlocks | kV1FlagChunkRefs | kV1FlagVerity | kV1FlagChunkNewRefs;
constexpr size_t kV1VerityFieldOffset = 168;
constexpr uint32_t kV1VerityRecordSize = 1024;

// ---- Limits of format v1 ---------------------------------------------------
// The ONE place for them: the loader (load_v1, v1_validate_header) refuses
// what lies outside, and the generator (make_diff_v1) checks its output
// against the same functions before it writes a byte, then loads the file it
// wrote. A limit changed here changes both.
constexpr uint32_t kV1MinBlockBits = 9;
constexpr uint32_t kV1MaxBlockBits = 20;
constexpr uint64_t kV1MaxChunkBytes = 64ull << 20;  // chunk_blocks x block size
constexpr uint64_t kV1MaxImageBlocks = (1ull << 40) - 1;  // old and new image
constexpr uint32_t kV1MaxRefs = 64;   // reference blocks of one DELTA frame
constexpr uint32_t kV1MaxGroup = 32;  // DELTA blocks per frame
// Reference blocks of one REPLACE chunk (flag CHUNK_REFS): at most 8 MiB of
// old data (2048 blocks of 4 KiB), strictly increasing. With the chunk's
// 64 MiB at most this stays inside the decoder's 2^27-byte window.
constexpr uint64_t kV1MaxChunkRefBytes = 8ull << 20;
constexpr uint32_t kV1ChunkWindowLog = 27;
constexpr uint64_t v1_max_chunk_refs(uint32_t block_bits) { return kV1MaxChunkRefBytes >> block_bits; }
constexpr uint32_t kV1MaxStashBlocks = 1;
// An operation that reads its own block (a DELTA reference or an XOR
// source) needs its new content parked durably before it overwrites the
// block: in the stash, or in one scratch block (a logged batch of that one
// operation, V1ScratchPlanner). A diff without a stash is valid only if
// every such operation i finds a scratch block for [i, i+1) among the
// kV1SelfScratchScan operations after it; the copy-back always looks at
// least that far.
constexpr uint64_t kV1SelfScratchScan = 4096;
// Operations in one logged copy-back batch (checkpoint state 2).
constexpr uint64_t kV1MaxBatchOps = 4096;
constexpr uint64_t kV1MaxOps = 1ull << 28;  // operations in one diff (in-memory indices are 32-bit)
constexpr uint64_t kV1MaxMetaRaw = 1ull << 32;
constexpr uint64_t kV1MaxMetaSize = 1ull << 40;
constexpr uint64_t kV1MaxDataSize = 1ull << 48;
constexpr uint64_t kV1VarintMax = 10;  // bytes of one LEB128 u64
// Operations a diff may hold for an image of `image_blocks` (new) blocks:
// one final operation per destination block, plus at most one SAVE per
// block, and only into a block whose final operation follows. So SAVEs
// never outnumber the final operations, and a cycle-heavy update where every
// block changes may carry up to 2 x image_blocks operations.
constexpr uint64_t v1_max_ops(uint64_t image_blocks) {
  return image_blocks > kV1MaxOps / 2 ? kV1MaxOps : 2 * image_blocks;
}
// Largest stored REPLACE/XOR chunk or DELTA frame for `raw` decoded bytes:
// zstd's compress bound (ZSTD_COMPRESSBOUND; static_assert in format_v1.cpp).
constexpr uint64_t v1_max_frame_bytes(uint64_t raw) {
  return raw + (raw >> 8) + (raw < (128u << 10) ? ((128u << 10) - raw) >> 11 : 0);
}
// Largest decompressed metadata for `op_count` operations: three counts;
// per operation at most one chunk length (REPLACE and XOR chunks hold at
// least one operation each), its type byte, its destination and either a
// source or a DELTA frame header (length, blocks, nref) with kV1MaxRefs
// references.
constexpr uint64_t kV1MetaPerOp = kV1VarintMax + 1 + kV1VarintMax + 3 * kV1VarintMax + kV1MaxRefs * kV1VarintMax;
// With chunk references (max_chunk_refs > 0) every operation may also carry
// one chunk's reference list (a count and that many varints).
constexpr uint64_t v1_max_meta_raw(uint64_t op_count, uint64_t max_chunk_refs = 0) {
  const uint64_t per_op = kV1MetaPerOp + (max_chunk_refs ? (1 + max_chunk_refs) * kV1VarintMax : 0);
  return op_count > kV1MaxOps ? kV1MaxMetaRaw
                              : (op_count < (kV1MaxMetaRaw - 3 * kV1VarintMax) / per_op
                                     ? 3 * kV1VarintMax + op_count * per_op
                                     : kV1MaxMetaRaw);
}

struct V1Header;
// The bound for one header (its op_count and flags).
uint64_t v1_header_max_meta_raw(const V1Header& h);

enum class OpType : uint8_t { Zero = 0, Copy = 1, Replace = 2, Delta = 3, Save = 4, Xor = 5 };

struct V1Header {
  uint8_t block_bits = 12;
  uint32_t chunk_blocks = 16;
  std::string compression = "zstd";
  uint64_t image_blocks = 0;  // NEW image (and update device) size in blocks
  uint64_t old_blocks = 0;    // OLD image size in blocks; 0 or image_blocks: the same size (flag clear)
  bool chunk_refs = false;    // flag CHUNK_REFS: REPLACE chunks list reference blocks
  bool chunk_new_refs = false;  // flag CHUNK_NEW_REFS: ... which may be new-image COPY blocks
  uint64_t op_count = 0;
  uint64_t meta_offset = kV1HeaderSize;
  uint64_t meta_size = 0;
  uint64_t meta_raw_size = 0;
  uint64_t data_offset = 0;
  uint64_t data_size = 0;
  std::array<uint8_t, 32> old_sha256{};
  std::array<uint8_t, 32> new_sha256{};
  // checkpoint (not covered by the header CRC; has its own)
  // 0 none, 1 started (old hash checked, writes may have happened),
  // 2 a logged batch: [done, batch_end)'s new blocks are durable in the
  // batch's scratch blocks (v1_batch_scratch) and may be partly applied.
  uint32_t ckpt_state = 0;
  uint64_t ckpt_done = 0;   // operations [0, done) are applied and flushed
  uint64_t ckpt_batch_end = 0;  // state 2 (byte 16 of the record)
  uint32_t ckpt_batch_crc = 0;  // state 2: CRC-32 of the logged blocks in op order (byte 24)
  uint64_t ckpt_stash_op = 0;   // done+1 if the stash holds operation `done`'s new block
  uint32_t ckpt_stash_crc = 0;  // CRC-32 of the stashed block
  uint32_t stash_blocks = 0;    // 1: a block-sized stash follows the header
  // flag VERITY_TREE: the record's place (data_offset + data_size) and size
  // (kV1VerityRecordSize); both 0 without the flag.
  uint64_t verity_offset = 0;
  uint32_t verity_size = 0;
};

// The record of flag VERITY_TREE (docs/update-format.md "Regenerated verity
// tree"). Little-endian:
//   0   magic[8]        "udmvrty\0"
//   8   version u32     1
//   12  flags u32       bit 0 = SUPERBLOCK: the hash area starts with
//                       veritysetup's 512-byte superblock
//   16  hash_offset u64 byte offset of the hash area in the new image (a
//                       multiple of the diff's block size)
//   24  region_blocks u64  diff blocks the device generates from hash_offset
//                       (the hash area up to the tree's end, rounded up to
//                       a diff block; bytes after the tree are zero)
//   32  root_size u32   digest bytes of the root
//   36..63              zero
//   64  superblock[512] the tree's parameters in veritysetup's superblock
//                       encoding (also when the image has none)
//   576 root[64]        the root digest, zero-padded
//   640..1019           zero
//   1020 crc u32        CRC-32 of bytes 0..1019
struct V1Verity {
  uint64_t hash_offset = 0;
  bool superblock = true;
  verity::Superblock sb;
  std::vector<uint8_t> root;
  uint64_t region_blocks = 0;
  // Derived on parse: the tree's Params (hash_start from hash_offset).
  verity::Params params;
};

struct V1Op {
  uint64_t dest = 0;
  OpType type = OpType::Zero;
  uint64_t src = 0;    // COPY, SAVE: old block; XOR: byte offset in the old image
  uint32_t index = 0;  // REPLACE, XOR: payload block number; DELTA: frame number
  uint32_t member = 0; // DELTA: block number inside the frame
};

struct V1Frame {
  uint64_t offset = 0;  // absolute file offset
  uint64_t length = 0;
  std::vector<uint64_t> refs;
  uint32_t blocks = 1;  // DELTA frames: decoded size in blocks
};

struct V1Index {
  V1Header h;
  uint64_t file_size = 0;
  std::vector<V1Op> ops;                       // apply order
  std::vector<std::pair<uint64_t, uint32_t>> by_dest;  // (dest, final op index) sorted by dest (no SAVE)
  std::vector<std::pair<uint64_t, uint32_t>> saves;    // (block, SAVE op index) sorted
  std::vector<V1Frame> chunks;                 // REPLACE chunks (refs: with flag CHUNK_REFS, increasing; old blocks,
                                               // then with CHUNK_NEW_REFS old_blocks + new-image COPY blocks)
  std::vector<V1Frame> xchunks;                // XOR payload chunks
  std::vector<V1Frame> frames;                 // DELTA frames
  // For op i: the highest op index that reads OLD block ops[i].dest (-1 if none).
  // Before op i is written, a durable checkpoint > last_reader[i] must exist.
  std::vector<int64_t> last_reader;
  uint64_t n_replace = 0;  // REPLACE operations (blocks in the chunks)
  uint64_t n_xor = 0;      // XOR operations (blocks in the XOR chunks)
  // Flag VERITY_TREE: the regenerated hash area, blocks [region_first, region_end).
  std::optional<V1Verity> verity;
  uint64_t region_first = 0, region_end = 0;
  bool generated(uint64_t block) const { return block >= region_first && block < region_end; }
  uint64_t region_blocks() const { return region_end - region_first; }

  uint32_t block_size() const { return 1u << h.block_bits; }
  uint64_t old_blocks() const { return h.old_blocks ? h.old_blocks : h.image_blocks; }
  uint64_t old_bytes() const { return old_blocks() << h.block_bits; }
  uint64_t new_bytes() const { return h.image_blocks << h.block_bits; }
  int64_t find(uint64_t dest) const;
  int64_t save_of(uint64_t block) const;
  uint64_t recorded_done() const { return h.ckpt_state >= 1 ? h.ckpt_done : 0; }
  // A chunk reference that names a block of the new image (flag CHUNK_NEW_REFS).
  bool new_ref(uint64_t ref) const { return ref >= old_blocks(); }
};

std::array<uint8_t, kV1HeaderSize> encode_v1_header(const V1Header& h);
Result<V1Header> decode_v1_header(std::span<const uint8_t> bytes);
// Every header field against the limits above (decode_v1_header runs it; the
// generator runs it on the header it is about to write). Errors name the field.
Status v1_validate_header(const V1Header& h);

// Metadata (before compression). Ops carry dest/type/src; chunk and frame
// offsets are derived from their lengths.
std::vector<uint8_t> encode_v1_meta(const std::vector<V1Op>& ops, const std::vector<uint64_t>& chunk_lengths,
                                    const std::vector<V1Frame>& frames, const std::vector<uint64_t>& xchunk_lengths,
                                    uint8_t block_bits, const std::vector<std::vector<uint64_t>>* chunk_refs = nullptr);
// out ^= pay (out.size() bytes).
void v1_xor_into(std::span<uint8_t> out, const uint8_t* pay);

// A `file_size`-byte diff's header (its first kV1HeaderSize bytes), checked,
// and its payload's place inside the file. The returned index has h and
// file_size; parse_v1_meta fills the rest.
Result<V1Index> parse_v1_header(std::span<const uint8_t> header, uint64_t file_size);
// The compressed metadata (h.meta_size bytes read at h.meta_offset):
// decompressed, every operation, count, source, frame and the order checked
// (docs/update-format.md "What a reader checks"). Errors name the field.
Status parse_v1_meta(V1Index& idx, std::span<const uint8_t> compressed_meta);
// The VERITY_TREE record (h.verity_size bytes at h.verity_offset), parsed
// and checked against the header: every field, the superblock as
// veritysetup checks it, the tree's geometry, the hash area inside the new
// image and after the data it covers. Sets idx.verity and the region; call
// before parse_v1_meta (which refuses operations inside the region).
Status parse_v1_verity(V1Index& idx, std::span<const uint8_t> record);
std::array<uint8_t, kV1VerityRecordSize> encode_v1_verity(const V1Verity& v);
// The regenerated region's bytes (region_blocks diff blocks): the
// superblock if any, zeroes up to the tree, the tree, zeroes to the end.
// `tree`: the tree blocks in on-disk order (verity::Tree::blocks).
Result<std::vector<uint8_t>> v1_verity_region(const V1Index& idx, std::span<const uint8_t> tree);
// The region's size in diff blocks for a hash area at hash_offset with these
// parameters (what the record must say).
Result<uint64_t> v1_verity_region_blocks(const verity::Params& p, uint64_t hash_offset, bool superblock,
                                         uint32_t block_size);

// A whole diff in memory (fuzzers, tests, the generator's check of its own
// header and metadata: the payload need not be there, only the size).
Result<V1Index> load_v1_bytes(std::span<const uint8_t> file);
Result<V1Index> load_v1_head(std::span<const uint8_t> header, std::span<const uint8_t> compressed_meta,
                             uint64_t file_size, std::span<const uint8_t> verity_record = {});

// Blocks in REPLACE chunk ci (or XOR chunk ci with xor_chunk).
uint64_t v1_chunk_blocks(const V1Index& idx, size_t ci, bool xor_chunk);
// Stored chunk ci (its length bytes) decoded into out (>= its blocks);
// `prefix`: a REPLACE chunk's reference blocks (chunks[ci].refs, in list
// order, back to back), empty if it has none.
Status decode_v1_chunk(const V1Index& idx, size_t ci, bool xor_chunk, std::span<const uint8_t> stored,
                       std::span<uint8_t> out, std::span<const uint8_t> prefix = {});
// Stored DELTA frame fi decoded with `prefix` (its reference blocks of the
// old image, in list order, back to back) into out (>= frames[fi].blocks blocks).
Status decode_v1_delta(const V1Index& idx, size_t fi, std::span<const uint8_t> prefix, std::span<const uint8_t> stored,
                       std::span<uint8_t> out);
// The old blocks an XOR operation reads: [first, last] (one or two).
inline std::pair<uint64_t, uint64_t> v1_xor_blocks(const V1Index& idx, const V1Op& op) {
  return {op.src >> idx.h.block_bits, (op.src + idx.block_size() - 1) >> idx.h.block_bits};
}
// Does the operation read the block it overwrites (a DELTA reference or an
// XOR source)? Then the copy-back parks its new content first (the stash or
// a scratch block).
inline bool v1_reads_own_block(const V1Index& idx, const V1Op& op) {
  if (op.type == OpType::Delta) {
    const auto& refs = idx.frames[op.index].refs;
    return std::find(refs.begin(), refs.end(), op.dest) != refs.end();
  }
  if (op.type == OpType::Xor) {
    auto [b0, b1] = v1_xor_blocks(idx, op);
    return b0 == op.dest || b1 == op.dest;
  }
  return false;
}

// The checkpoint record in a copy of the diff's first 512 bytes: state,
// operations done, and (with a stash block) the stash's operation and CRC.
void put_v1_checkpoint(std::span<uint8_t> first_sector, uint32_t state, uint64_t done,
                       std::span<const uint8_t> stash = {});
// The record of a logged batch (state 2): operations [done, end) have their
// new blocks, `crc` over them in op order, in the blocks v1_batch_scratch
// names.
void put_v1_batch_checkpoint(std::span<uint8_t> first_sector, uint64_t done, uint64_t end, uint32_t crc);
uint32_t v1_crc(std::span<const uint8_t> bytes);

// Scratch blocks for a logged batch of operations [d, e): blocks of the
// system device whose present content no operation from d on reads and
// that no operation before e writes (each is the destination of a later
// operation, which overwrites it in its turn), so parking the batch's new
// blocks there changes nothing any reader sees. Deterministic in (d, e) and
// the index, so recovery finds the same blocks. At most `want` blocks;
// fewer when the rest of the order has fewer.
class V1ScratchPlanner {
 public:
  explicit V1ScratchPlanner(const V1Index& idx);
  // last_read, if given: the highest operation (< d) that reads one of the
  // returned blocks, -1 if none. Until a record names d, a restart recomputes
  // from the recorded point, so those readers must be behind it.
  // max_scan: look at no more than that many operations from e (planning;
  // recovery scans to the end, and finds the same blocks as long as the plan
  // found `want`).
  std::vector<uint64_t> scratch(uint64_t d, uint64_t e, uint64_t want, int64_t* last_read = nullptr,
                                uint64_t max_scan = UINT64_MAX) const;
  // The first of `ops` (increasing) for which scratch(i, i + 1, 1, nullptr,
  // max_scan) finds nothing, -1 if none: the same answer in one pass (a
  // sliding minimum), where asking scratch() per operation costs up to
  // max_scan steps each.
  int64_t first_without_scratch(std::span<const uint64_t> ops, uint64_t max_scan) const;

 private:
  const V1Index& idx_;
  // Per operation: is it the first to write its block; the last operation
  // reading that block in any state (-1 if none).
  std::vector<uint8_t> first_write_;
  std::vector<int64_t> dest_last_read_;
};

// Does the header's checkpoint name a stash (the new block of operation done)?
bool v1_has_stash(const V1Index& idx);
// The stash block read back against the CRC its checkpoint recorded.
Status check_v1_stash(const V1Index& idx, std::span<const uint8_t> block);

std::string hex(std::span<const uint8_t> b);

}  // namespace udm::update
