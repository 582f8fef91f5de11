#!/bin/bash
# Fleet benchmarks, no VM needed:
#  1. `roomyctl ls` across 1, 10, 100 and 1,000 simulated agents on
#     loopback, over mutual TLS: p50/p99 latency, the controller's CPU and
#     memory (tests/fleet/bench.sh); then through a follower of two
#     controllers on etcd (100 and 1,000 agents, ROOMY_BENCH_ETCD_SIZES);
#  2. event ingest: the controller's store, an fsync per event against
#     batches (controller/benches/event_ingest.rs); the agent's buffer
#     drained with a sampler appending meanwhile (agent/benches/
#     event_backlog.rs); and end to end, backlogs of up to 100,000 events
#     on simulated agents drained by a controller that starts after them
#     (tests/fleet/bench-ingest.sh), into SQLite and into etcd.
#  3. failover of three controllers on etcd: the leader killed, times to
#     the first routed resize, the new leader's link and the first event
#     it stores (tests/fleet/bench-failover.sh).
# ROOMY_BENCH_ONLY=ls, =ingest or =failover runs one part.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ROOMY_BUILD_CACHE:-/var/cache/roomy-build}/target}
tests/vm/install-deps.sh >/dev/null
echo "bench-fleet.sh: building roomy (release)..." >&2
cargo build --release --workspace --quiet
bin=target/bench-bin
mkdir -p "$bin"
cp "$CARGO_TARGET_DIR"/release/{roomy-agent,roomyctl,roomy-controller} "$bin/"
only=${ROOMY_BENCH_ONLY:-}
if [[ -z $only || $only == ls ]]; then
    ROOMY_BIN=$(realpath "$bin") tests/fleet/bench.sh
    echo
    # Several controllers: ls through a follower, on etcd.
    ROOMY_BIN=$(realpath "$bin") ROOMY_BENCH_STORE=etcd ROOMY_BENCH_SIZES=${ROOMY_BENCH_ETCD_SIZES:-100 1000} \
        tests/fleet/bench.sh
fi
if [[ -z $only || $only == ingest ]]; then
    echo
    cargo bench -q -p roomy-controller --bench event_ingest -- 20000
    echo
    cargo bench -q -p roomy-agent --bench event_backlog -- 10000 100000
    cargo bench -q -p roomy-agent --bench event_backlog -- --ack-every 1 10000
    echo
    for store in sqlite etcd; do
        ROOMY_BIN=$(realpath "$bin") ROOMY_SEED="cargo bench -q -p roomy-agent --bench event_backlog -- --seed" \
            ROOMY_INGEST_STORE=$store tests/fleet/bench-ingest.sh
        echo
    done
fi
if [[ -z $only || $only == failover ]]; then
    echo
    ROOMY_BIN=$(realpath "$bin") tests/fleet/bench-failover.sh
fi
