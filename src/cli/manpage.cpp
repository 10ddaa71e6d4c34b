// `udm manpage`: writes udm(8) from the command's own parser, so the manual
// lists every verb and option that the binary has (features add verbs; a
// hand-written list would go stale). The build runs it into
// build/man/udm.8; cmake --install puts it under share/man/man8. The prose
// sections (description, files, examples) are here; docs/ has the details.
#include <fmt/format.h>

#include <iostream>
#include <string>

#include "cli/cli_common.h"
#include "udm_version.h"

namespace udm {
namespace {

// Escapes text for a roff line: backslashes, leading dots/quotes, hyphens in
// option names.
std::string roff(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '\\') o += "\\e";
    else if (c == '-') o += "\\-";
    else o += c;
  }
  if (!o.empty() && (o[0] == '.' || o[0] == '\'')) o = "\\&" + o;
  return o;
}

void options_of(const CLI::App* sub, std::string& out) {
  for (const CLI::Option* opt : sub->get_options()) {
    std::string name = opt->get_name(false, true);  // all names, e.g. "-o,--output"
    if (name.find("--help") != std::string::npos) continue;
    std::string type = opt->get_type_name();
    if (opt->get_positional()) name = opt->get_name();
    out += ".TP\n.B " + roff(name);
    if (!type.empty() && opt->get_type_size() != 0 && !opt->get_positional())
      out += " \\fI" + roff(type) + "\\fR";
    out += "\n" + roff(opt->get_description());
    if (opt->get_required()) out += " (required)";
    if (!opt->get_default_str().empty()) out += " (default: " + roff(opt->get_default_str()) + ")";
    if (!opt->get_envname().empty()) out += " Environment: \\fB" + roff(opt->get_envname()) + "\\fR.";
    out += "\n";
  }
}

void verbs_of(const CLI::App* app, const std::string& prefix, std::string& out) {
  for (const CLI::App* sub : app->get_subcommands({})) {
    if (sub->get_group().empty()) continue;  // hidden (this one)
    const std::string full = prefix + sub->get_name();
    out += ".SS \"" + roff(full) + "\"\n" + roff(sub->get_description()) + "\n";
    std::string usage;
    for (const CLI::Option* opt : sub->get_options())
      if (opt->get_positional()) usage += " \\fI" + roff(opt->get_name()) + "\\fR";
    if (sub->get_subcommands({}).empty()) {
      out += ".PP\n.B " + roff(full) + "\n[\\fIoptions\\fR]" + usage + "\n";
      options_of(sub, out);
    } else {
      verbs_of(sub, full + " ", out);
    }
  }
}

constexpr const char* kHead = R"(.TH UDM 8 "" "udm @VERSION@" "System Administration"
.SH NAME
udm \- a user\-space device mapper: targets, daemon, NBD and FUSE exports, image tools
.SH SYNOPSIS
.B udm daemon
[\fB\-\-socket\fR \fIPATH\fR] [\fB\-\-nbd\-unix\fR \fIPATH\fR] [\fB\-\-nbd\-tcp\fR \fIHOST:PORT\fR] [\fB\-\-fuse\fR \fIDIR\fR] [\fIoptions\fR]
.br
.B udm
\fIverb\fR [\fIoptions\fR] [\fIarguments\fR]
.br
.B udm \-\-version
.SH DESCRIPTION
.B udm
maps byte ranges of virtual block devices onto targets, as Linux's device\-mapper
does, in user space: \fBlinear\fR, \fBzero\fR, \fBerror\fR, \fBupdate\fR (a new
system image served from a diff while it is copied back), \fBsnapshot\-origin\fR,
\fBsnapshot\fR and \fBsnapshot\-merge\fR (the kernel's COW format), \fBbow\fR
(backup on write with rollback), the overlaybd formats \fBzfile\fR and
\fBlsmt\fR, \fBverity\fR (dm\-verity's checked reads), and
\fBandroid\-cow\fR and \fBandroid\-cow\-merge\fR (Android's Virtual A/B COW files); see \fBudm\-targets\fR(7) for every table line.
.PP
\fBudm daemon\fR holds the devices and serves them over NBD (a Unix socket
and/or TCP, optionally with TLS) and as regular files in a FUSE directory
(attach one with \fBlosetup\fR(8) to get a kernel block device). The other
verbs talk to the daemon over its control socket, with the names and output of
\fBdmsetup\fR(8): create, reload, suspend, resume, remove, ls, info, table,
status, message, targets. The offline tools (update\-diff, bow\-restore,
overlaybd, ...) work on files and block devices without a daemon.
.PP
Device arguments in tables and tools are absolute paths of files or block
devices, or names of other udm devices (stacking).
.SH VERBS
)";

constexpr const char* kTail = R"(.SH SECURITY
The control socket is created mode 0600 and every peer is checked
(SO_PEERCRED): root, the daemon's user or members of \fB\-\-control\-group\fR.
The NBD TCP listener binds to 127.0.0.1 unless a host is given; \fB\-\-nbd\-export\fR
limits what it serves, \fB\-\-tls require\fR refuses plaintext. See
docs/security.md for the threat model.
.SH FILES
.TP
.I /run/udm/control
the daemon's control socket (\fB$UDM_SOCKET\fR overrides it)
.TP
.I /run/udm/nbd.sock
the NBD Unix socket of the packaged service
.TP
.I /run/udm/dev/NAME
device NAME as a file, under the packaged service's FUSE directory
.TP
.I /etc/default/udm
options of the packaged service (\fBUDM_OPTS\fR)
.SH EXIT STATUS
0 on success, 1 when an operation failed (the message names the cause), 2 for
a usage error.
.SH EXAMPLES
.nf
udm daemon \-\-nbd\-unix /run/udm/nbd.sock \-\-fuse /run/udm/dev &
udm create vol \-\-table "0 2097152 linear /var/lib/images/vol.img 0"
losetup \-f \-\-show /run/udm/dev/vol
nbdinfo "nbd+unix:///vol?socket=/run/udm/nbd.sock"
udm update\-diff old.img new.img \-o diff.udm
udm create new \-\-table "0 131072 update /dev/sda1 /var/lib/ota/diff.udm 0"
.fi
.SH SEE ALSO
\fBudm\-targets\fR(7), \fBdmsetup\fR(8), \fBlosetup\fR(8), \fBnbdinfo\fR(1), \fBqemu\-img\fR(1)
)";

}  // namespace

std::string manpage_text(const CLI::App& app) {
  std::string head = kHead;
  head.replace(head.find("@VERSION@"), 9, UDM_VERSION);
  std::string out = head;
  verbs_of(&app, "udm ", out);
  out += kTail;
  return out;
}

void register_manpage_cli(CLI::App& app) {
  auto* sub = app.add_subcommand("manpage", "print udm(8) in roff (used by the build)");
  sub->group("");  // hidden from --help
  sub->callback([&app] { std::cout << manpage_text(app); });
}

}  // namespace udm
