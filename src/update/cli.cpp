// update-diff, update-info, update-apply.
#include <fmt/format.h>

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <map>

#include "cli/cli_common.h"
#include "io/file_device.h"
#include "io/resolver.h"
#include "update/apply_v1.h"
#include "update/diff_formats.h"
#include "update/differ.h"
#include "update/format_io.h"
#include "update/format_v0_io.h"
#include "update/format_v1_io.h"
#include "device/target_args.h"
#include "util/progress.h"

namespace udm {
using namespace update;

namespace {

void cmd_info_v1(BlockDevice& f, const std::string& path) {
  auto idx = load_v1(f);
  if (!idx.ok()) return cli::fail(idx.status().context(path));
  const auto& h = idx->h;
  uint64_t n[6] = {0, 0, 0, 0, 0, 0}, refs = 0, chunk_bytes = 0, frame_bytes = 0, xchunk_bytes = 0;
  for (const auto& op : idx->ops) n[static_cast<int>(op.type)]++;
  for (const auto& f : idx->frames) refs += f.refs.size(), frame_bytes += f.length;
  for (const auto& c : idx->chunks) chunk_bytes += c.length;
  for (const auto& c : idx->xchunks) xchunk_bytes += c.length;
  std::cout << fmt::format(
      "format:            update v1\n"
      "block size:        {} (block_bits {})\n"
      "compression:       {}\n"
      "new image:         {} blocks ({} bytes)\n"
      "old image:         {} blocks ({} bytes){}\n"
      "old image sha256:  {}\n"
      "new image sha256:  {}\n"
      "operations:        {} (ZERO {}, COPY {}, REPLACE {}, XOR {}, DELTA {} with {} reference blocks, SAVE {})\n"
      "REPLACE chunks:    {} of up to {} blocks, {} bytes\n"
      "XOR chunks:        {}, {} bytes\n"
      "DELTA frames:      {} holding {} blocks, {} bytes\n"
      "metadata:          {} bytes ({} raw)\n"
      "stash:             {}\n"
      "diff size:         {} bytes\n"
      "copy-back record:  {} of {} operations{}\n"
      "verity tree:       {}\n",
      idx->block_size(), h.block_bits, h.compression, h.image_blocks, idx->new_bytes(), idx->old_blocks(), idx->old_bytes(),
      idx->old_blocks() == h.image_blocks ? "" : " (different size)", hex(h.old_sha256),
      hex(h.new_sha256), idx->ops.size(), n[0], n[1], n[2], n[5], n[3], refs, n[4], idx->chunks.size(), h.chunk_blocks,
      chunk_bytes, idx->xchunks.size(), xchunk_bytes, idx->frames.size(), n[3], frame_bytes, h.meta_size, h.meta_raw_size, h.stash_blocks ? "1 block" : "none", idx->file_size,
      idx->recorded_done(), idx->ops.size(),
      h.ckpt_state == 2 ? fmt::format(" (started; a logged batch up to operation {} to finish)", h.ckpt_batch_end)
      : h.ckpt_state   ? std::string(" (started)")
                       : std::string(),
      idx->verity ? fmt::format("regenerated on the device: {}superblock at byte {}, {} blocks (hash format {}, {}, "
                                "data blocks {} of {} bytes, hash blocks of {}, salt {}), root {}",
                                idx->verity->superblock ? "" : "no ", idx->verity->hash_offset, idx->region_blocks(),
                                idx->verity->sb.hash_type, idx->verity->sb.algorithm, idx->verity->sb.data_blocks,
                                idx->verity->sb.data_block_size, idx->verity->sb.hash_block_size,
                                idx->verity->sb.salt.empty() ? std::string("-") : hex(idx->verity->sb.salt),
                                hex(idx->verity->root))
                  : std::string("none (any hash area is carried as data)"));
  // Where the bytes go: payload per operation kind, and what the operations
  // read of the old image, by kind of reference.
  uint64_t cref_blocks = 0, cref_chunks = 0, cref_bytes = 0, cref_moved = 0;
  for (const auto& c : idx->chunks) {
    if (!c.refs.empty()) cref_blocks += c.refs.size(), cref_chunks++, cref_bytes += c.length;
    for (uint64_t r : c.refs) cref_moved += idx->new_ref(r);
  }
  const double total = static_cast<double>(idx->file_size);
  auto row = [&](const char* what, uint64_t bytes, uint64_t blocks) {
    return fmt::format("  {:<22} {:>12} {:>6.1f}% {:>9} {:>10}\n", what, bytes, 100.0 * bytes / total, blocks,
                       blocks ? fmt::format("{:.1f}", static_cast<double>(bytes) / blocks) : std::string("-"));
  };
  std::string out = fmt::format("where the bytes go:  {:>12} {:>7} {:>9} {:>10}\n", "bytes", "share", "blocks", "per block");
  out += row("header", kV1HeaderSize, 0);
  out += row("stash", h.stash_blocks ? idx->block_size() : 0, 0);
  out += row("metadata (all ops)", h.meta_size, idx->ops.size());
  out += row("REPLACE, alone", chunk_bytes - cref_bytes, 0);
  out += row("REPLACE, old refs", cref_bytes, 0);
  out += row("REPLACE (all)", chunk_bytes, n[2]);
  out += row("XOR", xchunk_bytes, n[5]);
  out += row("DELTA", frame_bytes, n[3]);
  out += row("ZERO, COPY, SAVE", 0, n[0] + n[1] + n[4]);
  out += fmt::format("  REPLACE chunks with old references: {} of {}, {} reference blocks ({} of them moved blocks "
                     "read at their new places)\n",
                     cref_chunks, idx->chunks.size(), cref_blocks, cref_moved);
  // Reference kinds: the block's own place, an old block the update never
  // overwrites, one overwritten later in the copy-back, a parked block, an
  // old block read where a COPY moved it (flag CHUNK_NEW_REFS).
  enum { kOwn, kKept, kLater, kParked, kMoved };
  uint64_t rk[4][5] = {};  // [COPY/SAVE, XOR, DELTA, REPLACE chunk][kind]
  auto kind = [&](uint64_t dest, uint64_t b, bool copy) {
    if (dest == UINT64_MAX && idx->new_ref(b)) return kMoved;
    if (b == dest) return kOwn;
    if (copy && idx->save_of(b) >= 0) return kParked;
    return idx->find(b) < 0 ? kKept : kLater;
  };
  for (const auto& op : idx->ops) {
    if (op.type == OpType::Copy || op.type == OpType::Save) rk[0][kind(op.dest, op.src, op.type == OpType::Copy)]++;
    if (op.type == OpType::Xor) rk[1][kind(op.dest, v1_xor_blocks(*idx, op).first, false)]++;
    if (op.type == OpType::Delta && op.member == 0)
      for (uint64_t r : idx->frames[op.index].refs) rk[2][kind(op.dest, r, false)]++;
  }
  for (const auto& c : idx->chunks)
    for (uint64_t r : c.refs) rk[3][kind(UINT64_MAX, r, false)]++;
  out += fmt::format("references:          {:>10} {:>10} {:>10} {:>10} {:>10}\n", "own place", "unchanged", "rewritten",
                     "parked", "moved");
  const char* names[4] = {"COPY/SAVE sources", "XOR sources", "DELTA frame refs", "REPLACE chunk refs"};
  for (int k = 0; k < 4; k++)
    out += fmt::format("  {:<18} {:>10} {:>10} {:>10} {:>10} {:>10}\n", names[k], rk[k][kOwn], rk[k][kKept],
                       rk[k][kLater], rk[k][kParked], rk[k][kMoved]);
  std::cout << out;
}

void cmd_apply_v1(BlockDevice& diff, const std::string& old_path, const std::string& diff_path) {
  auto idx = load_v1(diff);
  if (!idx.ok()) return cli::fail(idx.status().context(diff_path));
  auto sys = FileDevice::open(old_path);
  if (!sys.ok()) return cli::fail(sys.status());
  const uint64_t img = idx->new_bytes(), old_img = idx->old_bytes();
  if ((*sys)->size() < old_img)
    return cli::fail(fmt::format("{} is {} bytes, smaller than the diff's old image ({} bytes)", old_path, (*sys)->size(),
                                 old_img));
  // A regular file holding exactly the old image becomes exactly the new one
  // (grown or shrunk); a block device or a larger file keeps its size and
  // must hold the new image.
  const bool resize = !(*sys)->is_block_device() && (*sys)->size() == old_img && img != old_img;
  if (!resize && (*sys)->size() < img)
    return cli::fail(fmt::format("{} is {} bytes, smaller than the diff's new image ({} bytes)", old_path, (*sys)->size(),
                                 img));
  // The diff's checkpoint (if a target used it) is about another device; the
  // old-image hash below decides whether OLD can take this diff.
  auto hash = sha256_device(**sys, old_img);
  if (!hash.ok()) return cli::fail(hash.status());
  if (*hash != idx->h.old_sha256)
    return cli::fail(fmt::format("{}: sha256 {} is not the diff's old image {}; nothing written", old_path, hex(*hash),
                                 hex(idx->h.old_sha256)));
  // Offline and not crash-safe (the target is): compute every block in
  // order, then write in order. Validation of every payload happens first.
  auto out = v1_compute_all(diff, **sys, *idx);
  if (!out.ok()) return cli::fail(out.status().context(diff_path + ": nothing written"));
  if (resize) {
    if (::truncate(old_path.c_str(), static_cast<off_t>(img)) != 0)
      return cli::fail(ErrnoStatus(fmt::format("resize {} to the new image's {} bytes", old_path, img)));
    sys = FileDevice::open(old_path);
    if (!sys.ok()) return cli::fail(sys.status());
  }
  Progress prog("update-apply", idx->ops.size(), false);
  if (Status s = v1_write_all(**sys, *idx, *out, [&](uint64_t n) { prog.add(n); }); !s.ok()) return cli::fail(s);
  prog.finish();
  auto nh = sha256_device(**sys, img);
  if (!nh.ok()) return cli::fail(nh.status());
  if (*nh != idx->h.new_sha256) return cli::fail(fmt::format("{}: result sha256 {} is not the new image's", old_path, hex(*nh)));
  std::cout << fmt::format("applied {} operations to {} (sha256 of the result matches the diff)\n", idx->ops.size(), old_path);
}

void cmd_info(const std::string& path) {
  // A URL a feature registered (http://, oci://) through the resolver; anything else is a file path.
  auto f = spec_kind(path) == SpecKind::kUri ? Resolver().open(path, false) : open_path(path, false);
  if (!f.ok()) return cli::fail(f.status());
  auto ver = diff_version(**f);
  if (!ver.ok()) return cli::fail(ver.status().context(path));
  if (*ver == 1) return cmd_info_v1(**f, path);
  auto idx = load_diff(**f);
  if (!idx.ok()) return cli::fail(idx.status().context(path));
  const auto& sb = idx->sb;
  uint64_t changed_bytes = idx->entries.size() * uint64_t{idx->block_size()};
  uint64_t data_bytes = 0;
  for (const auto& c : idx->chunks) data_bytes += c.length;
  std::cout << fmt::format(
      "format:            update v{}\n"
      "block size:        {} (block_bits {})\n"
      "chunk blocks:      {} ({} bytes per chunk)\n"
      "compression:       {}\n"
      "changed blocks:    {} ({} bytes)\n"
      "chunks:            {}\n"
      "chunk data:        {} bytes (ratio {:.2f}:1)\n"
      "directory:         {} entries at {}, {} bytes compressed\n"
      "diff size:         {} bytes\n"
      "copy-back record:  {} of {} entries\n",
      sb.version, idx->block_size(), sb.block_bits, sb.chunk_blocks, idx->chunk_bytes(), sb.compression,
      idx->entries.size(), changed_bytes, idx->chunks.size(), data_bytes,
      data_bytes ? double(changed_bytes) / double(data_bytes) : 0.0, sb.dir_n, sb.dir_offset,
      sb.dir_compressed_size, idx->file_size, idx->recorded_progress(), idx->entries.size());
}

void cmd_apply(const std::string& old_path, const std::string& diff_path, const std::string& verify) {
  auto diff = FileDevice::open(diff_path, {.writable = false});
  if (!diff.ok()) return cli::fail(diff.status());
  auto ver = diff_version(**diff);
  if (!ver.ok()) return cli::fail(ver.status().context(diff_path));
  if (*ver == 1) {
    cmd_apply_v1(**diff, old_path, diff_path);
    if (verify.empty()) return;
    auto sys = FileDevice::open(old_path, {.writable = false});
    auto nf = FileDevice::open(verify, {.writable = false});
    if (!sys.ok() || !nf.ok()) return cli::fail("verify: cannot open the images");
    std::vector<uint8_t> a(1 << 20), b(1 << 20);
    for (uint64_t off = 0; off < (*nf)->size(); off += a.size()) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(a.size(), (*nf)->size() - off));
      if (!(*sys)->read(off, std::span<uint8_t>(a.data(), n)).ok() || !(*nf)->read(off, std::span<uint8_t>(b.data(), n)).ok() ||
          std::memcmp(a.data(), b.data(), n) != 0)
        return cli::fail(fmt::format("verify: {} differs from {} near byte {}", old_path, verify, off));
    }
    std::cout << fmt::format("verified: {} equals {}\n", old_path, verify);
    return;
  }
  auto idx = load_diff(**diff);
  if (!idx.ok()) return cli::fail(idx.status().context(diff_path));
  auto sys = FileDevice::open(old_path);
  if (!sys.ok()) return cli::fail(sys.status());
  const uint64_t bs = idx->block_size();
  if (!idx->entries.empty() && (idx->entries.back().dest + 1) * bs > (*sys)->size())
    return cli::fail(fmt::format("{} is {} bytes but the diff writes block {} of {} bytes", old_path,
                                 (*sys)->size(), idx->entries.back().dest, bs));
  // Validate every chunk before the first write: a corrupt diff changes nothing.
  std::vector<uint8_t> chunk(idx->chunk_bytes()), scratch;
  for (size_t ci = 0; ci < idx->chunks.size(); ci++) {
    Status s = read_chunk(**diff, *idx, ci, scratch, chunk);
    if (!s.ok()) return cli::fail(s.context(diff_path + ": nothing written"));
  }
  Progress prog("update-apply", idx->entries.size(), false);
  for (size_t ci = 0; ci < idx->chunks.size(); ci++) {
    const Chunk& c = idx->chunks[ci];
    Status s = read_chunk(**diff, *idx, ci, scratch, chunk);
    for (uint32_t i = 0; i < c.n_entries && s.ok(); i++) {
      const Entry& e = idx->entries[c.first_entry + i];
      s = (*sys)->write(e.dest * bs, std::span<const uint8_t>(chunk.data() + uint64_t{e.offset} * bs, bs));
    }
    if (!s.ok()) return cli::fail(s);
    prog.add(c.n_entries);
  }
  if (Status s = (*sys)->flush(); !s.ok()) return cli::fail(s);
  prog.finish();
  std::cout << fmt::format("applied {} blocks from {} chunks to {}\n", idx->entries.size(), idx->chunks.size(), old_path);
  if (!verify.empty()) {
    auto nf = FileDevice::open(verify, {.writable = false});
    if (!nf.ok()) return cli::fail(nf.status());
    if ((*nf)->size() != (*sys)->size())
      return cli::fail(fmt::format("verify: {} is {} bytes, {} is {} bytes", old_path, (*sys)->size(), verify, (*nf)->size()));
    std::vector<uint8_t> a(1 << 20), b(1 << 20);
    for (uint64_t off = 0; off < (*nf)->size(); off += a.size()) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(a.size(), (*nf)->size() - off));
      if (!(*sys)->read(off, std::span<uint8_t>(a.data(), n)).ok() ||
          !(*nf)->read(off, std::span<uint8_t>(b.data(), n)).ok())
        return cli::fail("verify: read error");
      if (std::memcmp(a.data(), b.data(), n) != 0)
        return cli::fail(fmt::format("verify: {} differs from {} near byte {}", old_path, verify, off));
    }
    std::cout << fmt::format("verified: {} equals {}\n", old_path, verify);
  }
}

}  // namespace

