#!/bin/bash
# Install what tests/vm/ needs on a Debian 12 host (run as root, no prompts).
# Idempotent and fast when everything is already there: apt is skipped unless
# a package is missing, pip unless vng is missing.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

packages=(
    # the VM: a 6.1 kernel with dm-thin-pool/xfs/loop modules, TCG qemu
    linux-image-amd64 qemu-system-x86
    # guest tools (the guest runs over the host's root filesystem); udev:
    # devicemapper waits for udev to acknowledge device creation
    busybox-static xfsprogs e2fsprogs thin-provisioning-tools lvm2 udev
    iproute2 docker.io
    # the Debian 13 root for the Docker >= 25 tests (tests/vm/trixie-root.sh)
    debootstrap
    # the fleet tier: TLS probes and JSON checks
    openssl curl python3 xxd
    # building Roomy
    libdevmapper-dev libclang-dev pkg-config protobuf-compiler
    # for pip install virtme-ng
    python3-pip
)

[[ $(id -u) -eq 0 ]] || { echo "install-deps.sh: run as root" >&2; exit 1; }

missing=()
for p in "${packages[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == "ii " ]] || missing+=("$p")
done

if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-deps.sh: installing ${missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-deps.sh: Debian packages already installed"
fi

if ! command -v vng >/dev/null; then
    echo "install-deps.sh: installing virtme-ng"
    # Debian 12's system python is "externally managed"; the flag is what
    # lets pip install into it (no-op for a pyenv/venv python).
    pip3 install -q --break-system-packages virtme-ng
    command -v vng >/dev/null || { echo "install-deps.sh: vng still not on PATH" >&2; exit 1; }
else
    echo "install-deps.sh: vng already installed ($(vng --version))"
fi

ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 ||
    { echo "install-deps.sh: no /boot/vmlinuz-*-amd64 after install" >&2; exit 1; }
echo "install-deps.sh: ok"
