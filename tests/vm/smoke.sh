#!/bin/bash
# Smoke test of the lab: for an xfs and an ext4 devicemapper dockerd, start
# it, import the busybox image, run a container, show what the agent will
# see (docker info, dmsetup), write 500 MB, stop. Then both dockerds at once.
# Run on the host: tests/vm/boot.sh tests/vm/smoke.sh
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

lab_init

one_fs() {
    local fs=$1 t0 out mbs
    echo "===== $fs ====="
    dockerd_start "$fs" "$fs" || { fail "dockerd-$fs" "did not start"; return; }
    pass "dockerd-$fs"

    t0=$(lab_now)
    if image_import; then pass "import-$fs"; else fail "import-$fs" "docker import failed"; fi
    lab_time "import-$fs" "$t0"

    # What Roomy's agent relies on: pool name, deferred removal/deletion.
    D info 2>/dev/null | grep -E 'Storage Driver|Pool Name|Base Device Size|Backing Filesystem|Data file:|Metadata file:|Data Space|Deferred|Udev|Library Version' || true

    t0=$(lab_now)
    if D run -d --name c1 roomy/busybox sleep 1d >/dev/null; then
        pass "run-$fs"
    else
        fail "run-$fs" "docker run failed"
        tail -n 20 "$LAB/$fs/dockerd.log"
        dockerd_stop "$fs"
        return
    fi
    lab_time "run-$fs" "$t0"

    D exec c1 df -k /
    # -P: one line per filesystem (the long /dev/mapper name wraps otherwise).
    out=$(D exec c1 df -kP /) || true
    # dm.basesize=2G: the root filesystem is about 2 GiB.
    if awk 'NR==2 && $2 > 1900000 && $2 < 2200000 { ok=1 } END { exit !ok }' <<<"$out"; then
        pass "df-$fs"
    else
        fail "df-$fs" "root is not ~2G"
    fi
    D exec c1 grep ' / ' /proc/mounts || true
    echo "--- dmsetup ls"; dmsetup ls
    echo "--- dmsetup table"; dmsetup table

    t0=$(lab_now)
    if D exec c1 dd if=/dev/zero of=/big bs=1M count=500 conv=fsync 2>&1 | tail -n 1; then
        pass "dd-$fs"
    else
        fail "dd-$fs" "dd in container failed"
    fi
    lab_time "dd-$fs" "$t0"
    mbs=$(awk -v a="$t0" -v b="$(lab_now)" 'BEGIN { printf "%.1f", 500 / (b - a) }')
    echo "dd-$fs: 500 MB at ${mbs} MB/s (wall clock, incl. docker exec)"
    D exec c1 df -k /

    t0=$(lab_now)
    dockerd_stop "$fs"
    lab_time "dockerd-stop-$fs" "$t0"
    if [[ -S $LAB/$fs/docker.sock ]] && D info >/dev/null 2>&1; then
        fail "stop-$fs" "dockerd still answers"
    else
        pass "stop-$fs"
    fi
    echo "--- dmsetup ls after stop"; dmsetup ls
}

one_fs xfs
one_fs ext4

# Two dockerds at the same time (separate data/exec roots, containerds, pools).
echo "===== both at once ====="
if dockerd_start xfs xfs && dockerd_start ext4 ext4; then
    ok=1
    for n in xfs ext4; do
        dockerd_use "$n"
        D start c1 >/dev/null || ok=0
        D exec c1 true || ok=0
    done
    dmsetup ls | grep -c -- '-pool' || true
    if [[ $ok == 1 ]]; then pass both-at-once; else fail both-at-once "container start/exec failed"; fi
    dockerd_stop xfs
    dockerd_stop ext4
else
    fail both-at-once "second dockerd did not start"
fi

check_dmesg
lab_time total-script "$LAB_T_SCRIPT"
summary
