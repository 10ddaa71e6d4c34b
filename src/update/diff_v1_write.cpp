// update-diff v1, phase "write" (diff_v1_internal.h): never write a diff the
// loader refuses — the header against the format's limits, then the header
// and metadata through the loader itself (every operation, count, source,
// order and SAVE rule) — then the bytes, in diff_output.h's order.
#include <fmt/format.h>

#include "update/diff_output.h"
#include "update/diff_v1_internal.h"

namespace udm::update::v1gen {

Status check_loads(const Encoded& e) {
  if (Status v = v1_validate_header(e.h); !v.ok())
    return Invalid(fmt::format("update-diff: this update exceeds a limit of format v1 ({}); nothing written", v.message()));
  auto check = load_v1_head(e.header, e.cmeta, e.file_size(), e.verity);
  if (!check.ok())
    return IoError(fmt::format("update-diff: internal error: the diff would not load ({}); nothing written",
                               check.status().message()));
  return Status::Ok();
}

Result<uint64_t> write_encoded(const Encoded& e, GrowFile& f) {
  DiffOutput out(f, kV1HeaderSize);
  UDM_TRY(out.begin());
  // The stash block: zero in a fresh diff.
  if (e.stash) UDM_TRY(out.append(std::vector<uint8_t>(uint64_t{1} << e.h.block_bits, 0)));
  UDM_TRY(out.append(e.cmeta));
  for (auto& c : e.chunks) UDM_TRY(out.append(c));
  for (auto& fr : e.frames) UDM_TRY(out.append(fr));
  if (!e.verity.empty()) UDM_TRY(out.append(e.verity));
  UDM_TRY(out.finish(e.header));
  return out.pos();
}

}  // namespace udm::update::v1gen
