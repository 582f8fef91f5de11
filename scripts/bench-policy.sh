#!/bin/bash
# Auto-grow benchmark on a fresh Debian 12 machine (as root): installs what
# it needs, builds Roomy (release), boots Debian's kernel in QEMU with
# dockerd 20.10 on devicemapper/xfs, and measures (tests/vm/bench-policy.sh):
# a direct-lvm thin pool grown by lvm2's dmeventd against a Roomy pool
# policy (same threshold and step, same writer), the time from a threshold
# crossing to a container's filesystem grown (median, p99), and the highest
# fill rate a policy sustains without ENOSPC from 1G and 512M disks; then,
# in a second VM, the agent's cost on a host with 200 containers under
# policies (tests/vm/bench-host.sh).
# Env: ROOMY_BENCH_N, ROOMY_BENCH_FILL_N, ROOMY_BENCH_CONTAINERS,
# ROOMY_BENCH_ONLY=pool|container|host, ROOMY_BENCH_BASELINE=<git rev>
# (that revision's agent, measured in the same VMs: the container
# latencies and the busy host's idle window). Results: stdout and
# /tmp/roomy-bench-policy/out/bench-policy.txt, /tmp/roomy-bench-policy-host/
# out/bench-host.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/vm/install-deps.sh >/dev/null
command -v cargo >/dev/null || { echo "bench-policy.sh: cargo not found: install a Rust toolchain (1.88 or newer)" >&2; exit 1; }
echo "bench-policy.sh: building roomy (release)..." >&2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ROOMY_BUILD_CACHE:-/var/cache/roomy-build}/target}
base_bin=""
if [[ -n ${ROOMY_BENCH_BASELINE:-} ]]; then
    echo "bench-policy.sh: building the baseline agent ($ROOMY_BENCH_BASELINE)..." >&2
    # The source in one place and a target directory of its own: cargo
    # keys its cache by the path, and in the shared target the two builds
    # would take turns as release/roomy-agent.
    base_src=$CARGO_TARGET_DIR-baseline-src
    rm -rf "$base_src"
    mkdir -p "$base_src"
    git archive "$ROOMY_BENCH_BASELINE" | tar -x -C "$base_src"
    (cd "$base_src" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR-baseline cargo build --release -p roomy-agent --quiet)
    mkdir -p target/bench-base
    base_bin=$(realpath target/bench-base)
    cp "$CARGO_TARGET_DIR-baseline/release/roomy-agent" "$base_bin/"
fi
cargo build --release --workspace --quiet
bin=target/bench-bin
mkdir -p "$bin"
cp "$CARGO_TARGET_DIR"/release/{roomy-agent,roomyctl,roomy-controller} "$bin/"
only=${ROOMY_BENCH_ONLY:-}
if [[ $only != host ]]; then
    ROOMY_BASE_BIN=$base_bin ROOMY_BIN=$(realpath "$bin") ROOMY_VM_WORK=${ROOMY_VM_WORK:-/tmp/roomy-bench-policy} tests/vm/boot.sh tests/vm/bench-policy.sh
fi
# The busy host in a VM of its own: its 200 containers would weigh on the
# figures above.
if [[ -z $only || $only == host ]]; then
    # Starting 200 containers alone took 1132 s on a slower machine here,
    # and boot.sh's default watchdog (1500 s) then cut the last window.
    # The whole run took 30 min here with three filling windows: 90 holds
    # on a machine twice as slow.
    ROOMY_VM_TIMEOUT=${ROOMY_VM_TIMEOUT:-5400} ROOMY_BASE_BIN=$base_bin ROOMY_BIN=$(realpath "$bin") \
        ROOMY_VM_WORK=${ROOMY_VM_WORK:-/tmp/roomy-bench-policy}-host tests/vm/boot.sh tests/vm/bench-host.sh
fi
