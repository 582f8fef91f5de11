#!/bin/bash
# Print the path of a ready Debian 13 "trixie" root for tests/vm/boot.sh
# (ROOMY_VM_ROOT=$(tests/vm/trixie-root.sh) tests/vm/boot.sh ...), building
# it with debootstrap only when it is missing or was built from another
# package list. Docker 26.1.5, containerd 1.7, kernel 6.12: the Docker >= 25
# tier (DESIGN.md F13, F14).
#
#   tests/vm/trixie-root.sh            path on stdout, progress on stderr
#
# Env: ROOMY_VM_CACHE (default /var/cache/roomy-vm; outside the repo so fresh
#      clones reuse it), ROOMY_VM_MIRROR (Debian archive URL; default: the
#      one this machine's apt sources use for its own release).
# Needs root and debootstrap (tests/vm/install-deps.sh). About 2 min and
# 1 GB the first time; instant afterwards.
set -euo pipefail

die() { echo "trixie-root.sh: $*" >&2; exit 2; }
log() { echo "trixie-root.sh: $*" >&2; }

suite=trixie
# What the guest scripts use (F14). docker-cli is its own package in trixie;
# libdevmapper1.02.1 because roomy-agent, built on the host, links it; udev
# because devicemapper waits on udev cookies and virtme-ng-init starts it.
packages=(
    docker.io docker-cli containerd runc
    xfsprogs e2fsprogs iproute2 kmod udev linux-image-amd64 busybox-static
    procps util-linux mount libdevmapper1.02.1
    # a1/o7 read the agent's /metrics with it
    curl
)
# Bump when the way the root is made changes (not only its package list).
format=1

cache=$(realpath -m -- "${ROOMY_VM_CACHE:-/var/cache/roomy-vm}")
root=$cache/$suite-root
stamp_name=.roomy-root-stamp
want_stamp=$(printf 'format %s\nsuite %s\nvariant minbase\npackages %s\n' \
    "$format" "$suite" "$(printf '%s\n' "${packages[@]}" | sort | paste -sd, -)")

ready() { [[ -f $root/$stamp_name && $(<"$root/$stamp_name") == "$want_stamp" ]]; }

if ready; then
    echo "$root"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "building the root needs root"
command -v debootstrap >/dev/null || die "debootstrap not found: run tests/vm/install-deps.sh"

# The Debian archive this machine's apt already uses for its own release
# (not -security/-updates): one-line .list files and deb822 .sources files.
host_mirror() {
    local codename f
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || return 1
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        # deb [opts] URI SUITE COMPONENTS...
        awk -v s="$codename" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == s) { print $i; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        # Stanzas separated by blank lines; fields Types, URIs, Suites, Enabled.
        awk -v s="$codename" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " s " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1
                }
                types = uris = suites = enabled = ""
            }
            /^#/ { next }
            /^[ \t]*$/ { flush(); if (found) exit; next }
            { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
              if (key == "types") types = $0
              else if (key == "uris") uris = $0
              else if (key == "suites") suites = $0
              else if (key == "enabled") enabled = tolower($0) }
            END { if (!found) flush() }' "$f"
    done
}

mirror=${ROOMY_VM_MIRROR:-}
if [[ -z $mirror ]]; then
    mirror=$(host_mirror | head -n 1) || true
    [[ -n $mirror ]] || die "no Debian archive found in /etc/apt/sources.list{,.d/*}: set ROOMY_VM_MIRROR"
fi

mkdir -p "$cache"
# One build at a time (CI jobs sharing the cache); the second one waits and
# then finds the root ready.
exec 9>"$cache/.$suite-root.lock"
if ! flock -n 9; then
    log "another build holds $cache/.$suite-root.lock; waiting"
    flock 9
fi
if ready; then
    echo "$root"
    exit 0
fi

# Leftovers of interrupted builds (we hold the lock: nobody else is building).
rm -rf --one-file-system "$cache/.$suite-root.tmp."* "$cache/.$suite-root.old."*

tmp=$(mktemp -d "$cache/.$suite-root.tmp.XXXXXX")
# mktemp makes it 0700; it becomes the guest's /, which everyone traverses.
chmod 0755 "$tmp"
trap 'rm -rf --one-file-system "$tmp"' EXIT
log "building $suite root in $tmp from $mirror (packages: ${packages[*]})"
t0=$(date +%s.%N)
include=$(IFS=,; echo "${packages[*]}")
if ! debootstrap --variant=minbase --include="$include" "$suite" "$tmp" "$mirror" \
    >"$tmp.log" 2>&1; then
    tail -n 30 "$tmp.log" >&2
    die "debootstrap failed (full log $tmp.log)"
fi
t1=$(date +%s.%N)
log "debootstrap took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s"

# Slim it: nothing reads the package lists or the .debs again.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
# boot.sh's shared dirs live here (an --rwdir must lie inside the root).
mkdir -p "$tmp/srv/roomy/out" "$tmp/srv/roomy/vm" "$tmp/srv/roomy/bin"
ls "$tmp"/boot/vmlinuz-* >/dev/null 2>&1 || die "no kernel in $tmp/boot"
for f in usr/bin/dockerd usr/sbin/dockerd usr/bin/docker usr/bin/containerd usr/sbin/runc bin/busybox; do
    [[ -e $tmp/$f || -L $tmp/$f ]] && log "has /$f"
done
# The kernel's modules must be readable by vng and match the vmlinuz.
log "kernel: $(cd "$tmp/boot" && ls vmlinuz-*), $(du -sh --one-file-system "$tmp" | cut -f1)"

printf '%s\n' "$want_stamp" >"$tmp/$stamp_name"
# Into place: rename only, so a reader sees the old ready root, no root, or
# the new ready root, never half a build (and only this lock holder renames).
if [[ -e $root ]]; then
    old=$cache/.$suite-root.old.$$
    mv -T "$root" "$old"
    mv -T "$tmp" "$root"
    rm -rf --one-file-system "$old"
else
    mv -T "$tmp" "$root"
fi
trap - EXIT
mv -f "$tmp.log" "$cache/$suite-root.debootstrap.log"
log "ready: $root (total $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }') s)"
echo "$root"
