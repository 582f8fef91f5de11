#!/bin/bash
# Auto-grow benchmark (runs inside the VM; started by scripts/bench-policy.sh):
#  0. a direct-lvm thin pool (Docker's recipe) under a container writing at
#     full speed, grown by (a) lvm2's own answer, dmeventd's thin plugin
#     with thin_pool_autoextend_threshold 80 / _percent 20, and (b) a Roomy
#     pool policy with the same threshold and step, then (c) Roomy's default
#     rate-aware policy: per growth, the time from the pool seen past 80% to
#     the pool grown, the time the pool sat full, and the writer's errors.
#     A poller reads `dmsetup status` of the pool in a loop (one fork each,
#     about 10-40 ms apart under TCG, the resolution of these figures);
#  1. latency from a threshold crossing to the filesystem grown, over
#     repeats: a file is fallocate'd into a 1G container's filesystem from
#     the host side (the crossing is instant), then the host polls statvfs
#     every 5 ms until the filesystem is larger;
#  2. the highest fill rate a policy sustains without ENOSPC: a writer
#     inside a container writes 3G as fast as it can (the fastest this VM
#     can write), starting from 1G and from 512M, under the default policy
#     (rate-aware, 20 s horizon) and under a threshold-only one (horizon 0).
# Env: ROOMY_BIN, ROOMY_BENCH_N (latency repeats, default 15),
# ROOMY_BENCH_FILL_N (writer runs per policy and size, default 2),
# ROOMY_BENCH_ONLY=pool|container (one part), ROOMY_BASE_BIN (an older
# agent: part 1 runs under it too, before this one).
# Results: stdout and $ROOMY_VM_OUT/bench-policy.txt.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
# shellcheck source=lib.sh
. ./lib.sh

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding the roomy binaries}
NAME=bench
N=${ROOMY_BENCH_N:-15}
F=${ROOMY_BENCH_FILL_N:-2}
ONLY=${ROOMY_BENCH_ONLY:-}
GiB=$((1 << 30))
REPORT=$ROOMY_VM_OUT/bench-policy.txt

lab_init || exit 1
# As in the a1 scenario: dirty memory capped at ~1 s of this emulated disk.
sysctl -q -w vm.dirty_bytes=$((48 << 20)) vm.dirty_background_bytes=$((16 << 20))

mount_of() { findmnt -n -o TARGET "/dev/mapper/$(D inspect -f '{{.GraphDriver.Data.DeviceName}}' "$1")" | head -1; }
fs_blocks() { stat -f -c %b "$1"; }
summary() { echo "median $(percentile 50 <"$1") ms, p99 $(percentile 99 <"$1") ms, max $(sort -n "$1" | tail -1) ms (n=$(wc -l <"$1"))"; }

