// Snapshot tools: cow-size, inspect, snapshot-merge-offline.
#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "cli/cli_common.h"
#include "device/target_args.h"
#include "io/resolver.h"
#include "snapshot/cow_format.h"
#include "snapshot/snapshot.h"
#include "util/progress.h"

namespace udm {
using namespace snapshot;

namespace {

// A chunk size: bytes, or with a unit (device/target_args.h's parse_size:
// K, M, ...) or the suffix s for 512-byte sectors.
Result<uint64_t> parse_chunk_size(const std::string& s) {
  if (!s.empty() && s.back() == 's') {
    UDM_ASSIGN_OR_RETURN(uint64_t n, parse_u64(std::string_view(s).substr(0, s.size() - 1), "--chunk-size"));
    if (n > UINT64_MAX / 512) return Invalid("--chunk-size: '" + s + "' is too large");
    return n * 512;
  }
  return parse_size(s, "--chunk-size");
}

void cmd_cow_size(const std::string& cs, int64_t bytes, int64_t chunks) {
  auto b = parse_chunk_size(cs);
  if (!b.ok()) return cli::fail(b.status());
  if (*b % 512) return cli::fail("--chunk-size must be a multiple of 512 bytes");
  auto g = make_geometry(uint32_t(*b / 512));
  if (!g.ok()) return cli::fail(g.status());
  if ((bytes < 0) == (chunks < 0))
    return cli::fail("give exactly one of --changed-bytes or --changed-chunks");
  uint64_t n = chunks >= 0 ? uint64_t(chunks) : (uint64_t(bytes) + g->chunk_bytes - 1) / g->chunk_bytes;
  uint64_t total = cow_chunks_needed(n, g->per_area);
  std::cout << total * g->chunk_bytes << "\n";
}

void cmd_inspect(const std::string& path) {
  auto f = Resolver().open(path, false);
  if (!f.ok()) return cli::fail(f.status());
  auto dev = *f;
  std::vector<uint8_t> first(512);
  if (dev->size() < 512) return cli::fail(path + ": smaller than one sector");
  Status st = dev->read(0, first);
  if (!st.ok()) return cli::fail(st);
  auto p = parse_cow(first, dev->size(), UINT64_MAX / 2, 0,
                     [&](uint64_t c, std::span<uint8_t> buf) { return dev->read(c * buf.size(), buf); });
  if (!p.ok()) return cli::fail(p.status().context(path));
  if (p->kind == ParsedCow::Kind::kNew) {
    std::cout << "magic:     0 (new store, no header yet)\n";
    return;
  }
  uint64_t n = p->records.size(), E = p->geo.per_area;
  std::cout << fmt::format(
      "magic:               SnAp\nvalid:               {}\nversion:             {}\n"
      "chunk_size:          {} sectors ({} bytes)\nexceptions_per_area: {}\n",
      p->header.valid, p->header.version, p->geo.chunk_sectors, p->geo.chunk_bytes, E);
  if (p->kind == ParsedCow::Kind::kInvalid) {
    std::cout << "exceptions:          (store invalidated; table not read)\n";
    return;
  }
  uint64_t next_free = std::max<uint64_t>(2, p->max_new_chunk + 1);
  if (p->geo.is_area_chunk(next_free)) next_free++;
  std::cout << fmt::format(
      "exceptions:          {}\nmetadata_areas:      {}\nhighest_data_chunk:  {}\n"
      "status:              {}/{} {}\n",
      n, n / E + 1, p->max_new_chunk, next_free * p->geo.chunk_sectors, dev->size() / 512,
      (n / E + 2) * p->geo.chunk_sectors);
}

void cmd_merge_offline(const std::string& origin, const std::string& cow, uint32_t cs) {
  auto m = open_offline_merge(origin, cow, cs);
  if (!m.ok()) return cli::fail(m.status());
  uint64_t total = (*m)->remaining();
  Progress prog("merging", total, false);
  Status st = (*m)->run_merge([&](uint64_t rem) { prog.set(total - rem); });
  prog.finish();
  if (!st.ok()) return cli::fail(st.context("merge stopped (run again to resume)"));
  std::cout << fmt::format("merged {} exceptions; origin now holds the snapshot\n", total);
}

}  // namespace

void register_fiemap_cli(CLI::App& app);

void register_feature_snapshot_cli(CLI::App& app) {
  register_fiemap_cli(app);
  {
    auto* sub = app.add_subcommand("cow-size", "COW bytes needed for N changed chunks (kernel format)");
    auto cs = std::make_shared<std::string>();
    auto b = std::make_shared<int64_t>(-1), c = std::make_shared<int64_t>(-1);
    sub->add_option("--chunk-size", *cs, "chunk size: bytes, or with suffix s (sectors), K, M")->required();
    sub->add_option("--changed-bytes", *b, "bytes that will change on the origin");
    sub->add_option("--changed-chunks", *c, "chunks that will change on the origin");
    sub->callback([cs, b, c] { cmd_cow_size(*cs, *b, *c); });
  }
  {
    auto* sub = app.add_subcommand("inspect", "print a COW's header and exception count");
    auto p = std::make_shared<std::string>();
    sub->add_option("cow", *p, "COW file or device")->required();
    sub->callback([p] { cmd_inspect(*p); });
  }
  {
    auto* sub = app.add_subcommand("snapshot-merge-offline",
                                   "roll ORIGIN back to the snapshot in COW without a daemon (resumable)");
    auto a = std::make_shared<std::array<std::string, 2>>();
    auto cs = std::make_shared<uint32_t>(0);
    sub->add_option("origin", (*a)[0], "origin file or device")->required();
    sub->add_option("cow", (*a)[1], "COW file or device")->required();
    sub->add_option("--chunk-size", *cs, "chunk size in sectors (0 = from the COW header)");
    sub->callback([a, cs] { cmd_merge_offline((*a)[0], (*a)[1], *cs); });
  }
}

}  // namespace udm
