// The update target's factory: the table line, the devices, and the one
// place that picks the target for the diff's format.
#include "update/target.h"

#include "device/target_args.h"
#include "update/format_io.h"
#include "update/target_versions.h"

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
  return *ver == 1 ? update::make_update_target_v1(std::move(d)) : update::make_update_target_v0(std::move(d));
}

}  // namespace udm