# ------------------------------------------------------ 0. the thin pool
POOL_DATA=1G POOL_WRITE=2400
# lvm2 reads its settings from LVM_SYSTEM_DIR: a copy of /etc/lvm with the
# autoextend settings of Docker's direct-lvm docs in lvmlocal.conf, so that
# the VM's (the host's) /etc stays as it is.
lvm_settings() { # MONITORING(0|1)
    export LVM_SYSTEM_DIR=$LAB/lvm-etc
    rm -rf "$LVM_SYSTEM_DIR"
    cp -a /etc/lvm "$LVM_SYSTEM_DIR"
    printf 'local {\n}\nactivation {\n\tmonitoring = %d\n\tthin_pool_autoextend_threshold = 80\n\tthin_pool_autoextend_percent = 20\n}\n' \
        "$1" >"$LVM_SYSTEM_DIR/lvmlocal.conf"
}
# The pool's dm device: LVM stacks docker-thinpool on docker-thinpool-tpool
# once it holds thin LVs of its own; Docker's thin devices are not LVs.
pool_dev() {
    local n
    for n in docker-thinpool-tpool docker-thinpool; do
        dmsetup status "$n" 2>/dev/null | grep -q ' thin-pool ' && { echo "$n"; return; }
    done
}
# Timestamped `dmsetup status` lines until $LAB/poll.stop appears.
pool_poll() { # DEV OUT
    while [[ ! -e $LAB/poll.stop ]]; do
        echo "$(now_us) $(dmsetup status "$1" 2>/dev/null)"
    done >"$2"
}
# From a poll log: one line per growth with the ms from the pool first seen
# at or past 80% of its size to a larger size; "full MS" for the time the
# pool sat with no free data block (writes queued); "growths N" in all,
# "ahead N" of them before the pool was seen at 80% (rate-aware policies).
pool_report() { # POLL-LOG LAT-OUT
    awk -v lat="$2" '
        $4 != "thin-pool" { next }
        { split($7, d, "/"); used = d[1]; tot = d[2]; t = $1 / 1000 }
        tot0 == "" { tot0 = tot }
        tot > tot0 { n++; if (cross != "") printf "%d\n", t - cross >lat; else ahead++; cross = ""; tot0 = tot }
        used * 100 >= 80 * tot && cross == "" { cross = t }
        { if (prev != "" && (used >= tot || $9 == "out_of_data_space")) full += t - prev; prev = t }
        END { printf "full %d\ngrowths %d\nahead %d\n", full, n, ahead }' "$1"
}
pool_case() { # LABEL dmeventd|roomy [POLICY-ARG...]
    local label=$1 how=$2 dev t0 t1 rc err poller
    shift 2
    NAME=pool-$label
    : >"$LAB/$label.lat"
    lvm_settings "$([[ $how == dmeventd ]] && echo 1 || echo 0)"
    if [[ $how == dmeventd ]]; then
        dmeventd -f >"$LAB/dmeventd-$label.log" 2>&1 &
        echo $! >"$LAB/dmeventd.pid"
        sleep 1
    fi
    lvm_pool_setup "$POOL_DATA" || { say "  $label: LVM pool setup failed"; return 1; }
    if [[ $how == dmeventd ]]; then
        lvchange --monitor y docker/thinpool >/dev/null
        say "  $label: lvm2 $(lvm version | awk '/LVM version/ {print $3}'), monitored: $(lvs --noheadings -o seg_monitor docker/thinpool | tr -d ' '), threshold $(lvmconfig --typeconfig full activation/thin_pool_autoextend_threshold | cut -d= -f2) percent $(lvmconfig --typeconfig full activation/thin_pool_autoextend_percent | cut -d= -f2)"
    fi
    ROOMY_BASESIZE=10G dockerd_start "$NAME" xfs --storage-opt dm.thinpooldev=/dev/mapper/docker-thinpool || return 1
    image_import
    controller_lab "$NAME" || return 1
    if [[ $how == roomy ]]; then
        C policy set pool20 --pool --at 80% --grow 20% --max 5G --cooldown 0 "$@"
        [[ $RC -eq 0 ]] || { say "  $label: policy set failed: $OUT"; return 1; }
        # The controller hands the set to the agent over its Sync stream.
        sleep 5
    fi
    dev=$(pool_dev)
    D run -d --name writer roomy/busybox sleep 1d >/dev/null
    rm -f "$LAB/poll.stop"
    pool_poll "$dev" "$LAB/$label.poll" &
    poller=$!
    t0=$(now_us)
    D exec writer sh -c "dd if=/dev/zero of=/f bs=1M count=$POOL_WRITE 2>/err; echo \$? >/rc; sync"
    t1=$(now_us)
    sleep 3
    touch "$LAB/poll.stop"
    wait "$poller"
    rc=$(D exec writer cat /rc)
    err=$(D exec writer grep -ci 'error\|no space' /err)
    pool_report "$LAB/$label.poll" "$LAB/$label.lat" >"$LAB/$label.sum"
    say "  $label: $(awk '/growths/ {print $2}' "$LAB/$label.sum") growths ($(awk '/ahead/ {print $2}' "$LAB/$label.sum") ahead of the threshold), threshold -> grown $(summary "$LAB/$label.lat")"
    say "  $label: writer ${POOL_WRITE} MiB at $((POOL_WRITE * 1000000 / (t1 - t0))) MiB/s, dd exit $rc, errors $err, pool full for $(awk '/full/ {print $2}' "$LAB/$label.sum") ms, polls $(wc -l <"$LAB/$label.poll")"
    cp "$LAB/$label.poll" "$ROOMY_VM_OUT/pool-$label.poll"
    if [[ $how == dmeventd ]]; then
        say "  $label: dmeventd RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$(<"$LAB/dmeventd.pid")/status")"
    fi
    if [[ $how == roomy ]]; then
        # The agent's own part per growth (lvextend and the reads around
        # it), and what an lvm shell it keeps holds open between commands
        # (nothing of the pool's: it must not pin a device).
        grep -o 'grow_ms=[0-9]*' "$LAB/$NAME/agent.log" | cut -d= -f2 >"$LAB/$label.grow"
        say "  $label: the agent's grow step (decision to pool grown) $(summary "$LAB/$label.grow"); lvm shell: $(for p in $(pgrep -x lvm); do echo "pid $p, RSS $(awk '/VmRSS/ {print $2, $3}' /proc/"$p"/status), holding $(find /proc/"$p"/fd -mindepth 1 -printf '%l ' 2>/dev/null)"; done)"
    fi
    D rm -f writer >/dev/null
    controller_stop
    agent_stop
    dockerd_stop "$NAME"
    cp "$LAB/$NAME/agent.log" "$ROOMY_VM_OUT/agent-$NAME.log" 2>/dev/null
    if [[ $how == dmeventd ]]; then
        lvchange --monitor n docker/thinpool >/dev/null 2>&1
        kill "$(<"$LAB/dmeventd.pid")" 2>/dev/null
        wait "$(<"$LAB/dmeventd.pid")" 2>/dev/null
    fi
    lvm_pool_teardown
    unset LVM_SYSTEM_DIR
}
if [[ -z $ONLY || $ONLY == pool ]]; then
    say "== thin pool, direct-lvm $POOL_DATA under a writer of $POOL_WRITE MiB at full speed: lvm2 dmeventd against a Roomy pool policy"
    pool_case dmeventd dmeventd
    pool_case roomy-same roomy --horizon 0
    # With ROOMY_BASE_BIN: the same case under an older agent, same VM.
    [[ -z ${ROOMY_BASE_BIN:-} ]] || AGENT_BIN=$ROOMY_BASE_BIN pool_case roomy-same-base roomy --horizon 0
    pool_case roomy-default roomy
    a=$(percentile 50 <"$LAB/dmeventd.lat") b=$(percentile 50 <"$LAB/roomy-same.lat")
    [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ && $b -gt 0 ]] &&
        say "  median threshold -> grown: dmeventd $a ms, Roomy (same threshold and step) $b ms: $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.1fx", a / b}')"
    c=$(percentile 50 <"$LAB/roomy-same-base.lat" 2>/dev/null)
    [[ -n ${ROOMY_BASE_BIN:-} && $c =~ ^[0-9]+$ && $b =~ ^[0-9]+$ && $b -gt 0 ]] &&
        say "  median threshold -> grown: baseline agent $c ms, this one $b ms: $(awk -v a="$c" -v b="$b" 'BEGIN {printf "%.1fx", a / b}')"
