// Feature "bow": the `udm bow-restore` tool.
#include <fmt/format.h>

#include <iostream>

#include "bow/bow_target.h"
#include "bow/restore.h"
#include "cli/cli_common.h"
#include "io/resolver.h"
#include "util/progress.h"

namespace udm {

namespace {

void cmd_bow_restore(const std::string& path, bool dry_run, const std::string& force) {
  bow::ChainOptions opts;
  if (!force.empty()) {
    auto ids = bow::parse_entry_ids(force);
    if (!ids.ok()) return cli::fail(ids.status().context("--force"));
    opts.skip = *ids;
  }
  auto f = Resolver().open(path, !dry_run);
  if (!f.ok()) return cli::fail(f.status());
  auto dev = *f;
  if (!dry_run && dev->caps().read_only)
    return cli::fail(path + ": cannot be opened for writing (read-only, or no permission)");
  auto chain = bow::read_chain(*dev, opts);
  if (!chain.ok()) return cli::fail(chain.status().context(path));
  const bow::Chain& c = *chain;
  for (const auto& id : c.skipped)
    std::cout << fmt::format("skipping damaged entry {} (--force)\n", bow::to_string(id));
  if (!c.complete)
    std::cout << "the log chain is cut by a skipped log-block entry: older entries cannot be "
                 "restored, and block 0 gets the live block 0 back\n";
  if (dry_run) {
    for (const auto& s : c.steps)
      std::cout << fmt::format("entry {}: restore {} bytes at byte {} from byte {} ({})\n",
                               bow::to_string(s.id), s.entry.size, s.entry.source * 512,
                               s.entry.dest * 512, s.checked ? "checksum ok" : "not checked");
    std::cout << fmt::format("dry run: {} entries, {} bytes would be restored (block size {}, log "
                             "sequence {}); nothing written\n",
                             c.steps.size(), c.bytes(), c.block_size, c.newest_sequence);
    return;
  }
  Progress progress("bow-restore", c.bytes());
  Status st = bow::apply_chain(*dev, c, [&](uint64_t done) { progress.set(done); });
  progress.finish();
  if (!st.ok())
    return cli::fail(st.context(fmt::format("{}: restore interrupted; run bow-restore again", path)));
  std::cout << fmt::format("restored {} entries, {} bytes: {} is back at its checkpoint\n",
                           c.steps.size(), c.bytes(), path);
}

}  // namespace

void register_feature_bow_cli(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bow-restore",
      "Roll a device back to its bow checkpoint (offline: the bow device must be removed)");
  static std::string path, force;
  static bool dry_run = false;
  cmd->add_option("DEV", path, "The device or image under the bow target")->required();
  cmd->add_flag("--dry-run", dry_run, "Verify the log chain and list what would be restored");
  cmd->add_option("--force", force,
                  "Restore anyway, skipping these damaged entries (SEQ:IDX[,SEQ:IDX...] as "
                  "printed by a refused restore)");
  cmd->callback([] { cmd_bow_restore(path, dry_run, force); });
}

}  // namespace udm
