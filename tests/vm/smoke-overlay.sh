#!/bin/bash
# overlay2 on an XFS data root mounted prjquota (F11), in whichever root
# boot.sh booted: Docker 20.10 over the host's Debian 12 root, Docker 26
# over the trixie root. Creates a container with --storage-opt size=1G,
# checks df, finds the layer's project id, raises it to 3 GiB with
# xfs_quota, checks df again and writes 1.5 GB.
#   tests/vm/boot.sh tests/vm/smoke-overlay.sh
#   ROOMY_VM_ROOT=$(tests/vm/trixie-root.sh) tests/vm/boot.sh tests/vm/smoke-overlay.sh
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

lab_init
echo "kernel $(uname -r); $(/usr/sbin/dockerd --version)"

if mnt=$(xfs_quota_root ov 8G); then
    pass "xfs-prjquota-root"
    xfs_quota -x -c 'state -p' "$mnt" | grep -E 'Accounting|Enforcement' || true
else
    fail "xfs-prjquota-root" "could not make the XFS prjquota data root"
    summary
    exit 1
fi

if dockerd_launch ov --storage-driver overlay2; then
    pass "dockerd-overlay2"
    D info --format 'Driver {{.Driver}} DriverStatus {{json .DriverStatus}}'
    if image_import; then pass import; else fail import "docker import failed"; fi
    overlay_quota_check ov q1 || true
    echo "project id of q1's layer: ${PROJID:-none}"
    dockerd_stop ov
else
    fail "dockerd-overlay2" "did not start"
fi
check_dmesg
# summary's grep -c exits 1 on zero FAILs: not under set -e.
set +e
summary
