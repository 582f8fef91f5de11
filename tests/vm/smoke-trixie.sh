#!/bin/bash
# Smoke test of the Debian 13 root (kernel 6.12, Docker 26.1.5, containerd
# 1.7): host-built binaries run; overlay2 on an XFS prjquota data root honours
# --storage-opt size and a raised project quota grows a running container
# (F14); with Docker's containerd image store on, what docker info says and
# that --storage-opt size is ignored (F12).
#   ROOMY_VM_ROOT=$(tests/vm/trixie-root.sh) ROOMY_BIN=target/release \
#       tests/vm/boot.sh tests/vm/smoke-trixie.sh
# docker info --format '{{json .}}' of each daemon lands in
# $ROOMY_VM_OUT/info-*.json.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

lab_init
echo "kernel $(uname -r); $(grep PRETTY_NAME /etc/os-release)"
echo "$(/usr/sbin/dockerd --version); $(/usr/bin/docker --version)"
echo "$(/usr/bin/containerd --version); $(/usr/sbin/runc --version | head -n 1); $(xfs_quota -V)"

# ---------------------------------------------------------- host binaries
if [[ -n ${ROOMY_BIN:-} ]]; then
    for b in roomyctl roomy-agent roomy-controller; do
        [[ -x $ROOMY_BIN/$b ]] || continue
        if out=$("$ROOMY_BIN/$b" --help 2>&1); then
            pass "host-binary-$b"
            head -n 3 <<<"$out"
        else
            fail "host-binary-$b" "$b --help failed: $(head -n 3 <<<"$out")"
            ldd "$ROOMY_BIN/$b" 2>&1 | grep -i 'not found' || true
        fi
    done
fi

# info_show NAME: the storage part of docker info, and all of it to a file.
info_show() {
    D info --format '{{json .}}' >"$ROOMY_VM_OUT/info-$1.json" 2>/dev/null || true
    echo "--- docker info ($1): Driver {{.Driver}}, DriverStatus {{json .DriverStatus}}"
    D info --format '{{.Driver}} {{json .DriverStatus}}' || true
    D info 2>/dev/null | grep -A6 -E '^ *Storage Driver' || true
}

# ------------------------------------------- overlay2 (graph driver) store
if mnt=$(xfs_quota_root ov 8G); then
    pass "xfs-prjquota-root"
else
    fail "xfs-prjquota-root" "could not make the XFS prjquota data root"
fi
if [[ -n ${mnt:-} ]] && dockerd_launch ov --storage-driver overlay2; then
    pass "dockerd-overlay2"
    info_show off
    if image_import; then pass import-ov; else fail import-ov "docker import failed"; fi
    overlay_quota_check ov q1 || true
    echo "project id of q1's layer: ${PROJID:-none}"
    dockerd_stop ov
else
    fail "dockerd-overlay2" "did not start"
fi

# ------------------------------------------------ containerd image store
# One XFS prjquota filesystem for all of dockerd cs (data root and its
# containerd's root, where the snapshots live): quotas would be possible,
# so an ignored size= is Docker's doing, not the filesystem's.
echo "--- dockerd --help, feature flags:"
/usr/sbin/dockerd --help 2>&1 | grep -i -E 'feature|snapshotter' || echo "(none)"
cs_cfg=$LAB/cs-daemon.json
echo '{"features": {"containerd-snapshotter": true}}' >"$cs_cfg"

# cs_run_check LABEL: a size=1G container s-LABEL on dockerd cs; passes when
# the size is silently ignored (docker run succeeds, df shows the whole fs).
cs_run_check() {
    local l=$1 c=s-$1 out fs_mb mb dir
    if ! out=$(D run -d --name "$c" --storage-opt size=1G roomy/busybox sleep 1d 2>&1); then
        fail "cs-$l-run" "docker run --storage-opt size=1G failed: $out"
        return 1
    fi
    pass "cs-$l-run"
    echo "docker run output: $out"
    D exec "$c" df -m / || true
    mb=$(D exec "$c" df -mP / | awk 'NR == 2 { print $2 }') || true
    fs_mb=$(df -mP "$LAB/cs" | awk 'NR == 2 { print $2 }')
    echo "df -m / inside: $mb MB; the whole XFS filesystem: $fs_mb MB"
    if [[ $mb =~ ^[0-9]+$ && $mb -eq $fs_mb ]]; then
        pass "cs-$l-size-ignored"
    else
        fail "cs-$l-size-ignored" "df inside shows $mb MB, the filesystem has $fs_mb MB"
    fi
    echo "GraphDriver: $(D inspect -f '{{json .GraphDriver}}' "$c")"
    echo "HostConfig.StorageOpt: $(D inspect -f '{{json .HostConfig.StorageOpt}}' "$c")"
    # The container's upper dir: the rootfs overlay mount of its task.
    dir=$(grep -F "$(D inspect -f '{{.Id}}' "$c")" /proc/self/mountinfo |
        grep -o 'upperdir=[^,]*' | head -n 1 | cut -d= -f2) || true
    if [[ -n $dir ]]; then
        echo "upperdir $dir"
        echo "lsproj $(dirname "$dir"): $(xfs_io -r -c lsproj "$(dirname "$dir")" 2>&1)"
        echo "lsproj $dir: $(xfs_io -r -c lsproj "$dir" 2>&1)"
    else
        echo "no rootfs overlay mount found for $c in /proc/self/mountinfo"
    fi
    echo "--- xfs_quota report -p on $LAB/cs"
    xfs_quota -x -c 'report -p -b' "$LAB/cs" || true
}

