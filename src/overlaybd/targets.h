// Table-line constructors for the zfile and lsmt targets (also used by tests
// and benchmarks to build devices without the daemon).
#pragma once

#include "device/target.h"

namespace udm::obd {

// zfile <dev>
Result<TargetPtr> make_zfile_target(const TargetParams& p);
// lsmt <layer> [<layer> ...] [rw <data> <index>]
Result<TargetPtr> make_lsmt_target(const TargetParams& p);

}  // namespace udm::obd
