// Feature "snapshot": dm-snapshot's three targets (seed 003) and the COW
// tools (cli.cpp, fiemap.cpp).
#include "device/feature.h"
#include "snapshot/snapshot.h"

namespace udm {
void register_feature_snapshot(Features& f) {
  f.targets.add("snapshot-origin", snapshot::make_origin_target, "snapshot-origin <origin> [1 writeback]");
  f.targets.add("snapshot", snapshot::make_snapshot_target, "snapshot <origin> <cow> <P|PO|N> <chunk_size_sectors>");
  f.targets.add("snapshot-merge", snapshot::make_merge_target, "snapshot-merge <origin> <cow> <P|PO> <chunk_size_sectors> [<#feature_args> [paused] [throttle=<MiB/s>|auto|off]]");
}
}  // namespace udm
