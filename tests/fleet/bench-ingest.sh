#!/bin/bash
# Event backlog benchmark (issue: fleet scale, event ingest), end to end:
# simulated agents whose event buffers hold a backlog (as after a
# controller outage), then a controller starts and drains them over the
# Sync streams, mutual TLS, into SQLite. Prints the time from the
# controller's start to every event stored, events per second, and the
# controller's and agents' peak memory; one line per (agents x backlog),
# so a drain that is linear in the backlog shows a flat rate.
#
# Env: ROOMY_BIN; ROOMY_INGEST_CASES (default "1x10000 1x100000 10x10000");
# ROOMY_INGEST_STORE=etcd: the controller's store is a local etcd member
# (started here) instead of SQLite;
# ROOMY_SEED: the command that writes a backlog (DIR N) into a state
# directory (scripts/bench-fleet.sh passes the event_backlog bench's
# --seed).
set -euo pipefail
cd "$(dirname "$0")"

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding the roomy binaries}
SEED=${ROOMY_SEED:?set ROOMY_SEED to a command that writes a backlog: SEED DIR N}
CASES=${ROOMY_INGEST_CASES:-1x10000 1x100000 10x10000}
# shellcheck source=tests/fleet/etcd-member.sh
source ./etcd-member.sh
WORK=$(mktemp -d /tmp/roomy-ingest-bench.XXXXXX)
# set -e holds in the trap too: a kill of jobs already gone must not end it before the rm.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

STORE=${ROOMY_INGEST_STORE:-sqlite}
if [[ $STORE == etcd ]]; then
    start_etcd_member 23890
fi
# The store line of the controller's config, per case.
store_conf() {
    if [[ $STORE == etcd ]]; then
        printf '[etcd]\nendpoints = ["http://127.0.0.1:23890"]\nprefix = "/bench/%s/"\n' "$1"
    fi
}
"$BIN/roomyctl" certs init --out "$WORK/pki" --user bench:viewer >/dev/null
"$BIN/roomyctl" certs issue --dir "$WORK/pki" agent sim-agent >/dev/null
mem_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
# Events the controller has stored (its counter of new events).
stored() {
    { curl -s --max-time 2 http://127.0.0.1:9799/metrics || true; } |
        awk '/^roomy_events_total\{/ {t += $NF} END {printf "%d\n", t}'
}

echo "store: $STORE"
printf '%-7s %-9s %-9s %-10s %-10s %-12s %-12s\n' agents backlog events drain_s events/s ctl_peak_MiB agent_peak_MiB
for case in $CASES; do
    k=${case%x*} b=${case#*x}
    state=$WORK/state-$case
    mkdir -p "$state"
    if [[ $k -eq 1 ]]; then
        $SEED "$state" "$b"
    else
        for ((i = 0; i < k; i++)); do $SEED "$state/host$i" "$b"; done
    fi
    "$BIN/roomy-agent" --backend sim --sim-hosts "$k" --sim-containers 2 --no-socket --state-dir "$state" \
        --listen 127.0.0.1:22000 --tls-cert "$WORK/pki/agents/sim-agent.pem" \
        --tls-key "$WORK/pki/agents/sim-agent.key" --tls-ca "$WORK/pki/ca.pem" 2>"$WORK/agents-$case.log" &
    agents=$!
    {
        if [[ $STORE == etcd ]]; then drop_store='/^store = /d'; else drop_store=; fi
        sed -e 's/^listen = .*/listen = "127.0.0.1:7643"/' -e "s|^store = .*|store = \"$WORK/ingest-$case.db\"|" \
            -e "$drop_store" "$WORK/pki/controller.toml" | sed -e '/^\[tls\]/i metrics_listen = "127.0.0.1:9799"'
        store_conf "$case"
        for ((i = 0; i < k; i++)); do
            printf '[[hosts]]\nname = "host%d"\naddress = "127.0.0.1:%d"\nserver_name = "sim-agent"\n' "$i" $((22000 + i))
        done
    } >"$WORK/controller.toml"
    sleep 1
    t0=$(date +%s%N)
    "$BIN/roomy-controller" --config "$WORK/controller.toml" 2>"$WORK/controller-$case.log" &
    controller=$!
    want=$((k * b)) got=0
    deadline=$((SECONDS + 600))
    while ((SECONDS < deadline)); do
        got=$(stored)
        [[ ${got:-0} -ge $want ]] && break
        sleep 0.05
    done
    t1=$(date +%s%N)
    if [[ ${got:-0} -lt $want ]]; then
        echo "bench-ingest: $case: only $got of $want events stored after 600 s" >&2
        tail -5 "$WORK/controller-$case.log" >&2
        exit 1
    fi
    secs=$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.2f", d / 1e9}')
    rate=$(awk -v n="$want" -v d=$((t1 - t0)) 'BEGIN {printf "%.0f", n / (d / 1e9)}')
    ctl_peak=$(awk -v k="$(mem_kib "$controller" VmHWM)" 'BEGIN {printf "%.1f", k / 1024}')
    agent_peak=$(awk -v k="$(mem_kib "$agents" VmHWM)" 'BEGIN {printf "%.1f", k / 1024}')
    printf '%-7s %-9s %-9s %-10s %-10s %-12s %-12s\n' "$k" "$b" "$got" "$secs" "$rate" "$ctl_peak" "$agent_peak"
    kill "$controller" "$agents"
    wait "$controller" "$agents" 2>/dev/null || true
done
echo "(drain: from the controller's start, TLS handshakes and the store ($STORE) included, to its counter of stored events reaching the backlog)"
