// Feature "overlaybd": ZFile and LSMT images (seed 004) as the zfile and lsmt
// targets, and the `udm overlaybd ...` tools (cli.cpp).
#include "device/feature.h"
#include "overlaybd/targets.h"

namespace udm {
void register_feature_overlaybd(Features& f) {
  f.targets.add("zfile", obd::make_zfile_target,
                "zfile <dev>  -- decompressed contents of a ZFile (or tar-wrapped ZFile blob), read-only");
  f.targets.add("lsmt", obd::make_lsmt_target,
                "lsmt <layer> [<layer> ...] [rw <data> <index>]  -- overlaybd LSMT layers, lowest first "
                "(path or udm device; raw, ZFile or tar-wrapped), optionally a writable top layer");
}
}  // namespace udm
