#!/bin/bash
# Resize benchmark (runs inside the VM; started by scripts/bench.sh): how long
# one online grow of a running container takes with roomy-agent versus the
# plain dmsetup/xfs_growfs recipe users script today, and how long a writer
# inside the container is stalled while roomy grows its disk.
#
# Env: ROOMY_BIN (dir with roomy-agent and roomyctl), ROOMY_BENCH_N (timed
# resizes per method, default 20), ROOMY_BENCH_STALL_N (resizes during the
# write-stall measurement, default 10). Results: stdout and
# $ROOMY_VM_OUT/bench.txt.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
# shellcheck source=lib.sh
. ./lib.sh

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding roomy-agent and roomyctl}
NAME=bench
N=${ROOMY_BENCH_N:-20}
S=${ROOMY_BENCH_STALL_N:-10}
STEP_MIB=256
GiB=$((1 << 30))
MiB=$((1 << 20))
RES=$LAB/bench-results
CTL=("$BIN/roomyctl" --agent "unix://$LAB/$NAME/agent.sock")

# --------------------------------------------------------------- the methods

roomy_resize() { "${CTL[@]}" resize "$1" "+${STEP_MIB}M" >/dev/null; }

# The known recipe (DESIGN.md), one process per step, as users script it.
recipe_resize() {
    local c=$1 dev mnt
    local -a t
    dev=$(/usr/bin/docker inspect -f '{{ .GraphDriver.Data.DeviceName }}' "$c") || return 1
    # "0 <sectors> thin <pool major:minor> <device id>"
    read -r -a t <<<"$(dmsetup table "$dev")" || return 1
    [[ ${t[2]:-} == thin ]] || return 1
    echo "0 $((t[1] + STEP_MIB * 2048)) thin ${t[3]} ${t[4]}" | dmsetup load "$dev" || return 1
    dmsetup resume "$dev" || return 1
    mnt=$(awk -v d="/dev/mapper/$dev" '$1 == d { print $2; exit }' /proc/mounts)
    [[ -n $mnt ]] || return 1
    xfs_growfs -d "$mnt" >/dev/null
}

# ------------------------------------------------------------------ numbers

# ------------------------------------------------------------- write stalls
# A writer inside the container (busybox sh): 1 MiB to /w with fsync, then
# the time of day in us from busybox `adjtimex` (busybox `date` has no %N).
# Its output is the completion time of each write, on the same clock as
# $EPOCHREALTIME here. A stall is the gap between two consecutive completions.

writer_start() { # CONTAINER LOG
    D exec "$1" rm -f /stop
    D exec "$1" sh -c 'while [ ! -e /stop ]; do
            dd if=/dev/zero of=/w bs=64k count=16 conv=fsync 2>/dev/null
            adjtimex
        done | grep tv_' >"$2.raw" &
    WRITER_PID=$!
}

writer_stop() { # CONTAINER LOG
    D exec "$1" touch /stop
    wait "$WRITER_PID"
    awk '/tv_sec/ { s = $2 } /tv_usec/ { printf "%.0f\n", s * 1000000 + $2 }' "$2.raw" >"$2"
}

# gap LOG FROM TO: "longest-gap-ms writes" for the window [FROM, TO] (us);
# a gap counts if it overlaps the window.
gap() {
    awk -v a="$2" -v b="$3" '
        NR > 1 && $1 > a + 0 && p < b + 0 { g = $1 - p; if (g > m) m = g }
        $1 >= a + 0 && $1 <= b + 0 { n++ }
        { p = $1 }
        END { printf "%.1f %d\n", m / 1000, n }' "$1"
}

# stall_phase CONTAINER METHOD: writer on; S resizes by METHOD (window R);
# 1 s pause; an equally long window with no resize (baseline B); writer off.
# Sets STALL_R / STALL_B to "gap-ms writes".
stall_phase() {
    local c=$1 method=$2 log=$RES/writer-$1 a b c0 i
    writer_start "$c" "$log"
    sleep 3 # writer running steadily before the window opens
    a=$(now_us)
    for ((i = 0; i < S; i++)); do
        timed "$RES/$method-stall" "${method}_resize" "$c"
    done
    b=$(now_us)
    sleep 1
    c0=$(now_us)
    sleep "$(awk -v d=$((b - a)) 'BEGIN { printf "%.3f", d / 1e6 }')"
    writer_stop "$c" "$log"
    STALL_R=$(gap "$log" "$a" "$b")
    STALL_B=$(gap "$log" "$c0" $((c0 + b - a)))
    echo "$method window $(((b - a) / 1000)) ms: $STALL_R; baseline: $STALL_B" >&2
}

# ------------------------------------------------------------------- checks

# Sizes with %.0f: mawk's %d stops at 2^31 - 1.
dev_of() { D inspect -f '{{.GraphDriver.Data.DeviceName}}' "$1"; }
table_bytes() { dmsetup table "$(dev_of "$1")" | awk '{ printf "%.0f\n", $2 * 512 }'; }
df_bytes() { D exec "$1" df -kP / | awk 'NR == 2 { printf "%.0f\n", $2 * 1024 }'; }
# xfs df shows the filesystem less its log: within 5% below.
df_near() { [[ $1 -le $2 && $1 -ge $(($2 * 95 / 100)) ]]; }
no_stray_dm_state() {
    ! dmsetup info -c --noheadings -o name,attr | awk '$2 ~ /s/ || $2 ~ /i$/ { print; bad = 1 } END { exit !bad }'
}

