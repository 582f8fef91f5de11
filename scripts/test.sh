#!/bin/bash
# Every test Roomy has, on a fresh Debian 12 machine (as root):
#   1. installs what it needs (apt packages, virtme-ng; skipped when present)
#   2. cargo fmt --check and clippy -D warnings
#   3. host tests (parsing, tables, metadata rewrite, superblocks, ...)
#   4. the fleet tier: roomy-controller and three agents (in-memory backend)
#      as processes in network namespaces, over mutual TLS (tests/fleet)
#   5. the real-kernel tier: boots Debian's kernel in QEMU (no KVM), runs
#      dm-thin, XFS, ext4 and dockerd 20.10 on devicemapper, and drives
#      roomy-agent (and the controller) through every scenario in
#      tests/vm/agent.sh.
# Ends with the VM tier's "N passed, M failed" line; exits non-zero on any
# failure. ROOMY_SKIP_VM=1 runs steps 1-4 only (says so loudly).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "install dependencies"
tests/vm/install-deps.sh
command -v cargo >/dev/null || { echo "test.sh: cargo not found: install a Rust toolchain (1.88 or newer)" >&2; exit 1; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --features roomy-agent/failpoints -- -D warnings

step "host tests"
cargo test --release --workspace --features roomy-agent/failpoints

step "build binaries for the VM tier (agent with test-only failpoints)"
cargo build --release --workspace --features roomy-agent/failpoints
bin=target/vm-bin
mkdir -p "$bin"
cp target/release/roomy-agent target/release/roomyctl target/release/roomy-controller "$bin/"

step "fleet tier (controller + agents in network namespaces, mutual TLS)"
ROOMY_BIN=$(realpath "$bin") tests/fleet/fleet.sh

if [[ ${ROOMY_SKIP_VM:-} == 1 ]]; then
    echo "test.sh: ROOMY_SKIP_VM=1: the real-kernel tier did NOT run" >&2
    exit 0
fi

step "real-kernel tier (QEMU, dm-thin, XFS, ext4, dockerd 20.10)"
# Each scenario group has its own watchdog inside the guest (and says which
# ran out); the boot's own watchdog is their sum plus the boot.
budget=$(tests/vm/agent.sh --budget)
ROOMY_VM_TIMEOUT=$((budget + 300)) ROOMY_BIN=$(realpath "$bin") tests/vm/boot.sh tests/vm/agent.sh
