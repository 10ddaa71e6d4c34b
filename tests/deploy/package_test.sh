#!/usr/bin/env bash
# The Debian package on this machine, as an integrator would use it:
# scripts/package builds it; dpkg -i installs it; systemd-analyze verify
# accepts the unit; the daemon runs with the unit's own ExecStart line; a
# device is created, exported over NBD and FUSE, and removed; the manual and
# completion are in place; dpkg --purge leaves nothing behind.
# Needs root (dpkg, FUSE). Usage: package_test.sh SOURCE_DIR
set -euo pipefail
src=${1:?source dir}
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root"; exit 0; fi
fail() { echo "FAIL: $*" >&2; exit 1; }
work=$(mktemp -d)
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then kill -TERM "$daemon_pid"; wait "$daemon_pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

deb=$("$src/scripts/package" "$work/out" | tail -1)
[ -f "$deb" ] || fail "scripts/package made no .deb"
info=$(dpkg-deb -I "$deb")  # not piped into grep -q: pipefail + SIGPIPE
grep -q "^ Depends: .*libfuse3" <<<"$info" || fail "Depends does not name libfuse3"
if pgrep -x udm >/dev/null && [ -S /run/udm/control ]; then fail "a udm daemon already runs on /run/udm"; fi
dpkg -i "$deb" >/dev/null || fail "dpkg -i"
files=$(dpkg -L udm)

# The unit is valid; the manual it names exists.
unit=/usr/lib/systemd/system/udm.service
[ -f "$unit" ] || fail "no $unit"
verify=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify printed: $verify"
man -w udm >/dev/null 2>&1 || [ -f /usr/share/man/man8/udm.8.gz ] || fail "udm(8) missing"
[ -f /usr/share/man/man7/udm-targets.7.gz ] || fail "udm-targets(7) missing"
[ -f /usr/share/bash-completion/completions/udm ] || fail "bash completion missing"
[ -f /usr/lib/tmpfiles.d/udm.conf ] || fail "tmpfiles entry missing"
/usr/sbin/udm --version | grep -Eq '^udm [0-9]+\.[0-9]+\.[0-9]+ \(git [0-9a-f]{12}(-dirty)?\)$' || fail "udm --version: $(/usr/sbin/udm --version)"
bash -c 'source /usr/share/bash-completion/completions/udm; COMP_WORDS=(/usr/sbin/udm cre); COMP_CWORD=1; _udm; [ "${COMPREPLY[*]}" = create ]' || fail "completion of 'cre'"

# The daemon, started with the unit's ExecStart line (UDM_OPTS empty, as in
# /etc/default/udm), the runtime directory made as systemd would.
exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
exec_line=${exec_line//\$UDM_OPTS/}
systemd-tmpfiles --create udm.conf 2>/dev/null || install -d -m 0700 /run/udm
# shellcheck disable=SC2086
$exec_line > "$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [ -S /run/udm/control ] && break; sleep 0.05; done
[ -S /run/udm/control ] || fail "daemon did not start: $(cat "$work/daemon.log")"
export UDM_SOCKET=/run/udm/control
truncate -s 16M "$work/vol.img"
udm create pkgvol --table "0 32768 linear $work/vol.img 0" || fail "udm create"
[ "$(udm ls)" = pkgvol ] || fail "udm ls: $(udm ls)"
head -c 4M /dev/urandom > "$work/data"
nbdcopy "$work/data" "nbd+unix:///pkgvol?socket=/run/udm/nbd.sock" || fail "nbdcopy in"
cmp -n 4194304 "$work/data" /run/udm/dev/pkgvol || fail "FUSE file differs from what NBD wrote"
udm remove pkgvol || fail "udm remove"
[ -z "$(udm ls)" ] || fail "device left after remove"
kill -TERM "$daemon_pid"
rc=0; wait "$daemon_pid" || rc=$?
daemon_pid=""
[ "$rc" = 0 ] || fail "daemon exit status $rc: $(cat "$work/daemon.log")"

# Purge: no file of the package, no configuration, no runtime directory.
dpkg --purge udm >/dev/null || fail "dpkg --purge"
while read -r f; do
  [ -z "$f" ] && continue
  [ -d "$f" ] && continue  # shared directories (/usr, /etc, ...) stay
  [ -e "$f" ] && fail "left behind: $f"
done <<<"$files"
[ ! -e /etc/default/udm ] || fail "left behind: /etc/default/udm"
[ ! -e /run/udm ] || fail "left behind: /run/udm ($(ls -la /run/udm))"
[ ! -e /usr/share/doc/udm ] || fail "left behind: /usr/share/doc/udm"
echo "package test: OK ($deb)"
