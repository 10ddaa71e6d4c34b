// Registers the dm-snapshot targets and the snapshot tools.
#include "cli/cli_common.h"
#include "device/target.h"
#include "snapshot/snapshot.h"

namespace udm {
void register_snapshot_targets(TargetRegistry& r) {
  r.add("snapshot-origin", snapshot::make_origin_target, "snapshot-origin <origin>");
  r.add("snapshot", snapshot::make_snapshot_target,
        "snapshot <origin> <cow> <P|PO|N> <chunk_size_sectors>");
  r.add("snapshot-merge", snapshot::make_merge_target,
        "snapshot-merge <origin> <cow> <P|PO> <chunk_size_sectors>");
}
}  // namespace udm