if xfs_quota_root cs 8G "$LAB/cs" >/dev/null; then
    # 1) daemon.json "features": {"containerd-snapshotter": true}
    if dockerd_launch cs --config-file "$cs_cfg"; then
        pass "cs-daemon-json-start"
        info_show on-daemon-json
        if [[ $(D info --format '{{json .DriverStatus}}') == *io.containerd.snapshotter* ]]; then
            pass "cs-daemon-json-on"
        else
            fail "cs-daemon-json-on" "DriverStatus does not name a containerd snapshotter"
        fi
        if image_import; then pass import-cs; else fail import-cs "docker import failed"; fi
        D images || true
        cs_run_check json || true
        dockerd_stop cs keep-containerd
    else
        fail "cs-daemon-json-start" "dockerd with containerd-snapshotter did not start"
    fi

    # 2) the command-line flag, no config file
    if dockerd_launch cs --feature containerd-snapshotter=true; then
        pass "cs-flag-start"
        info_show on-flag
        if [[ $(D info --format '{{json .DriverStatus}}') == *io.containerd.snapshotter* ]]; then
            pass "cs-flag-on"
        else
            fail "cs-flag-on" "--feature containerd-snapshotter=true did not turn it on"
        fi
        D ps -a --format '{{.Names}} {{.Status}}' || true
        dockerd_stop cs keep-containerd
    elif grep -q 'unknown flag: --feature' "$LAB/cs/dockerd.log"; then
        # 26.1.5 has no such flag: daemon.json (or --config-file) only.
        echo "dockerd 26.1.5: no --feature flag (unknown flag); daemon.json it is"
        pass "cs-no-feature-flag"
    else
        fail "cs-flag-start" "--feature containerd-snapshotter=true: dockerd did not start"
    fi

    # 3) the store on plus --storage-driver overlay2: what wins
    if dockerd_launch cs --config-file "$cs_cfg" --storage-driver overlay2; then
        info_show on-overlay2
        echo "containers:"; D ps -a --format '{{.Names}} {{.Status}}' || true
        grep -i 'ignoring container\|driver mismatch' "$LAB/cs/dockerd.log" | tail -n 3 || true
        if out=$(D run -d --name s-ov2 --storage-opt size=1G roomy/busybox sleep 1d 2>&1); then
            echo "docker run under snapshotter \"overlay2\": ok, $out"
            D exec s-ov2 df -m / || true
            echo "GraphDriver: $(D inspect -f '{{json .GraphDriver}}' s-ov2)"
        else
            echo "docker run under snapshotter \"overlay2\" failed: $out"
        fi
        dockerd_stop cs keep-containerd
    else
        echo "store on + --storage-driver overlay2: dockerd did not start"
        tail -n 5 "$LAB/cs/dockerd.log" || true
    fi

    # 4) off again on the same data root: the graph-driver view
    if dockerd_launch cs --storage-driver overlay2; then
        info_show off-same-root
        echo "images with the store off:"; D images || true
        echo "containers with the store off:"; D ps -a --format '{{.Names}} {{.Status}}' || true
        grep -i 'ignoring container\|driver mismatch' "$LAB/cs/dockerd.log" | tail -n 3 || true
        dockerd_stop cs
    fi
else
    fail "cs-xfs-root" "could not make the XFS prjquota root for dockerd cs"
fi

echo "--- dockerd cs's own words, one line per start:"
grep -o 'msg="Docker daemon".*' "$LAB/cs/dockerd.log" 2>/dev/null || true

check_dmesg
# summary's grep -c exits 1 on zero FAILs: not under set -e.
set +e
summary
