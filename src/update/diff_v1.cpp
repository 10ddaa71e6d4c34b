// update-diff, format v1: moved blocks (hash index of old), similar blocks
// (XOR at an offset, zstd with similar old blocks as a prefix), a
// conflict-free order. make_diff_v1 runs the phases of diff_v1_internal.h,
// each in its own file, over the two images in memory.
#include <fmt/format.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_c_format (magicless delta frames)
#include <zstd.h>

#include <chrono>

#include "io/mapped_file.h"
#include "update/diff_output.h"
#include "update/diff_v1_internal.h"
#include "util/progress.h"

namespace udm::update {

namespace v1gen {

namespace {
struct CCtx {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ~CCtx() { ZSTD_freeCCtx(c); }
};
}  // namespace

std::vector<uint8_t> zcompress(const uint8_t* src, size_t n, const uint8_t* prefix, size_t pn, int level, bool size_flag,
                               bool magicless, int window_log) {
  thread_local CCtx cc;
  ZSTD_CCtx_reset(cc.c, ZSTD_reset_session_and_parameters);
  ZSTD_CCtx_setParameter(cc.c, ZSTD_c_compressionLevel, level);
  if (magicless) ZSTD_CCtx_setParameter(cc.c, ZSTD_c_format, ZSTD_f_zstd1_magicless);
  ZSTD_CCtx_setParameter(cc.c, ZSTD_c_checksumFlag, 0);
  ZSTD_CCtx_setParameter(cc.c, ZSTD_c_contentSizeFlag, size_flag ? 1 : 0);
  if (window_log) ZSTD_CCtx_setParameter(cc.c, ZSTD_c_windowLog, window_log);
  if (pn) ZSTD_CCtx_refPrefix(cc.c, prefix, pn);
  std::vector<uint8_t> out(ZSTD_compressBound(n));
  size_t r = ZSTD_compress2(cc.c, out.data(), out.size(), src, n);
  if (ZSTD_isError(r)) return {};
  out.resize(r);
  return out;
}

Gear::Gear() {
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (auto& v : t) {
    x += 0x9e3779b97f4a7c15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    v = z ^ (z >> 31);
  }
}
const Gear kGear;

namespace {

// The format's limits (format_v1.h), checked up front where the options decide them.
Status check_options(const DiffV1Options& o) {
  if (o.block_size < (1u << kV1MinBlockBits) || o.block_size > (1u << kV1MaxBlockBits) ||
      (o.block_size & (o.block_size - 1)))
    return Invalid(fmt::format("--block-size {}: must be a power of two in {}..{}", o.block_size, 1u << kV1MinBlockBits,
                               1u << kV1MaxBlockBits));
  if (o.chunk_blocks == 0 || uint64_t{o.chunk_blocks} * o.block_size > kV1MaxChunkBytes)
    return Invalid(fmt::format("--chunk-blocks {}: must be 1.. with chunks of at most {} MiB", o.chunk_blocks,
                               kV1MaxChunkBytes >> 20));
  return Status::Ok();
}

// Flag VERITY_TREE: NEW's hash area at o.verity_hash_offset (a veritysetup
// superblock and its tree) is what the device would regenerate from NEW's
// data, byte for byte, or the diff is refused; its blocks become in's
// generated range (no operations). Returns the record.
Result<std::vector<uint8_t>> plan_verity(std::span<const uint8_t> new_img, const std::string& new_name,
                                         const DiffV1Options& o, Input& in) {
  const uint64_t off = o.verity_hash_offset, bs = in.bs;
  auto where = [&](const std::string& what) {
    return fmt::format("--verity-regenerate {}: {} {}", off, new_name, what);
  };
  if (off % bs || off >= new_img.size())
    return Invalid(where(fmt::format("of {} bytes: the hash offset must be a multiple of the block size {} inside the image",
                                     new_img.size(), bs)));
  auto sb = verity::decode_superblock(new_img.subspan(off, std::min<uint64_t>(verity::kSuperblockSize, new_img.size() - off)));
  if (!sb.ok()) return Invalid(where("has no usable verity superblock there (" + sb.status().message() + ")"));
  V1Verity v;
  v.hash_offset = off;
  v.superblock = true;
  v.sb = *sb;
  auto hs = verity::hash_start_for_offset(off, sb->hash_block_size, true);
  if (!hs.ok()) return Invalid(where(hs.status().message()));
  v.params = verity::params_of(*sb, *hs);
  const verity::Params& p = v.params;
  if (p.data_blocks > off / p.data_block_size)
    return Invalid(where(fmt::format("describes {} data blocks of {} bytes, which overlap the hash area", p.data_blocks,
                                     p.data_block_size)));
  auto region_blocks = v1_verity_region_blocks(p, off, true, static_cast<uint32_t>(bs));
  if (!region_blocks.ok()) return Invalid(where(region_blocks.status().message()));
  v.region_blocks = *region_blocks;
  if (off / bs + v.region_blocks > in.blocks)
    return Invalid(where("is too short for the tree its superblock describes"));
  auto tree = verity::build_tree_mem(p, new_img.first(p.data_blocks * p.data_block_size), in.threads);
  if (!tree.ok()) return Invalid(where(tree.status().message()));
  v.root = tree->root;
  if (!o.verity_root.empty() && o.verity_root != v.root)
    return Invalid(where(fmt::format("data gives root hash {}, not the expected {}", hex(v.root), hex(o.verity_root))));
  // The record through the loader's own checks, then the region it implies
  // against NEW's bytes.
  V1Index probe;
  probe.h.block_bits = static_cast<uint8_t>(__builtin_ctzll(bs));
  probe.h.image_blocks = in.blocks;
  probe.h.verity_size = kV1VerityRecordSize;
  auto rec = encode_v1_verity(v);
  if (Status s = parse_v1_verity(probe, rec); !s.ok()) return Invalid(where(s.message()));
  UDM_ASSIGN_OR_RETURN(auto region, v1_verity_region(probe, tree->blocks));
  const auto have = new_img.subspan(off, region.size());
  if (auto m = std::mismatch(region.begin(), region.end(), have.begin()); m.first != region.end())
    return Invalid(where(fmt::format(
        "differs at byte {} from the hash area udm regenerates from the data (superblock, tree, zeroes to the block's "
        "end): not a veritysetup tree of this data, or other bytes share its last block",
        off + static_cast<uint64_t>(m.first - region.begin()))));
  in.gen_first = off / bs;
  in.gen_end = in.gen_first + v.region_blocks;
  return std::vector<uint8_t>(rec.begin(), rec.end());
}

// Every phase but the writing: the diff's bytes in memory, checked by the
// loader. `old_name`/`new_name` name the images in messages.
Result<Encoded> build(std::span<const uint8_t> old_img, std::span<const uint8_t> new_img, const std::string& old_name,
                      const std::string& new_name, const DiffV1Options& o, DiffV1Stats& st) {
  UDM_TRY(check_options(o));
  const uint64_t bs = o.block_size;
  // OLD and NEW may differ in size: destinations are the new image's blocks
  // [0, blocks), sources only the old image's [0, old_blocks) (the system
  // device past the old image's end holds anything).
  const uint64_t size = new_img.size(), old_size = old_img.size();
  if (size == 0 || size % bs)
    return Invalid(fmt::format("new image {}: size {} is not a positive multiple of the block size {}", new_name, size, bs));
  if (old_size == 0 || old_size % bs)
    return Invalid(fmt::format("old image {}: size {} is not a positive multiple of the block size {}", old_name, old_size, bs));
  const uint64_t blocks = size / bs, old_blocks = old_size / bs;
  const uint64_t span = std::max(blocks, old_blocks);
  // This generator indexes blocks with 32-bit integers; the format allows kV1MaxImageBlocks.
  if (span >= (1ull << 31) || span > kV1MaxImageBlocks)
    return Invalid(fmt::format("image of {} blocks: update-diff handles fewer than 2^31 blocks", span));
  if (!o.progress) Progress::force_enable(false);
  Input in{o, old_img.data(), new_img.data(), bs, size, old_size, blocks, old_blocks, span,
           std::max(1u, o.threads), o.level ? o.level : 19, std::vector<uint8_t>(bs, 0)};
  std::vector<uint8_t> verity_record;
  if (o.verity_hash_offset != UINT64_MAX) {
    UDM_ASSIGN_OR_RETURN(verity_record, plan_verity(new_img, new_name, o, in));
    st.verity_blocks = in.gen_end - in.gen_first;
  }
  st.image_bytes = size;
  st.blocks = blocks;
  st.old_blocks = old_blocks;

  OldIndex ix;
  Plan plan;
  index_old(in, ix);
  match_exact(in, ix, plan, st);
  choose_ops(in, ix, plan);
  if (o.chunk_refs) {
    // REPLACE first keeps their chunks' references intact, but leaves no
    // REPLACE block to park a SAVE in: if that cost conversions to REPLACE
    // (cycles where no zero block was free), the order with REPLACE held
    // back for parking is taken when it converts fewer.
    Plan held = plan;
    DiffV1Stats hst = st;
    UDM_TRY(order_ops(in, ix, plan, st, true));
    if (st.converted > 0) {
      UDM_TRY(order_ops(in, ix, held, hst, false));
      if (hst.converted < st.converted) plan = std::move(held), st = hst;
    }
  } else {
    UDM_TRY(order_ops(in, ix, plan, st, false));
  }
  UDM_ASSIGN_OR_RETURN(Encoded e, encode(in, ix, plan, st));
  if (!verity_record.empty()) {
    e.h.verity_offset = e.h.data_offset + e.h.data_size;
    e.h.verity_size = kV1VerityRecordSize;
    e.header = encode_v1_header(e.h);
    e.verity = std::move(verity_record);
  }
  UDM_TRY(check_loads(e));
  return e;
}

}  // namespace
}  // namespace v1gen

Result<DiffV1Stats> make_diff_v1(std::span<const uint8_t> old_img, std::span<const uint8_t> new_img, GrowFile& out,
                                 const DiffV1Options& o) {
  auto t0 = std::chrono::steady_clock::now();
  DiffV1Stats st;
  UDM_ASSIGN_OR_RETURN(v1gen::Encoded e, v1gen::build(old_img, new_img, "OLD", "NEW", o, st));
  UDM_ASSIGN_OR_RETURN(st.diff_bytes, v1gen::write_encoded(e, out));
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

Result<DiffV1Stats> make_diff_v1(const std::string& old_path, const std::string& new_path, const std::string& out_path,
                                 const DiffV1Options& o) {
  auto t0 = std::chrono::steady_clock::now();
  UDM_TRY(v1gen::check_options(o));
  // The generator reads both images all over (hashes, byte compares at any
  // offset, references): they are mapped, and the page cache holds them.
  // (io/mapped_file.h: holes of sparse images are mapped as zero pages.)
  MappedFile oldm, newm;
  UDM_TRY(oldm.open(old_path));
  UDM_TRY(newm.open(new_path));
  DiffV1Stats st;
  UDM_ASSIGN_OR_RETURN(v1gen::Encoded e, v1gen::build(oldm.bytes(), newm.bytes(), old_path, new_path, o, st));
  // Only now, with a diff the loader accepts, is the output touched.
  UDM_ASSIGN_OR_RETURN(GrowFilePtr out, open_diff_output(out_path));
  UDM_ASSIGN_OR_RETURN(st.diff_bytes, v1gen::write_encoded(e, *out));
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace udm::update