fi
[[ -z $ONLY || $ONLY == container ]] || { echo "bench-policy: done" >&2; exit 0; }

# ------------------------------------------------- 1-2. a container's disk
NAME=bench
# 512M as the base size, so that the 512 MiB runs below can exist; the
# others ask for 1G with --storage-opt size.
ROOMY_BASESIZE=512M dockerd_start bench xfs || exit 1
image_import
controller_lab bench || exit 1

# latency FILE: N crossings, each ms to grown appended to FILE.
latency() {
    local i mp before t0 t1
    : >"$1"
    for i in $(seq "$N"); do
        D run -d --name "lat$i" --storage-opt size=1G roomy/busybox sleep 1d >/dev/null
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
        echo $(((t1 - t0) / 1000)) >>"$1"
        D rm -f "lat$i" >/dev/null
    done
}
say "== threshold crossing -> filesystem grown (policy: 50% at 80%, horizon off), n=$N"
C policy set lat --containers 'lat*' --at 80% --grow 50% --max 8G --horizon 0 --cooldown 0
[[ $RC -eq 0 ]] || { say "policy set failed: $OUT"; exit 1; }
sleep 3
# With ROOMY_BASE_BIN: the same runs under an older agent first (it keeps
# the policy from the agent's state directory), then this one again.
if [[ -n ${ROOMY_BASE_BIN:-} ]]; then
    agent_stop
    BIN=$ROOMY_BASE_BIN agent_start || exit 1
    sleep 3
    latency "$LAB/lat-base"
    say "  baseline agent ($ROOMY_BASE_BIN): median $(percentile 50 <"$LAB/lat-base") ms, p99 $(percentile 99 <"$LAB/lat-base") ms, max $(sort -n "$LAB/lat-base" | tail -1) ms"
    agent_stop
    agent_start || exit 1
    sleep 3
