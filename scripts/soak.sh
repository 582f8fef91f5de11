#!/bin/bash
# Soak on a fresh Debian 12 machine (as root): installs what it needs,
# builds Roomy (release), boots Debian's kernel in QEMU and runs
# tests/vm/soak.sh: 50 containers on overlay2/XFS quotas under a policy for
# 10 minutes, manual resizes, docker restarts and two controller restarts
# mixed in. About 20 minutes here; not part of the test command (it would
# not fit its budget). Env: ROOMY_SOAK_N, ROOMY_SOAK_SECONDS.
# Figures: stdout and /tmp/roomy-soak/out/soak.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/vm/install-deps.sh >/dev/null
command -v cargo >/dev/null || { echo "soak.sh: cargo not found: install a Rust toolchain (1.88 or newer)" >&2; exit 1; }
echo "soak.sh: building roomy (release)..." >&2
cargo build --release --workspace --quiet
bin=target/bench-bin
mkdir -p "$bin"
cp "${CARGO_TARGET_DIR:-target}"/release/{roomy-agent,roomyctl,roomy-controller} "$bin/"
seconds=${ROOMY_SOAK_SECONDS:-600}
ROOMY_BIN=$(realpath "$bin") ROOMY_VM_WORK=${ROOMY_VM_WORK:-/tmp/roomy-soak} ROOMY_VM_TIMEOUT=$((seconds * 2 + 900)) \
    tests/vm/boot.sh tests/vm/soak.sh
