#!/bin/bash
# Auto-grow benchmark on a fresh Debian 12 machine (as root): installs what
# it needs, builds Roomy (release), boots Debian's kernel in QEMU with
# dockerd 20.10 on devicemapper/xfs, and measures (tests/vm/bench-policy.sh):
# time from a threshold crossing to the filesystem grown (median, p99), and
# the highest fill rate a policy sustains without ENOSPC.
# Env: ROOMY_BENCH_N, ROOMY_BENCH_FILL_N. Results: stdout and
# /tmp/roomy-bench-policy/out/bench-policy.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/vm/install-deps.sh >/dev/null
command -v cargo >/dev/null || { echo "bench-policy.sh: cargo not found: install a Rust toolchain (1.88 or newer)" >&2; exit 1; }
echo "bench-policy.sh: building roomy (release)..." >&2
cargo build --release --workspace --quiet
bin=target/bench-bin
mkdir -p "$bin"
cp target/release/roomy-agent target/release/roomyctl target/release/roomy-controller "$bin/"
ROOMY_BIN=$(realpath "$bin") ROOMY_VM_WORK=${ROOMY_VM_WORK:-/tmp/roomy-bench-policy} tests/vm/boot.sh tests/vm/bench-policy.sh
