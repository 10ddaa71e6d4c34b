#!/usr/bin/env bash
# overlaybd benchmark: udm's ZFile/LSMT against qemu's compressed qcow2, in
# the same run, on a realistic ext4 image built from the system's own files.
#
#   bench/overlaybd/run.sh [BUILD_DIR]      (default build-overlaybd, else build)
#   SIZE_MIB=1024 SECS=8 bench/overlaybd/run.sh
#
# 1. mkfs.ext4 -d <staged /usr tree> a SIZE_MIB image.
# 2. Conversion: udm `overlaybd from-raw -z` (lz4/zstd x 4/64 KiB blocks, 2
#    threads) vs `qemu-img convert -c -O qcow2` (zlib, zstd): time and ratio.
# 3. Reads over NBD: udm daemon serving `lsmt <zfile layer>` vs qemu-nbd
#    serving the compressed qcow2: random 4 KiB (QD 8) and sequential 1 MiB.
# 3b. The same reads in process: obd_read_bench vs qemu-img bench.
# 4. Lookup cost vs stack depth (1, 8, 64 layers): udm in-process, and
#    qemu-img bench on qcow2 backing chains of the same depths.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
B=${1:-}
[ -z "$B" ] && { [ -x "$SRC/build-overlaybd/udm" ] && B=$SRC/build-overlaybd || B=$SRC/build; }
UDM=$B/udm
NBDREAD=$B/bench/overlaybd/obd_nbd_read
LOOKUP=$B/bench/overlaybd/obd_lookup_bench
SIZE_MIB=${SIZE_MIB:-1024}
SECS=${SECS:-5}
W=$(mktemp -d /tmp/udm-obd-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('%.2f' % (a/b if b else 0))" "$1" "$2"; }
fsize() { stat -c %s "$1"; }

echo "== image: ${SIZE_MIB} MiB ext4 from /usr files"
mkdir -p "$W/tree"
budget=$(( SIZE_MIB * 62 / 100 ))   # fill ~62% of the filesystem
for d in /usr/include /usr/share/doc /usr/share/man /usr/bin /usr/lib/python3* /usr/share/locale /usr/lib/x86_64-linux-gnu; do
  [ -d "$d" ] || continue
  used=$(du -sm "$W/tree" | cut -f1)
  [ "$used" -ge "$budget" ] && break
  mkdir -p "$W/tree$(dirname "$d")"
  cp -a "$d" "$W/tree$(dirname "$d")/" 2>/dev/null || true
done
# Trim to the budget (drop the largest files of the last directory if needed).
while [ "$(du -sm "$W/tree" | cut -f1)" -gt "$budget" ]; do
  f=$(find "$W/tree" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
  rm -f "$f"
done
truncate -s ${SIZE_MIB}M "$W/img.raw"
mkfs.ext4 -q -F -d "$W/tree" "$W/img.raw"
rm -rf "$W/tree"
RAW=$(fsize "$W/img.raw")
echo "image $RAW bytes, $(du -m "$W/img.raw" | cut -f1) MiB allocated"

echo
echo "== conversion (ratio = image size / output size; time in s)"
printf "%-28s %12s %8s %8s\n" tool bytes ratio time
declare -A UDM_T UDM_S
for algo in lz4 zstd; do
  for bs in 4 64; do
    out="$W/udm.$algo.$bs.zfile"
    t0=$(now); "$UDM" overlaybd from-raw "$W/img.raw" "$out" -z --algorithm $algo --bs $bs; t1=$(now)
    t=$(python3 -c "print('%.2f' % ($t1-$t0))")
    UDM_T[$algo.$bs]=$t; UDM_S[$algo.$bs]=$(fsize "$out")
    printf "%-28s %12s %8s %8s\n" "udm zfile $algo ${bs}K" "$(fsize "$out")" "$(ratio $RAW $(fsize "$out"))" "$t"
  done
done
declare -A Q_T Q_S
for c in zlib zstd; do
  out="$W/q.$c.qcow2"
  t0=$(now); qemu-img convert -c -f raw -O qcow2 -o compression_type=$c "$W/img.raw" "$out"; t1=$(now)
  t=$(python3 -c "print('%.2f' % ($t1-$t0))")
  Q_T[$c]=$t; Q_S[$c]=$(fsize "$out")
  printf "%-28s %12s %8s %8s\n" "qemu-img qcow2 -c $c" "$(fsize "$out")" "$(ratio $RAW $(fsize "$out"))" "$t"
done
echo "ratio at equal algorithm, zstd: udm 64K $(ratio ${Q_S[zstd]} ${UDM_S[zstd.64]})x smaller, udm 4K $(ratio ${Q_S[zstd]} ${UDM_S[zstd.4]})x smaller than qcow2-zstd"
echo "conversion speed vs qcow2-zstd: udm zstd 64K $(ratio ${Q_T[zstd]} ${UDM_T[zstd.64]})x, udm lz4 4K $(ratio ${Q_T[zstd]} ${UDM_T[lz4.4]})x faster"


echo
echo "== in-process reads, qemu-img bench pattern (no transport): udm obd_read_bench vs qemu-img bench on the qcow2"
READB=$B/bench/overlaybd/obd_read_bench
printf "%-34s %10s %10s %8s\n" pattern udm-s qemu-s speedup
for spec in "4k-step4k 100000 4096 4096" "4k-step452k 100000 4096 462848" "1M-seq 1024 1048576 1048576"; do
  set -- $spec
  for pair in "zstd.64:zstd" "lz4.4:zlib"; do
    u=${pair%%:*}; q=${pair##*:}
    us=$("$READB" $2 $3 $4 2 "$W/udm.$u.zfile" | awk '{print $1}')
    t0=$(now); qemu-img bench -f qcow2 -c $2 -s $3 -S $4 "$W/q.$q.qcow2" >/dev/null; t1=$(now)
    qs=$(python3 -c "print('%.3f' % ($t1-$t0))")
    printf "%-34s %10s %10s %7sx\n" "$1 udm-$u vs qcow2-$q" "$us" "$qs" "$(ratio $qs $us)"
  done
done
echo
echo "== lookup cost vs stack depth"
[ -x "$LOOKUP" ] && "$LOOKUP" 64000
echo "qcow2 backing chain (qemu-img bench, 4 KiB reads, 100000 requests):"
printf "%6s %10s %8s\n" layers seconds ratio
q1=""
for depth in 1 8 64; do
  rm -f "$W"/chain*.qcow2
  qemu-img create -q -f qcow2 "$W/chain0.qcow2" 1G
  qemu-io -f qcow2 -c "write -P 1 0 4k" "$W/chain0.qcow2" >/dev/null
  for l in $(seq 1 $((depth - 1))); do
    qemu-img create -q -f qcow2 -F qcow2 -b "$W/chain$((l-1)).qcow2" "$W/chain$l.qcow2"
    qemu-io -f qcow2 -c "write -P $((l % 250 + 2)) $((l * 16))M 4k" "$W/chain$l.qcow2" >/dev/null
  done
  top="$W/chain$((depth - 1)).qcow2"
  t0=$(now); qemu-img bench -f qcow2 -c 100000 -s 4k -S 9k "$top" >/dev/null; t1=$(now)
  t=$(python3 -c "print('%.3f' % ($t1-$t0))")
  [ -z "$q1" ] && q1=$t
  printf "%6d %10s %7sx\n" $depth $t "$(ratio $t $q1)"
done

nbd_reads() {
echo
echo "== reads over NBD (MiB/s, IOPS; ${SECS}s each, queue depth 8)"
if [ ! -x "$NBDREAD" ]; then echo "obd_nbd_read not built (libnbd-dev missing)"; return 0; fi
"$UDM" daemon --socket "$W/ctl" --nbd-unix "$W/udm.nbd" > "$W/daemon.log" 2>&1 &
PIDS+=($!)
for i in $(seq 100); do [ -S "$W/ctl" ] && [ -S "$W/udm.nbd" ] && break; sleep 0.1; done
if [ ! -S "$W/udm.nbd" ]; then
  echo "udm daemon NBD export unavailable (see daemon log):"; tail -3 "$W/daemon.log"; return 0
fi
SECT=$(( RAW / 512 ))
"$UDM" create obdlz4 --socket "$W/ctl" --table "0 $SECT lsmt $W/udm.lz4.4.zfile"
"$UDM" create obdzstd --socket "$W/ctl" --table "0 $SECT lsmt $W/udm.zstd.64.zfile"
qemu-nbd -r -t -f qcow2 -k "$W/q.zstd.sock" "$W/q.zstd.qcow2" & PIDS+=($!)
qemu-nbd -r -t -f qcow2 -k "$W/q.zlib.sock" "$W/q.zlib.qcow2" & PIDS+=($!)
for i in $(seq 100); do [ -S "$W/q.zstd.sock" ] && [ -S "$W/q.zlib.sock" ] && break; sleep 0.1; done
ROUNDS=${ROUNDS:-3}
echo "(each figure: median of $ROUNDS interleaved runs; the machine is shared, single runs vary)"
declare -A R IO
for pat in rand4k seq1m; do
  declare -A runs=() ioruns=()
  for round in $(seq $ROUNDS); do
    for who in udm-lz4-4K udm-zstd-64K qemu-nbd-zstd qemu-nbd-zlib; do
      case $who in
        udm-lz4-4K) uri="nbd+unix:///obdlz4?socket=$W/udm.nbd" ;;
        udm-zstd-64K) uri="nbd+unix:///obdzstd?socket=$W/udm.nbd" ;;
        qemu-nbd-zstd) uri="nbd+unix:///?socket=$W/q.zstd.sock" ;;
        qemu-nbd-zlib) uri="nbd+unix:///?socket=$W/q.zlib.sock" ;;
      esac
      line=$("$NBDREAD" "$uri" $pat "$SECS" 8)
      runs[$who]="${runs[$who]:-} $(echo "$line" | awk '{print $2}')"
      ioruns[$who]="${ioruns[$who]:-} $(echo "$line" | awk '{print $3}')"
    done
  done
  for who in udm-lz4-4K udm-zstd-64K qemu-nbd-zstd qemu-nbd-zlib; do
    R[$who.$pat]=$(echo ${runs[$who]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    IO[$who.$pat]=$(echo ${ioruns[$who]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    printf "%-14s %-7s %10s MiB/s %10s IOPS   (runs:%s)\n" "$who" "$pat" "${R[$who.$pat]}" "${IO[$who.$pat]}" "${runs[$who]}"
  done
  echo "  $pat ratio: udm-zstd-64K / qemu-nbd-zstd = $(ratio ${R[udm-zstd-64K.$pat]} ${R[qemu-nbd-zstd.$pat]})x; udm-lz4-4K / qemu-nbd-zstd = $(ratio ${R[udm-lz4-4K.$pat]} ${R[qemu-nbd-zstd.$pat]})x; udm-lz4-4K / qemu-nbd-zlib = $(ratio ${R[udm-lz4-4K.$pat]} ${R[qemu-nbd-zlib.$pat]})x"
  unset runs ioruns
done
}
nbd_reads
