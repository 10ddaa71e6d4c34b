// The growable-file interface now lives in io/grow_file.h (one interface for
// every writer that appends: the lsmt RW layer, diff and layer writers).
#pragma once

#include "io/grow_file.h"

namespace udm::obd {
using udm::GrowFile;
using udm::GrowFilePtr;
using udm::MemGrowFile;
using udm::open_grow_file;
}  // namespace udm::obd
