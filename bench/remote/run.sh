#!/usr/bin/env bash
# bench/remote/run.sh [SIZE_MB] — lazy remote image vs downloading it first.
# An ext4 image (SIZE_MB, default 256) filled from /usr files, served raw by
# nginx over a loopback limited to 100 Mbit/s (unshare -n + tc tbf, see
# ../shared/notes/remote.md). Workload: mount read-only and read a "boot set"
# of files of about 5 % of the image. Prints, same run: the full curl
# download time, udm's time to first byte, time to mount + read the set,
# bytes fetched and requests (nginx log), then a warm run after a daemon
# restart; then the same workload through `nbdkit curl` with its cache
# filter (cache-on-read), mounted through nbdfuse + loop, cold and after a
# restart. Needs root, nginx, tc, nbdkit, nbdfuse.
set -euo pipefail
SIZE_MB=${1:-256}
UDM=${UDM:-$(cd "$(dirname "$0")/../.." && pwd)/build/udm}
if [ -z "${INSIDE:-}" ]; then exec unshare -n env INSIDE=1 UDM="$UDM" "$0" "$SIZE_MB"; fi
ip link set lo up; ip link set lo mtu 1500
tc qdisc add dev lo root tbf rate 100mbit burst 256kb latency 50ms
NGX=; DPID=; LOOP=; NBK=; NFU=
W=$(mktemp -d); chmod 755 "$W"
cleanup() {
  [ -n "$NGX" ] && kill $NGX 2>/dev/null; umount "$W/mnt" 2>/dev/null; [ -n "${LOOP:-}" ] && losetup -d $LOOP
  [ -n "$NFU" ] && fusermount3 -u "$W/nbdmnt" 2>/dev/null; [ -n "$NBK" ] && kill $NBK 2>/dev/null
  [ -n "$DPID" ] && kill $DPID 2>/dev/null; wait; rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/tree" "$W/www" "$W/tmp" "$W/mnt" "$W/cache" "$W/dev" "$W/nbdmnt" "$W/nbdcache"
# Files from the system, up to ~70 % of the image.
budget=$((SIZE_MB * 700 * 1024))
find /usr/lib /usr/share -type f -size +8k 2>/dev/null | head -20000 | while read -r f; do
  s=$(stat -c %s "$f"); budget=$((budget - s)); [ $budget -gt 0 ] || break
  d="$W/tree$(dirname "$f")"; mkdir -p "$d"; cp "$f" "$d/" 2>/dev/null || true
done || true
mkfs.ext4 -q -F -d "$W/tree" "$W/www/disk.img" "${SIZE_MB}M"
chmod 644 "$W/www/disk.img"
# The boot set: files in find order until ~5 % of the image.
set_budget=$((SIZE_MB * 1024 * 1024 / 20)); : > "$W/set"
(cd "$W/tree" && find . -type f | while read -r f; do s=$(stat -c %s "$f"); set_budget=$((set_budget - s)); [ $set_budget -gt 0 ] || break; echo "$f"; done || true) > "$W/set"
[ -s "$W/set" ] || { echo "bench/remote: no file fits a boot set of 5 % of ${SIZE_MB} MiB; use a larger image" >&2; exit 1; }
set_bytes=$(cd "$W/tree" && xargs -a "$W/set" -d '\n' stat -c %s | paste -sd+ | bc)
cat > "$W/nginx.conf" <<NG
worker_processes 1; pid $W/nginx.pid; error_log $W/error.log warn;
events { worker_connections 256; }
http { log_format rng '\$request_method \$uri "\$http_range" \$status \$body_bytes_sent';
  access_log $W/access.log rng; client_body_temp_path $W/tmp/b; proxy_temp_path $W/tmp/p; fastcgi_temp_path $W/tmp/f;
  uwsgi_temp_path $W/tmp/u; scgi_temp_path $W/tmp/s; keepalive_requests 100000;
  server { listen 127.0.0.1:8091; root $W/www; } }
NG
nginx -c "$W/nginx.conf" -p "$W" -e "$W/error.log" -g 'daemon off;' & NGX=$!
sleep 0.5
URL=http://127.0.0.1:8091/disk.img
t0=$(date +%s.%N); curl -s -o /dev/null "$URL"; t1=$(date +%s.%N)
full=$(echo "$t1 - $t0" | bc)
report() {  # label t0 t_first_byte t_set_read: one line, bytes and requests from nginx's log
  local bytes reqs
  bytes=$(awk '{s+=$5} END {print s+0}' "$W/access.log"); reqs=$(wc -l < "$W/access.log")
  printf '%-12s ttfb %.3f s  mount+read set %.3f s  fetched %d B (%.2fx the set) in %d requests  (%.3fx the full download time)\n' \
    "$1" "$(echo "$3 - $2" | bc)" "$(echo "$4 - $2" | bc)" "$bytes" "$(echo "$bytes / $set_bytes" | bc -l)" "$reqs" \
    "$(echo "($4 - $2) / $full" | bc -l)"
}
read_set() {  # FILE: its first 4 KiB (S1 = then), loop-mount it, read the boot set (S2 = then)
  dd if="$1" of=/dev/null bs=4096 count=1 status=none
  S1=$(date +%s.%N)
  LOOP=$(losetup -f --show -r "$1")
  mount -o ro,noload "$LOOP" "$W/mnt"
  (cd "$W/mnt" && xargs -a "$W/set" -d '\n' cat > /dev/null)
  S2=$(date +%s.%N)
  umount "$W/mnt"; losetup -d "$LOOP"; LOOP=
}
run() {  # $1 = label
  : > "$W/access.log"
  "$UDM" daemon --socket "$W/ctl" --fuse "$W/dev" --cache-dir "$W/cache" --log-level warn & DPID=$!
  for i in $(seq 100); do [ -S "$W/ctl" ] && break; sleep 0.05; done
  local s0
  s0=$(date +%s.%N)
  "$UDM" create disk --readonly --table "0 $((SIZE_MB * 2048)) linear $URL 0" --socket "$W/ctl"
  for i in $(seq 100); do [ -e "$W/dev/disk" ] && break; sleep 0.05; done
  read_set "$W/dev/disk"
  "$UDM" remove disk --socket "$W/ctl"; kill $DPID; wait $DPID || true; DPID=
  sleep 0.2
  report "$1" "$s0" "$S1" "$S2"
}
# The same workload through nbdkit's curl plugin and cache filter, as a
# file through nbdfuse, then the loop device. nbdkit's cache is a temporary
# file: a restart starts cold again.
run_nbdkit() {  # $1 = label
  : > "$W/access.log"
  local s0
  s0=$(date +%s.%N)
  TMPDIR="$W/nbdcache" nbdkit -f -U "$W/nbdkit.sock" --filter=cache curl url="$URL" cache-on-read=true 2>"$W/nbdkit.log" & NBK=$!
  for i in $(seq 100); do [ -S "$W/nbdkit.sock" ] && break; sleep 0.05; done
  nbdfuse -r "$W/nbdmnt/disk" --unix "$W/nbdkit.sock" & NFU=$!
  for i in $(seq 100); do [ -e "$W/nbdmnt/disk" ] && break; sleep 0.05; done
  read_set "$W/nbdmnt/disk"
  fusermount3 -u "$W/nbdmnt"; wait $NFU || true; NFU=
  kill $NBK; wait $NBK || true; NBK=; rm -f "$W/nbdkit.sock"
  sleep 0.2
  report "$1" "$s0" "$S1" "$S2"
}
echo "image ${SIZE_MB} MiB, boot set $(wc -l < "$W/set") files, $set_bytes B; link 100 Mbit/s (tbf)"
printf 'curl full download: %.3f s\n' "$full"
run cold
run warm
run_nbdkit nbdkit-cold
run_nbdkit nbdkit-again