# --------------------------------------------------------------------- main

t_bench=$(lab_now)
lab_init || exit 1
dockerd_start bench xfs || exit 1
image_import
# shellcheck disable=SC2119 # no extra env for the agent
agent_start || exit 1
rm -rf "$RES"
mkdir -p "$RES"

D run -d --name roomy-c roomy/busybox sleep 1d >/dev/null || exit 1
D run -d --name recipe-c roomy/busybox sleep 1d >/dev/null || exit 1

# One untimed resize each first: the guest's root filesystem is the host's,
# shared over 9p/virtiofs, so the first exec of every binary reads it cold.
roomy_resize roomy-c || fail "warm-up roomy" "roomyctl resize failed"
recipe_resize recipe-c || fail "warm-up recipe" "recipe failed"

# What starting the CLI costs by itself (no RPC).
for ((i = 0; i < N; i++)); do
    timed "$RES/cli-start" "$BIN/roomyctl" --version >/dev/null
done

# The timed resizes, interleaved so any drift in the machine hits both.
for ((i = 0; i < N; i++)); do
    timed "$RES/roomy" roomy_resize roomy-c
    timed "$RES/recipe" recipe_resize recipe-c
done

stall_phase roomy-c roomy
roomy_stall=$STALL_R roomy_base=$STALL_B
stall_phase recipe-c recipe
recipe_stall=$STALL_R recipe_base=$STALL_B

read -r rn rmed rp95 rmin rmax < <(stats "$RES/roomy")
read -r pn pmed pp95 pmin pmax < <(stats "$RES/recipe")
read -r cn cmed cp95 cmin cmax < <(stats "$RES/cli-start")

{
    echo "Resize benchmark: running containers, each resize +${STEP_MIB} MiB online;"
    echo "dockerd 20.10 devicemapper (loop-lvm) + xfs, Debian 6.1 kernel in QEMU TCG (no KVM), $(nproc) vCPUs."
    echo "Wall time of each whole resize (process start to exit), one warm-up each not counted."
    echo "All binaries are read over 9p from the host and run under emulation: compare the"
    echo "methods with each other, not the absolute times with real hardware."
    echo
    printf '%-40s %4s %9s %9s %9s %9s\n' "wall time per resize (ms)" n median p95 min max
    printf '%-40s %4s %9s %9s %9s %9s\n' "roomyctl resize (1 process, gRPC)" "$rn" "$rmed" "$rp95" "$rmin" "$rmax"
    printf '%-40s %4s %9s %9s %9s %9s\n' "plain recipe (6 processes)" "$pn" "$pmed" "$pp95" "$pmin" "$pmax"
    printf '%-40s %4s %9s %9s %9s %9s\n' "CLI start alone (roomyctl --version)" "$cn" "$cmed" "$cp95" "$cmin" "$cmax"
    echo
    echo "ratio recipe/roomy: median $(ratio "$pmed" "$rmed"), p95 $(ratio "$pp95" "$rp95")"
    echo
    echo "Write stall: a busybox sh loop inside the container writes 1 MiB to /w"
    echo "(dd conv=fsync) and records each completion time (adjtimex, us). Longest"
    echo "gap between two completions, during $S back-to-back resizes vs. an equally"
    echo "long window right after with no resize:"
    printf '%-40s %16s %16s\n' "longest gap ms (writes in window)" "during resizes" "baseline"
    read -r g1 n1 <<<"$roomy_stall"
    read -r g2 n2 <<<"$roomy_base"
    printf '%-40s %16s %16s\n' "roomyctl resize" "$g1 ($n1)" "$g2 ($n2)"
    read -r g1 n1 <<<"$recipe_stall"
    read -r g2 n2 <<<"$recipe_base"
    printf '%-40s %16s %16s\n' "plain recipe" "$g1 ($n1)" "$g2 ($n2)"
} | tee "$ROOMY_VM_OUT/bench.txt"
cp "$RES"/* "$ROOMY_VM_OUT/" 2>/dev/null

# ---------------------------------------------------------- sanity checks
echo
check "every timed resize exited 0 ($BENCH_FAILS failed)" test "$BENCH_FAILS" -eq 0
check "roomy: $N timed resizes recorded" test "$rn" -eq "$N"
check "recipe: $N timed resizes recorded" test "$pn" -eq "$N"
want=$((2 * GiB + (1 + N + S) * STEP_MIB * MiB))
for c in roomy-c recipe-c; do
    check "$c table is $((want / MiB)) MiB" test "$(table_bytes "$c")" -eq "$want"
    got=$(df_bytes "$c")
    check "$c df shows ~$((want / MiB)) MiB (got $((got / MiB)))" df_near "$got" "$want"
done
few=0
for s in "$roomy_stall" "$roomy_base" "$recipe_stall" "$recipe_base"; do
    read -r _ n <<<"$s"
    [[ ${n:-0} -ge 2 ]] || few=1
done
check "writer completed writes in every window" test "$few" -eq 0
check "no suspended devices or staged tables" no_stray_dm_state
check_dmesg

agent_stop
cp "$LAB/$NAME/agent.log" "$ROOMY_VM_OUT/agent.log" 2>/dev/null
dockerd_stop bench >/dev/null
lab_time bench-total "$t_bench"
summary
