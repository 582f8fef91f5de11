#!/bin/bash
# Auto-grow benchmark (runs inside the VM; started by scripts/bench-policy.sh):
#  1. latency from a threshold crossing to the filesystem grown, over
#     repeats: a file is fallocate'd into a 1G container's filesystem from
#     the host side (the crossing is instant), then the host polls statvfs
#     every 5 ms until the filesystem is larger;
#  2. the highest fill rate a policy sustains without ENOSPC: a writer
#     inside a 1G container writes 3G as fast as it can (the fastest this
#     VM can write), under the default policy (rate-aware, 20 s horizon) and
#     under a threshold-only one (horizon 0), several times each.
# Env: ROOMY_BIN, ROOMY_BENCH_N (latency repeats, default 15),
# ROOMY_BENCH_FILL_N (writer runs per policy, default 3).
# Results: stdout and $ROOMY_VM_OUT/bench-policy.txt.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
# shellcheck source=lib.sh
. ./lib.sh

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding the roomy binaries}
NAME=bench
N=${ROOMY_BENCH_N:-15}
F=${ROOMY_BENCH_FILL_N:-3}
GiB=$((1 << 30))
REPORT=$ROOMY_VM_OUT/bench-policy.txt
now_us() { local t=${EPOCHREALTIME//[.,]/}; echo "$t"; }
say() { echo "$*" | tee -a "$REPORT"; }

lab_init || exit 1
# As in the a1 scenario: dirty memory capped at ~1 s of this emulated disk.
sysctl -q -w vm.dirty_bytes=$((48 << 20)) vm.dirty_background_bytes=$((16 << 20))
ROOMY_BASESIZE=1G dockerd_start bench xfs || exit 1
image_import
controller_lab bench || exit 1

mount_of() { findmnt -n -o TARGET "/dev/mapper/$(D inspect -f '{{.GraphDriver.Data.DeviceName}}' "$1")" | head -1; }
fs_blocks() { stat -f -c %b "$1"; }
percentile() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p/100+0.5)+1; print a[i]}'; }

say "== threshold crossing -> filesystem grown (policy: 50% at 80%, horizon off), n=$N"
C policy set lat --containers 'lat*' --at 80% --grow 50% --max 8G --horizon 0 --cooldown 0
[[ $RC -eq 0 ]] || { say "policy set failed: $OUT"; exit 1; }
sleep 3
: >"$LAB/lat"
for i in $(seq "$N"); do
    D run -d --name "lat$i" roomy/busybox sleep 1d >/dev/null
    mp=$(mount_of "lat$i")
    before=$(fs_blocks "$mp")
    # 880 MiB of a 1G filesystem (~960 MiB usable): past 80% at once.
    fallocate -l 880M "$mp/rootfs/fill"
    t0=$(now_us)
    while [[ $(fs_blocks "$mp") -eq $before ]]; do
        sleep 0.005
        (($(now_us) - t0 > 60000000)) && break
    done
    t1=$(now_us)
    echo $(((t1 - t0) / 1000)) >>"$LAB/lat"
    D rm -f "lat$i" >/dev/null
done
C policy rm lat
say "  per run (ms): $(tr '\n' ' ' <"$LAB/lat")"
say "  median $(percentile 50 <"$LAB/lat") ms, p99 $(percentile 99 <"$LAB/lat") ms, max $(sort -n "$LAB/lat" | tail -1) ms"

say "== highest fill rate without ENOSPC: a writer writes 3 GiB into a 1 GiB container, cap 8 GiB"
run_fill() { # POLICY-NAME EXTRA-POLICY-ARGS...
    local name=$1 c t0 t1 rc err used
    shift
    C policy set "$name" --containers "fill*" --at 80% --grow 50% --max 8G "$@"
    sleep 3
    for i in $(seq "$F"); do
        c=fill$i
        D run -d --name "$c" roomy/busybox sleep 1d >/dev/null
        t0=$(now_us)
        D exec "$c" sh -c 'dd if=/dev/zero of=/f bs=1M count=3072 2>/err; echo $? >/rc'
        t1=$(now_us)
        rc=$(D exec "$c" cat /rc)
        err=$(D exec "$c" grep -ci 'no space' /err)
        used=$(D exec "$c" du -m /f | cut -f1)
        say "  $name run $i: wrote ${used} MiB at $((used * 1000000 / (t1 - t0))) MiB/s, dd exit $rc, ENOSPC $([[ $err -gt 0 ]] && echo yes || echo no)"
        D rm -f "$c" >/dev/null
    done
    C policy rm "$name"
}
run_fill default
run_fill threshold-only --horizon 0 --cooldown 0
C events --limit 500 -o json
grep '"kind":"grown"' <<<"$OUT" | grep -o '"duration_ms":[0-9]*' | cut -d: -f2 >"$LAB/grow-ms"
say "== agent: decision -> grow done (event duration_ms), n=$(wc -l <"$LAB/grow-ms")"
say "  median $(percentile 50 <"$LAB/grow-ms") ms, p99 $(percentile 99 <"$LAB/grow-ms") ms"
grep -o 'device_ms=[0-9]* fs_ms=[0-9]*' "$LAB/$NAME/agent.log" | head -40 >"$ROOMY_VM_OUT/grow-steps.txt"
cp "$LAB/$NAME/agent.log" "$ROOMY_VM_OUT/agent-bench.log"
echo "bench-policy: done" >&2