void register_feature_update_cli(CLI::App& app) {
  {
    auto* sub = app.add_subcommand("update-diff", "make a diff that turns OLD into NEW (format v1; --format v0 for the seed's)");
    auto o = std::make_shared<DiffOptions>();
    auto fmt_name = std::make_shared<std::string>("v1");
    auto no_delta = std::make_shared<bool>(false);
    auto group = std::make_shared<uint32_t>(DiffV1Options{}.delta_group);
    auto cow_unit = std::make_shared<std::string>();
    auto verity_at = std::make_shared<std::string>();
    auto verity_root = std::make_shared<std::string>();
    sub->add_option("--format", *fmt_name,
                    "v1 (default: moves, similar blocks, ordered in-place copy-back), v0 (seed), or android-cow-v2|android-cow-v3 "
                    "(Android's Virtual A/B COW, docs/android-cow.md)");
    sub->add_option("--cow-unit", *cow_unit, "android-cow-v3: compression unit, 4k..256k (default 4k)");
    sub->add_flag("--no-delta", *no_delta, "v1: no DELTA (similar block) operations");
    sub->add_option("--delta-group", *group, "v1: DELTA blocks that may share one frame (1..32, default 32)")
        ->check(CLI::Range(1u, kV1MaxGroup));
    sub->add_option("--verity-regenerate", *verity_at,
                    "v1: NEW carries a dm-verity superblock and tree at this byte offset (veritysetup --hash-offset); "
                    "the diff leaves them out and the device regenerates them from the new data, checked against the root");
    sub->add_option("--verity-root", *verity_root, "v1, with --verity-regenerate: the root hash (hex) the tree must have");
    auto paths = std::make_shared<std::array<std::string, 3>>();
    sub->add_option("old", (*paths)[0], "old image")->required()->check(CLI::ExistingFile);
    sub->add_option("new", (*paths)[1], "new image")->required()->check(CLI::ExistingFile);
    sub->add_option("-o,--output", (*paths)[2], "diff file to write")->required();
    sub->add_option("-a,--algorithm", o->algorithm, "none|zstd|lz4|deflate (default zstd); android-cow: none|gz|brotli|lz4|zstd");
    sub->add_option("-l,--level", o->level, "compression level (0 = default)");
    sub->add_option("--block-size", o->block_size, "block size in bytes (default 4096)");
    auto* chunk_opt = sub->add_option("--chunk-blocks", o->chunk_blocks, "blocks compressed together (default v0 16, v1 256)");
    sub->add_option("--threads", o->threads, "compression threads (default 2)");
    auto* a_opt = sub->get_option("--algorithm");
    sub->callback([o, paths, fmt_name, no_delta, group, chunk_opt, cow_unit, a_opt, verity_at, verity_root] {
      if ((!verity_at->empty() || !verity_root->empty()) && *fmt_name != "v1")
        return cli::fail("--verity-regenerate and --verity-root are format v1 options");
      if (!verity_root->empty() && verity_at->empty()) return cli::fail("--verity-root needs --verity-regenerate");
      if (auto ext = external_diff_formats().find(*fmt_name); ext != external_diff_formats().end()) {
        ExternalDiffArgs ea{(*paths)[0], (*paths)[1], (*paths)[2], a_opt->count() ? o->algorithm : "", *cow_unit};
        if (Status s = ext->second(ea); !s.ok()) return cli::fail(s);
        return;
      }
      if (!cow_unit->empty()) return cli::fail("--cow-unit is an android-cow-v3 option");
      if (*fmt_name == "v1") {
        if (o->algorithm != "zstd") return cli::fail("--format v1 uses zstd; -a " + o->algorithm + " needs --format v0");
        DiffV1Options v;
        v.level = o->level;
        v.block_size = o->block_size;
        if (chunk_opt->count()) v.chunk_blocks = o->chunk_blocks;
        v.threads = o->threads;
        v.delta = !*no_delta;
        v.delta_group = *group;
        if (!verity_at->empty()) {
          auto off = parse_size(*verity_at, "--verity-regenerate");
          if (!off.ok()) return cli::fail(off.status());
          v.verity_hash_offset = *off;
        }
        if (!verity_root->empty()) {
          auto root = verity::from_hex(*verity_root, "--verity-root");
          if (!root.ok()) return cli::fail(root.status());
          v.verity_root = *root;
        }
        auto st = make_diff_v1((*paths)[0], (*paths)[1], (*paths)[2], v);
        if (!st.ok()) return cli::fail(st.status());
        std::cout << fmt::format(
            "{}: v1, {} of {} blocks changed: ZERO {}, COPY {}, REPLACE {} ({} chunks), XOR {} ({} chunks), DELTA {} ({} frames, {} read "
            "their own block{}); {} COPY cycles broken by SAVE ({} parked in free zero blocks), {} turned into REPLACE and {} DELTA trimmed; {} ordering barriers; metadata {} bytes; diff {} bytes ({:.2f}% of the image), {:.2f} s{}\n",
            (*paths)[2], st->changed_blocks, st->blocks, st->zero, st->copy, st->replace, st->chunks, st->xor_ops, st->xchunks, st->delta,
            st->delta_frames, st->stash_ops,
            st->stash_ops ? (st->stash_blocks ? ", a stash block for those with no scratch block" : ", each parked in a scratch block: no stash") : "",
            st->saves, st->zero_parks, st->converted, st->trimmed, st->barriers, st->meta_bytes, st->diff_bytes,
            st->image_bytes ? 100.0 * double(st->diff_bytes) / double(st->image_bytes) : 0.0, st->seconds,
            st->verity_blocks ? fmt::format("; verity area of {} blocks left to the device", st->verity_blocks) : std::string());
        return;
      }
      if (*fmt_name != "v0") return cli::fail("--format " + *fmt_name + ": want v0 or v1");
      auto st = make_diff((*paths)[0], (*paths)[1], (*paths)[2], *o);
      if (!st.ok()) return cli::fail(st.status());
      std::cout << fmt::format(
          "{}: {} of {} blocks changed ({:.1f}%), {} chunks, diff {} bytes ({:.2f}% of the image), {:.2f} s\n",
          (*paths)[2], st->changed_blocks, st->blocks,
          st->blocks ? 100.0 * double(st->changed_blocks) / double(st->blocks) : 0.0, st->chunks, st->diff_bytes,
          st->image_bytes ? 100.0 * double(st->diff_bytes) / double(st->image_bytes) : 0.0, st->seconds);
    });
  }
  {
    auto* sub = app.add_subcommand("update-info", "print a diff's header, counts and ratios");
    auto path = std::make_shared<std::string>();
    sub->add_option("diff", *path, "diff file")->required();
    sub->callback([path] { cmd_info(*path); });
  }
  {
    auto* sub = app.add_subcommand("update-apply", "apply a diff to OLD offline (in place)");
    auto a = std::make_shared<std::array<std::string, 3>>();
    sub->add_option("old", (*a)[0], "image to update in place")->required();
    sub->add_option("diff", (*a)[1], "diff file")->required();
    sub->add_option("--verify", (*a)[2], "compare the result with this image");
    sub->callback([a] { cmd_apply((*a)[0], (*a)[1], (*a)[2]); });
  }
}

}  // namespace udm
