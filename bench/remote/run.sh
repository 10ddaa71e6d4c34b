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
run() {  # $1 = label
  : > "$W/access.log"
  "$UDM" daemon --socket "$W/ctl" --fuse "$W/dev" --cache-dir "$W/cache" --log-level warn & DPID=$!
  for i in $(seq 100); do [ -S "$W/ctl" ] && break; sleep 0.05; done
  local s0 s1 s2
  s0=$(date +%s.%N)
  "$UDM" create disk --readonly --table "0 $((SIZE_MB * 2048)) linear $URL 0" --socket "$W/ctl"
  for i in $(seq 100); do [ -e "$W/dev/disk" ] && break; sleep 0.05; done
  dd if="$W/dev/disk" of=/dev/null bs=4096 count=1 status=none
  s1=$(date +%s.%N)
  LOOP=$(losetup -f --show -r "$W/dev/disk")
  mount -o ro,noload "$LOOP" "$W/mnt"
  (cd "$W/mnt" && xargs -a "$W/set" -d '\n' cat > /dev/null)
  s2=$(date +%s.%N)
  umount "$W/mnt"; losetup -d "$LOOP"; LOOP=
  "$UDM" remove disk --socket "$W/ctl"; kill $DPID; wait $DPID || true; DPID=
  sleep 0.2
  local bytes reqs
  bytes=$(awk '{s+=$5} END {print s+0}' "$W/access.log"); reqs=$(wc -l < "$W/access.log")
  printf '%-12s ttfb %.3f s  mount+read set %.3f s  fetched %d B (%.2fx the set) in %d requests  (%.3fx the full download time)\n' \
    "$1" "$(echo "$s1 - $s0" | bc)" "$(echo "$s2 - $s0" | bc)" "$bytes" "$(echo "$bytes / $set_bytes" | bc -l)" "$reqs" \
    "$(echo "($s2 - $s0) / $full" | bc -l)"
}
# The same workload through nbdkit's curl plugin and cache filter, as a
# file through nbdfuse, then the loop device. nbdkit's cache is a temporary
# file: a restart starts cold again.
run_nbdkit() {  # $1 = label
  : > "$W/access.log"
  local s0 s1 s2
  s0=$(date +%s.%N)
  TMPDIR="$W/nbdcache" nbdkit -f -U "$W/nbdkit.sock" --filter=cache curl url="$URL" cache-on-read=true 2>"$W/nbdkit.log" & NBK=$!
  for i in $(seq 100); do [ -S "$W/nbdkit.sock" ] && break; sleep 0.05; done
  nbdfuse -r "$W/nbdmnt/disk" --unix "$W/nbdkit.sock" & NFU=$!
  for i in $(seq 100); do [ -e "$W/nbdmnt/disk" ] && break; sleep 0.05; done
  dd if="$W/nbdmnt/disk" of=/dev/null bs=4096 count=1 status=none
  s1=$(date +%s.%N)
  LOOP=$(losetup -f --show -r "$W/nbdmnt/disk")
  mount -o ro,noload "$LOOP" "$W/mnt"
  (cd "$W/mnt" && xargs -a "$W/set" -d '\n' cat > /dev/null)
  s2=$(date +%s.%N)
  umount "$W/mnt"; losetup -d "$LOOP"; LOOP=
  fusermount3 -u "$W/nbdmnt"; wait $NFU || true; NFU=
  kill $NBK; wait $NBK || true; NBK=; rm -f "$W/nbdkit.sock"
  sleep 0.2
  local bytes reqs
  bytes=$(awk '{s+=$5} END {print s+0}' "$W/access.log"); reqs=$(wc -l < "$W/access.log")
  printf '%-12s ttfb %.3f s  mount+read set %.3f s  fetched %d B (%.2fx the set) in %d requests  (%.3fx the full download time)\n' \
    "$1" "$(echo "$s1 - $s0" | bc)" "$(echo "$s2 - $s0" | bc)" "$bytes" "$(echo "$bytes / $set_bytes" | bc -l)" "$reqs" \
    "$(echo "($s2 - $s0) / $full" | bc -l)"
}
echo "image ${SIZE_MB} MiB, boot set $(wc -l < "$W/set") files, $set_bytes B; link 100 Mbit/s (tbf)"
printf 'curl full download: %.3f s\n' "$full"
run cold
run warm
run_nbdkit nbdkit-cold
run_nbdkit nbdkit-again
