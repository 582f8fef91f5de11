#!/bin/bash
# Resize benchmark on a fresh Debian 12 machine (as root): installs what it
# needs, builds Roomy (release), boots Debian's kernel in QEMU with dockerd
# 20.10 on devicemapper/xfs and times online grows of running containers with
# roomyctl vs. the plain dmsetup + xfs_growfs recipe, plus the write stall a
# writer inside the container sees (tests/vm/bench.sh).
# Env: ROOMY_BENCH_N (timed resizes per method, default 20),
# ROOMY_BENCH_STALL_N (resizes during the stall measurement, default 10).
# Then the same for overlay2 on XFS project quotas: roomyctl vs. xfs_io
# lsproj + xfs_quota limit by hand (tests/vm/bench-overlay2.sh).
# Results: stdout, /tmp/roomy-bench/out/bench.txt and
# /tmp/roomy-bench-ov/out/bench-overlay2.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/vm/install-deps.sh >/dev/null
command -v cargo >/dev/null || { echo "bench.sh: cargo not found: install a Rust toolchain (1.88 or newer)" >&2; exit 1; }
echo "bench.sh: building roomy (release)..." >&2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ROOMY_BUILD_CACHE:-/var/cache/roomy-build}/target}
cargo build --release --workspace --quiet
bin=target/bench-bin
mkdir -p "$bin"
cp "$CARGO_TARGET_DIR"/release/{roomy-agent,roomyctl} "$bin/"
ROOMY_BIN=$(realpath "$bin") ROOMY_VM_WORK=${ROOMY_VM_WORK:-/tmp/roomy-bench} tests/vm/boot.sh tests/vm/bench.sh
ROOMY_BIN=$(realpath "$bin") ROOMY_VM_WORK=${ROOMY_VM_WORK:-/tmp/roomy-bench}-ov tests/vm/boot.sh tests/vm/bench-overlay2.sh
