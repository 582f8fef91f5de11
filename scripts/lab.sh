#!/bin/bash
# Roomy's main job on a local lab, on a fresh Debian 12 machine (as root):
# installs what it needs, builds Roomy, boots Debian's kernel in QEMU with a
# real dockerd 20.10 on devicemapper, creates a 2G container and grows it to
# 16G while it runs, showing df inside it before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/vm/install-deps.sh >/dev/null
command -v cargo >/dev/null || { echo "lab.sh: cargo not found: install a Rust toolchain (1.88 or newer)" >&2; exit 1; }
echo "lab.sh: building roomy (release)..." >&2
# The build cache scripts/test.sh and the benchmarks share: after one of
# them, only Roomy's own crates build here.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ROOMY_BUILD_CACHE:-/var/cache/roomy-build}/target}
cargo build --release --workspace --quiet
bin=target/lab-bin
mkdir -p "$bin"
cp "$CARGO_TARGET_DIR"/release/{roomy-agent,roomyctl} "$bin/"
ROOMY_BIN=$(realpath "$bin") ROOMY_VM_WORK=${ROOMY_VM_WORK:-/tmp/roomy-lab} tests/vm/boot.sh tests/vm/lab.sh
