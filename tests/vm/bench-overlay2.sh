#!/bin/bash
# overlay2 resize benchmark (runs inside the VM; started by scripts/bench.sh):
# one online grow of a running container created with --storage-opt size=,
# with roomyctl versus the by-hand way (find the layer's project id with
# `xfs_io -c lsproj`, raise it with `xfs_quota -x -c 'limit -p ...'`), in the
# same run, interleaved. Prints n, median, p95, min, max and the ratio.
#
# Env: ROOMY_BIN (dir with roomy-agent and roomyctl), ROOMY_BENCH_N (timed
# resizes per method, default 20). Results: stdout and
# $ROOMY_VM_OUT/bench-overlay2.txt.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
# shellcheck source=lib.sh
. ./lib.sh

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding roomy-agent and roomyctl}
NAME=benchov
N=${ROOMY_BENCH_N:-20}
STEP_MIB=256
MiB=$((1 << 20))
RES=$LAB/bench-ov-results
CTL=("$BIN/roomyctl" --agent "unix://$LAB/$NAME/agent.sock")

roomy_resize() { "${CTL[@]}" resize "$1" "+${STEP_MIB}M" >/dev/null; }

# By hand, as operators do it today: docker inspect for the layer, lsproj
# for its id, the current limit from the report, the new one set.
by_hand_resize() {
    local c=$1 upper id kib mnt=$LAB/$NAME/root
    upper=$(/usr/bin/docker inspect -f '{{.GraphDriver.Data.UpperDir}}' "$c") || return 1
    id=$(xfs_io -r -c lsproj "$(dirname "$upper")" | sed -n 's/^projid = //p')
    [[ -n $id ]] || return 1
    kib=$(xfs_quota -x -c "report -p -b -N" "$mnt" | awk -v id="#$id" '$1 == id { printf "%.0f", $4 }')
    [[ -n $kib ]] || return 1
    kib=$((kib + STEP_MIB * 1024))
    xfs_quota -x -c "limit -p bsoft=${kib}k bhard=${kib}k $id" "$mnt"
}

df_bytes() { D exec "$1" df -kP / | awk 'NR == 2 { printf "%.0f\n", $2 * 1024 }'; }

lab_init || exit 1
xfs_quota_root "$NAME" 40G >/dev/null || exit 1
dockerd_launch "$NAME" --storage-driver overlay2 || exit 1
image_import
# shellcheck disable=SC2119 # no extra env for the agent
agent_start || exit 1
rm -rf "$RES"
mkdir -p "$RES"
D run -d --name roomy-c --storage-opt size=1G roomy/busybox sleep 1d >/dev/null || exit 1
D run -d --name hand-c --storage-opt size=1G roomy/busybox sleep 1d >/dev/null || exit 1

# One untimed resize each first: binaries come over 9p from the host, cold.
roomy_resize roomy-c
by_hand_resize hand-c >/dev/null
for ((i = 0; i < N; i++)); do
    timed "$RES/roomy" roomy_resize roomy-c
    timed "$RES/hand" by_hand_resize hand-c
done

read -r rn rmed rp95 rmin rmax < <(stats "$RES/roomy")
read -r hn hmed hp95 hmin hmax < <(stats "$RES/hand")
{
    echo "overlay2 resize benchmark: running containers (--storage-opt size=1G), each resize"
    echo "+${STEP_MIB} MiB online; dockerd $(/usr/sbin/dockerd --version | awk '{print $3}' | tr -d ,) overlay2 on XFS prjquota,"
    echo "kernel $(uname -r) in QEMU TCG (no KVM). Wall time of each whole resize, one warm-up not counted."
    echo
    printf '%-48s %4s %9s %9s %9s %9s\n' "wall time per resize (ms)" n median p95 min max
    printf '%-48s %4s %9s %9s %9s %9s\n' "roomyctl resize (1 process, gRPC)" "$rn" "$rmed" "$rp95" "$rmin" "$rmax"
    printf '%-48s %4s %9s %9s %9s %9s\n' "by hand (docker inspect, xfs_io, 2x xfs_quota)" "$hn" "$hmed" "$hp95" "$hmin" "$hmax"
    echo
    echo "ratio by-hand/roomy: median $(ratio "$hmed" "$rmed"), p95 $(ratio "$hp95" "$rp95")"
} | tee "$ROOMY_VM_OUT/bench-overlay2.txt"

want=$(((1 << 30) + (1 + N) * STEP_MIB * MiB))
check_df() {
    local got
    got=$(df_bytes "$1")
    if [[ $got -le $want && $got -ge $((want * 97 / 100)) ]]; then
        pass "$1 df shows ~$((want / MiB)) MiB"
    else
        fail "$1 df" "shows $((got / MiB)) MiB, want ~$((want / MiB))"
    fi
}
if [[ $BENCH_FAILS -eq 0 ]]; then pass "every timed resize exited 0"; else fail "timed resizes" "$BENCH_FAILS failed"; fi
check_df roomy-c
check_df hand-c
agent_stop
dockerd_stop "$NAME" >/dev/null
summary
