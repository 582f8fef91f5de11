#!/bin/bash
# Fleet benchmark: `roomyctl ls` across 1, 10, 100 and 1,000 simulated
# agents on loopback, over mutual TLS; prints p50/p99 latency and the
# controller's CPU and memory. Needs no VM.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/vm/install-deps.sh >/dev/null
echo "bench-fleet.sh: building roomy (release)..." >&2
cargo build --release --workspace --quiet
bin=target/bench-bin
mkdir -p "$bin"
cp target/release/roomy-agent target/release/roomyctl target/release/roomy-controller "$bin/"
ROOMY_BIN=$(realpath "$bin") tests/fleet/bench.sh