fi
latency "$LAB/lat"
C policy rm lat
say "  per run (ms): $(tr '\n' ' ' <"$LAB/lat")"
say "  median $(percentile 50 <"$LAB/lat") ms, p99 $(percentile 99 <"$LAB/lat") ms, max $(sort -n "$LAB/lat" | tail -1) ms"
if [[ -n ${ROOMY_BASE_BIN:-} ]]; then
    say "  against the baseline: median $(awk -v a="$(percentile 50 <"$LAB/lat-base")" -v b="$(percentile 50 <"$LAB/lat")" 'BEGIN {printf "%.2f", a / b}')x, p99 $(awk -v a="$(percentile 99 <"$LAB/lat-base")" -v b="$(percentile 99 <"$LAB/lat")" 'BEGIN {printf "%.2f", a / b}')x faster"
fi

say "== highest fill rate without ENOSPC: a writer writes 3 GiB into a 1 GiB and a 512 MiB container, cap 8 GiB"
run_fill() { # POLICY-NAME EXTRA-POLICY-ARGS...
    local name=$1 c t0 t1 rc err used size
    shift
    C policy set "$name" --containers "fill*" --at 80% --grow 50% --max 8G "$@"
    sleep 3
    for size in 1G 512M; do
        for i in $(seq "$F"); do
            c=fill$i
            D run -d --name "$c" --storage-opt "size=$size" roomy/busybox sleep 1d >/dev/null
            t0=$(now_us)
            D exec "$c" sh -c 'dd if=/dev/zero of=/f bs=1M count=3072 2>/err; echo $? >/rc'
            t1=$(now_us)
            rc=$(D exec "$c" cat /rc)
            err=$(D exec "$c" grep -ci 'no space' /err)
            used=$(D exec "$c" du -m /f | cut -f1)
            say "  $name from $size run $i: wrote ${used} MiB at $((used * 1000000 / (t1 - t0))) MiB/s, dd exit $rc, ENOSPC $([[ $err -gt 0 ]] && echo yes || echo no)"
            D rm -f "$c" >/dev/null
        done
    done
    C policy rm "$name"
}
run_fill default
run_fill threshold-only --horizon 0 --cooldown 0
C events --limit 500 -o json
grep '"kind":"grown"' <<<"$OUT" | grep -o '"duration_ms":[0-9]*' | cut -d: -f2 >"$LAB/grow-ms"
say "== agent: decision -> grow done (event duration_ms), n=$(wc -l <"$LAB/grow-ms")"
say "  median $(percentile 50 <"$LAB/grow-ms") ms, p99 $(percentile 99 <"$LAB/grow-ms") ms"
# Where a growth's time goes, from the agent's per-step timings.
grep -o 'intent_ms=[0-9]* device_ms=[0-9]* fs_ms=[0-9]* metadata_ms=[0-9]* clear_ms=[0-9]*' "$LAB/$NAME/agent.log" >"$ROOMY_VM_OUT/grow-steps.txt"
steps=""
for k in intent device fs metadata clear; do
    grep -o "$k"'_ms=[0-9]*' "$ROOMY_VM_OUT/grow-steps.txt" | cut -d= -f2 >"$LAB/step-$k"
    steps+=" $k $(percentile 50 <"$LAB/step-$k")/$(percentile 99 <"$LAB/step-$k")"
done
say "  steps (median/p99 ms):$steps"
cp "$LAB/$NAME/agent.log" "$ROOMY_VM_OUT/agent-bench.log"
echo "bench-policy: done" >&2
