// The update target's factory: the table line, the devices, and the one
// place that picks the target for the diff's format.
#include "update/target.h"

#include <fmt/format.h>

#include <algorithm>

#include "device/target_args.h"
#include "io/region_overlay.h"
#include "io/resolver.h"
#include "update/format_io.h"
#include "update/format_v0_io.h"
#include "update/format_v1_io.h"
#include "update/target_versions.h"
#include "util/log.h"

namespace udm {

Result<TargetPtr> make_update_target(const TargetParams& p) {
  TargetArgs a("update", p.args);
  update::UpdateDevices d;
  UDM_ASSIGN_OR_RETURN(std::string sys_name, a.next("<system_dev>"));
  UDM_ASSIGN_OR_RETURN(d.diff_name, a.next("<diff_dev>"));
  // <#opt_args> is part of the syntax even when it is 0.
  if (a.empty()) return a.error("<#opt_args>", "missing (0 when there are no optional arguments)");
  UDM_ASSIGN_OR_RETURN(OptArgs opt, a.opt_group());
  UDM_ASSIGN_OR_RETURN(bool no_bg, opt.flag("no_bg_update"));
  UDM_ASSIGN_OR_RETURN(d.policy, JobPolicy::from_opts(opt, "update"));
  UDM_TRY(opt.done());
  UDM_TRY(a.done());
  d.bg = !no_bg;
  d.length = p.length;
  UDM_ASSIGN_OR_RETURN(d.sys, p.resolver->open(sys_name, true));
  if (d.sys->caps().read_only && d.bg)
    return ReadOnly("update: system device " + sys_name + " is read-only; use no_bg_update to serve without copying");
  UDM_ASSIGN_OR_RETURN(d.diff, p.resolver->open(d.diff_name, true));
  auto ver = update::diff_version(*d.diff);
  if (!ver.ok()) return ver.status().context("update: diff " + d.diff_name);
  if (spec_kind(d.diff_name) == SpecKind::kUri) {
    // A remote diff (docs/remote.md "Pinned metadata"): keep what every open
    // reads in its cache, as ZFile and LSMT do: header (v1: and stash),
    // metadata or directory, v1's verity record. Loaded here only for a URI
    // (a local diff would be parsed twice for nothing; the target loads it).
    BlockDevice& diff = *d.diff;
    // The bytes the copy-back writes into its diff: v1's header sector with
    // the checkpoint record and the stash block (v1_write_checkpoint,
    // v1_write_batch_checkpoint; a logged batch's scratch blocks are on the
    // system device), v0's first sector with the progress record in pad2
    // (write_progress).
    uint64_t mutable_bytes = 0;
    if (*ver == 1) {
      auto idx = update::load_v1(diff);
      if (!idx.ok()) return idx.status().context("update: diff " + d.diff_name);
      mutable_bytes = update::kV1HeaderSize + uint64_t(idx->h.stash_blocks) * idx->block_size();
      diff.keep_cached(0, mutable_bytes);
      diff.keep_cached(idx->h.meta_offset, idx->h.meta_size);
      if (idx->h.verity_size) diff.keep_cached(idx->h.verity_offset, idx->h.verity_size);
    } else {
      auto idx = update::load_diff(diff);
      if (!idx.ok()) return idx.status().context("update: diff " + d.diff_name);
      mutable_bytes = std::min<uint64_t>(512, diff.size());
      diff.keep_cached(0, update::kSuperblockSize);
      diff.keep_cached(idx->sb.dir_offset, idx->sb.dir_compressed_size);
    }
    if (d.bg) {
      // The copy-back writes those bytes; a remote object cannot be written,
      // so they live in a state file in the cache directory, keyed by the
      // object's identity (docs/remote.md "Streaming update"): a restart with
      // the same table resumes from the record there.
      auto home = diff.local_state_home();
      if (!home.ok())
        return Status::Error(home.status().code(),
                             fmt::format("update: diff {}: the copy-back over a remote diff keeps its progress in a "
                                         "state file in the cache directory, but {}; use no_bg_update to serve the "
                                         "new image without copying it back",
                                         d.diff_name, home.status().message()));
      auto ov = RegionOverlayDevice::open(d.diff, *home, {{0, mutable_bytes}});
      if (!ov.ok()) return ov.status().context("update: diff " + d.diff_name + ": copy-back state");
      log::info("update: diff {}: copy-back progress kept in {} ({})", d.diff_name, (*ov)->path(),
                (*ov)->created() ? "new" : "existing");
      d.diff = *ov;
    }
  }
  return *ver == 1 ? update::make_update_target_v1(std::move(d)) : update::make_update_target_v0(std::move(d));
}

}  // namespace udm
