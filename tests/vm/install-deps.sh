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
    # deploy/compose/compose.yaml, run by the agent tier (k6)
    docker-compose
    # the Debian 13 root for the Docker >= 25 tests (tests/vm/trixie-root.sh)
    debootstrap
    # the fleet tier: TLS probes and JSON checks
    openssl curl python3 xxd
    # building Roomy; libprotobuf-dev has the well-known .proto files
    # etcd-client's protos import
    libdevmapper-dev libclang-dev pkg-config protobuf-compiler libprotobuf-dev
    # the controller's etcd store: its tests start etcd members
    etcd-server
    # its Debian packages (scripts/package.sh): checked with lintian
    lintian
    # for pip install virtme-ng
    python3-pip
    # tests/grpcio: a venv with grpcio from PyPI
    python3-venv
    # to build virtiofsd (below)
    libseccomp-dev libcap-ng-dev
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

# virtiofsd, the Rust one: vng shares the guest's root filesystem through it
# when it can, else over 9p, which under TCG makes every exec and file read
# in the guest slower (measured here: the ext4 group 98 s on virtiofs, 140 s
# on 9p; boot 18 s against 28). Debian 12 has only QEMU's old C virtiofsd,
# which vng cannot drive, so build the Rust one from crates.io, pinned,
# into Roomy's VM cache (tests/vm/boot.sh puts it on vng's PATH).
virtiofsd_root=${ROOMY_VM_CACHE:-/var/cache/roomy-vm}/virtiofsd
virtiofsd_version=1.14.0
if [[ -x $virtiofsd_root/bin/virtiofsd ]] && [[ $("$virtiofsd_root/bin/virtiofsd" --version 2>/dev/null) == *"$virtiofsd_version"* ]]; then
    echo "install-deps.sh: virtiofsd $virtiofsd_version already built"
elif command -v cargo >/dev/null; then
    echo "install-deps.sh: building virtiofsd $virtiofsd_version (about 2 minutes, once)"
    mkdir -p "$virtiofsd_root"
    cargo install --quiet --locked virtiofsd --version "$virtiofsd_version" --root "$virtiofsd_root"
else
    echo "install-deps.sh: no cargo, so no virtiofsd: the VM tiers will share files over 9p (slower)" >&2
fi

# The fuzz step of scripts/test.sh: a nightly toolchain (libFuzzer needs
# sanitizers) and cargo-fuzz.
if command -v rustup >/dev/null; then
    rustup run nightly rustc --version >/dev/null 2>&1 ||
        rustup toolchain install nightly --profile minimal
else
    echo "install-deps.sh: no rustup, so no nightly toolchain for the fuzz step" >&2
fi
# scripts/package.sh: cargo-deb builds the .debs from Cargo.toml's metadata.
if ! command -v cargo-deb >/dev/null && command -v cargo >/dev/null; then
    echo "install-deps.sh: installing cargo-deb (about 1 minute, once)"
    cargo install --quiet --locked cargo-deb --version 3.8.0
fi
if ! command -v cargo-fuzz >/dev/null && command -v cargo >/dev/null; then
    echo "install-deps.sh: installing cargo-fuzz (about 2 minutes, once)"
    cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi

ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 ||
    { echo "install-deps.sh: no /boot/vmlinuz-*-amd64 after install" >&2; exit 1; }
echo "install-deps.sh: ok"
