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
# restart; then the same image as a ZFile (`udm overlaybd compress`, lz4,
# 4 KiB blocks) pushed with `udm push` to a docker-registry started from a
# temp config, read as `zfile oci://127.0.0.1:PORT/bench/disk@sha256:…`:
# the blob's full curl download, cold and warm runs (bytes and requests from
# the registry's access log, and udm's own counters from `udm info --json`).
# The image, the ZFile and the push are made before the link is shaped.
# Needs root, nginx, tc, nbdkit, nbdfuse, docker-registry.
set -euo pipefail
SIZE_MB=${1:-256}
UDM=${UDM:-$(cd "$(dirname "$0")/../.." && pwd)/build/udm}
if [ -z "${INSIDE:-}" ]; then exec unshare -n env INSIDE=1 UDM="$UDM" "$0" "$SIZE_MB"; fi
ip link set lo up; ip link set lo mtu 1500
NGX=; REG=; DPID=; LOOP=; NBK=; NFU=
W=$(mktemp -d); chmod 755 "$W"
cleanup() {
  [ -n "$NGX" ] && kill $NGX 2>/dev/null; [ -n "$REG" ] && kill $REG 2>/dev/null; umount "$W/mnt" 2>/dev/null; [ -n "${LOOP:-}" ] && losetup -d $LOOP
  [ -n "$NFU" ] && fusermount3 -u "$W/nbdmnt" 2>/dev/null; [ -n "$NBK" ] && kill $NBK 2>/dev/null
  [ -n "$DPID" ] && kill $DPID 2>/dev/null; wait; rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/tree" "$W/www" "$W/tmp" "$W/mnt" "$W/cache" "$W/cachez" "$W/dev" "$W/nbdmnt" "$W/nbdcache" "$W/reg"
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
# The registry: the same image as a ZFile blob, pushed before the link is shaped.
cat > "$W/registry.yml" <<RG
version: 0.1
log: {level: error, accesslog: {disabled: false}}
storage: {cache: {blobdescriptor: inmemory}, filesystem: {rootdirectory: $W/reg}}
http: {addr: 127.0.0.1:5091}
RG
docker-registry serve "$W/registry.yml" >> "$W/registry.log" 2>&1 & REG=$!  # >>: the log is emptied between runs
"$UDM" overlaybd compress "$W/www/disk.img" "$W/disk.zfile"
zfile_bytes=$(stat -c %s "$W/disk.zfile"); zhex=$(sha256sum "$W/disk.zfile" | cut -c1-64)
for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:5091/v2/ && break; sleep 0.1; done
"$UDM" push 127.0.0.1:5091/bench/disk:v1 "$W/disk.zfile" --cache-dir none > /dev/null
ZSPEC=oci://127.0.0.1:5091/bench/disk@sha256:$zhex
ZURL=http://127.0.0.1:5091/v2/bench/disk/blobs/sha256:$zhex
tc qdisc add dev lo root tbf rate 100mbit burst 256kb latency 50ms
sleep 0.5
URL=http://127.0.0.1:8091/disk.img
t0=$(date +%s.%N); curl -s -o /dev/null "$URL"; t1=$(date +%s.%N)
full=$(echo "$t1 - $t0" | bc)
: > "$W/registry.log"
t0=$(date +%s.%N); curl -s -o /dev/null "$ZURL"; t1=$(date +%s.%N)
zfull=$(echo "$t1 - $t0" | bc)
nginx_log() {  # bytes and requests in nginx's log
  echo "$(awk '{s+=$5} END {print s+0}' "$W/access.log") $(wc -l < "$W/access.log")"
}
registry_log() {  # bytes and requests of the blob's GETs in the registry's access log
  awk -v b="/v2/bench/disk/blobs/sha256:$zhex" '$6 == "\"GET" && $7 == b {s += $10; n++} END {print s+0, n+0}' "$W/registry.log"
}
report() {  # label t0 t_first_byte t_set_read "bytes requests" [blob]: one line
  local bytes reqs ratio
  read -r bytes reqs <<< "$5"
  ratio=$(printf '%.3fx the image download' "$(echo "($4 - $2) / $full" | bc -l)")
  # The ZFile rows: also against downloading the (smaller) blob.
  [ -n "${6:-}" ] && ratio="$ratio, $(printf '%.3fx the blob download' "$(echo "($4 - $2) / $zfull" | bc -l)")"
  printf '%-12s ttfb %.3f s  mount+read set %.3f s  fetched %d B (%.2fx the set) in %d requests  (%s)\n' \
    "$1" "$(echo "$3 - $2" | bc)" "$(echo "$4 - $2" | bc)" "$bytes" "$(echo "$bytes / $set_bytes" | bc -l)" "$reqs" "$ratio"
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
  report "$1" "$s0" "$S1" "$S2" "$(nginx_log)"
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
  report "$1" "$s0" "$S1" "$S2" "$(nginx_log)"
}
# The ZFile in the registry: `zfile oci://…` over its own cache directory.
# Bytes and requests from the registry's log (compressed bytes against the
# set's plain bytes); udm's counters follow the line.
run_zfile() {  # $1 = label
  : > "$W/registry.log"
  "$UDM" daemon --socket "$W/ctl" --fuse "$W/dev" --cache-dir "$W/cachez" --log-level warn & DPID=$!
  for i in $(seq 100); do [ -S "$W/ctl" ] && break; sleep 0.05; done
  local s0 counters
  s0=$(date +%s.%N)
  "$UDM" create diskz --readonly --table "0 $((SIZE_MB * 2048)) zfile $ZSPEC" --socket "$W/ctl"
  for i in $(seq 100); do [ -e "$W/dev/diskz" ] && break; sleep 0.05; done
  read_set "$W/dev/diskz"
  counters=$("$UDM" info diskz --json --socket "$W/ctl" | python3 -c \
    'import json,sys; s=json.load(sys.stdin)["sources"][0]; print(s["bytes_fetched"], "B in", s["requests"], "requests")')
  "$UDM" remove diskz --socket "$W/ctl"; kill $DPID; wait $DPID || true; DPID=
  sleep 0.2
  report "$1" "$s0" "$S1" "$S2" "$(registry_log)" blob
  echo "             (udm info: $counters)"
}
echo "image ${SIZE_MB} MiB, boot set $(wc -l < "$W/set") files, $set_bytes B; link 100 Mbit/s (tbf)"
printf 'curl full download: %.3f s\n' "$full"
run cold
run warm
run_nbdkit nbdkit-cold
run_nbdkit nbdkit-again
printf 'ZFile blob: %d B (%.3fx the image); curl full download from the registry: %.3f s\n' \
  "$zfile_bytes" "$(echo "$zfile_bytes / ($SIZE_MB * 1048576)" | bc -l)" "$zfull"
run_zfile zfile-cold
run_zfile zfile-warm
