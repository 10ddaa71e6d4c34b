// update-diff, update-info, update-apply.
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <iostream>

#include "cli/cli_common.h"
#include "io/file_device.h"
#include "update/differ.h"
#include "update/format.h"
#include "util/progress.h"

namespace udm {
using namespace update;

namespace {

void cmd_info(const std::string& path) {
  auto f = FileDevice::open(path, {.writable = false});
  if (!f.ok()) return cli::fail(f.status());
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

void register_update_cli(CLI::App& app) {
  {
    auto* sub = app.add_subcommand("update-diff", "make a diff that turns OLD into NEW (dm-update format v0)");
    auto o = std::make_shared<DiffOptions>();
    auto paths = std::make_shared<std::array<std::string, 3>>();
    sub->add_option("old", (*paths)[0], "old image")->required()->check(CLI::ExistingFile);
    sub->add_option("new", (*paths)[1], "new image")->required()->check(CLI::ExistingFile);
    sub->add_option("-o,--output", (*paths)[2], "diff file to write")->required();
    sub->add_option("-a,--algorithm", o->algorithm, "none|zstd|lz4|deflate (default zstd)");
    sub->add_option("-l,--level", o->level, "compression level (0 = default)");
    sub->add_option("--block-size", o->block_size, "block size in bytes (default 4096)");
    sub->add_option("--chunk-blocks", o->chunk_blocks, "blocks compressed together (default 16)");
    sub->add_option("--threads", o->threads, "compression threads (default 2)");
    sub->callback([o, paths] {
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
