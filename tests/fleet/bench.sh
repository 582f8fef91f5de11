#!/bin/bash
# Fleet benchmark (controller issue): `roomyctl ls` across 1, 10, 100, 1000
# and 10,000 agents (in-memory backend, loopback, mutual TLS everywhere),
# printing p50/p99 latency of the whole roomyctl command and the
# controller's CPU time per ls and resident memory, measured once every
# agent's Sync stream is open (the controller keeps one per agent; the
# "sync" column counts them from its metrics). Each roomy-agent process
# serves up to 4,000 simulated hosts (--sim-hosts, consecutive ports); the
# controller is its own process.
#
# ROOMY_BENCH_STORE=etcd (several controllers): two controllers on a local
# etcd member; the one measured (ls, CPU, memory) is the follower, which
# serves reads and routes like any other but holds no Sync streams (the
# "sync" column counts the leader's).
#
# `ls` answers from the lists the agents' inventory streams keep (the
# "lists" column counts them); beside it, in the same run, `ls --fresh`,
# which asks every agent as every ls did before (the anchor).
#
# Env: ROOMY_BIN, ROOMY_BENCH_SIZES (default "1 10 100 1000 10000"),
# ROOMY_BENCH_RUNS (default 30), ROOMY_BENCH_FRESH_RUNS (default 10),
# ROOMY_BENCH_STORE (sqlite or etcd).
set -euo pipefail
cd "$(dirname "$0")"

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding the roomy binaries}
SIZES=${ROOMY_BENCH_SIZES:-1 10 100 1000 10000}
RUNS=${ROOMY_BENCH_RUNS:-30}
FRESH_RUNS=${ROOMY_BENCH_FRESH_RUNS:-10}
# shellcheck source=tests/fleet/etcd-member.sh
source ./etcd-member.sh
WORK=$(mktemp -d /tmp/roomy-fleet-bench.XXXXXX)
# set -e holds in the trap too: a kill of jobs already gone must not end it before the rm.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# 10,000 agents: a listener and a connection each in the agents' process,
# a connection each in the controller's.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
STORE=${ROOMY_BENCH_STORE:-sqlite}
if [[ $STORE == etcd ]]; then
    start_etcd_member 23990
fi
"$BIN/roomyctl" certs init --out "$WORK/pki" --user bench:viewer >/dev/null
"$BIN/roomyctl" certs issue --dir "$WORK/pki" agent sim-agent >/dev/null
ctl() {
    "$BIN/roomyctl" --controller 127.0.0.1:7543 --cert "$WORK/pki/users/bench.pem" \
        --key "$WORK/pki/users/bench.key" --ca "$WORK/pki/ca.pem" "$@"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mem_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# A controller's config: LISTEN-PORT METRICS-PORT AGENTS.
ctl_config() {
    local drop_store=
    [[ $STORE == etcd ]] && drop_store='/^store = /d'
    printf 'metrics_listen = "127.0.0.1:%s"\n' "$2"
    sed -e "s/^listen = .*/listen = \"127.0.0.1:$1\"/" -e 's/^agent_timeout_ms = .*/agent_timeout_ms = 10000/' \
        -e "s|^store = .*|store = \"$WORK/bench-$3.db\"|" -e "$drop_store" "$WORK/pki/controller.toml"
    for ((i = 0; i < $3; i++)); do
        printf '[[hosts]]\nname = "host%d"\naddress = "127.0.0.1:%d"\nserver_name = "sim-agent"\n' "$i" $((21000 + i))
    done
    [[ $STORE != etcd ]] || printf '[etcd]\nendpoints = ["http://127.0.0.1:23990"]\nprefix = "/bench-ls/%s/"\n' "$3"
}
leads() { curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk '/^roomy_controller_leader / {print $2}'; }
synced() { curl -s --max-time 10 http://127.0.0.1:9798/metrics | awk '/^roomy_host_sync_connected/ {n += $2} END {print n + 0}'; }
# Hosts whose container list the measured controller keeps (from its
# agent's inventory stream): `ls` answers those from memory.
listed() { curl -s --max-time 10 "http://127.0.0.1:$1/metrics" | awk '/^roomy_host_inventory_streaming/ {n += $2} END {print n + 0}'; }

echo "store: $STORE$([[ $STORE == etcd ]] && echo ', measured through the follower')"
printf '%-7s %-7s %-6s %-6s %-9s %-9s %-16s %-9s %-9s %-13s %-13s %s\n' agents rows sync lists p50_ms p99_ms ctl_cpu_ms/ls rss_MiB peak_MiB fresh_p50_ms fresh_p99_ms p99_ratio
for n in $SIZES; do
    # At most 4,000 simulated hosts per process: each holds a listener and
    # a connection, and one process may hold 20,000 fds here (ulimit -Hn;
    # 10,000 hosts in one process ran out and its last hosts never
    # answered). Hosts stay on consecutive ports.
    agents=()
    for ((first = 0; first < n; first += 4000)); do
        "$BIN/roomy-agent" --backend sim --sim-hosts $((n - first < 4000 ? n - first : 4000)) --sim-containers 10 \
            --no-socket --listen "127.0.0.1:$((21000 + first))" --tls-cert "$WORK/pki/agents/sim-agent.pem" \
            --tls-key "$WORK/pki/agents/sim-agent.key" --tls-ca "$WORK/pki/ca.pem" 2>>"$WORK/agents.log" &
        agents+=($!)
    done
    # On etcd the leader (7544, metrics 9798) starts first and holds the
    # streams; the controller measured (7543) is then the follower.
    leader=
    if [[ $STORE == etcd ]]; then
        ctl_config 7544 9798 "$n" >"$WORK/leader.toml"
        "$BIN/roomy-controller" --config "$WORK/leader.toml" 2>"$WORK/leader.log" &
        leader=$!
        for _ in $(seq 600); do [[ $(leads 9798) == 1 ]] && break; sleep 0.1; done
        ctl_config 7543 9797 "$n" >"$WORK/controller.toml"
    else
        ctl_config 7543 9798 "$n" >"$WORK/controller.toml"
    fi
    "$BIN/roomy-controller" --config "$WORK/controller.toml" 2>"$WORK/controller.log" &
    controller=$!
    for _ in $(seq 600); do ctl hosts ls >/dev/null 2>&1 && break; sleep 0.1; done
    # Every Sync stream open (10,000 TLS handshakes take a while here).
    t_sync=$(date +%s)
    while [[ $(synced) -lt $n && $(($(date +%s) - t_sync)) -lt 600 ]]; do sleep 1; done
    sync=$(synced)
    # And every inventory stream: `ls` answers from the kept lists.
    mport=$([[ $STORE == etcd ]] && echo 9797 || echo 9798)
    while [[ $(listed "$mport") -lt $n && $(($(date +%s) - t_sync)) -lt 600 ]]; do sleep 1; done
    lists=$(listed "$mport")
    # Warm up: every agent connection established once.
    for _ in 1 2 3; do ctl ls -o json >/dev/null; done
    read -r rows missed < <(ctl ls -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["containers"]), len(d["errors"]))')
    if [[ $missed -gt 0 || $rows -ne $((n * 10)) ]]; then
        # Not a figure: say so, and go on to the next size.
        printf '%-7s %-7s %-6s %-6s %s\n' "$n" "$rows" "$sync" "$lists" "no figure: $missed of $n hosts missed the controller's 10 s agent deadline (rows: $rows of $((n * 10)))"
        kill "$controller" "${agents[@]}" ${leader:+"$leader"}
        wait "$controller" "${agents[@]}" ${leader:+"$leader"} 2>/dev/null || true
        continue
    fi
    # RUNS of ARGS: sets p50 p99 (ms) and cpu_ms (the controller's per run).
    measure() {
        local runs=$1 t0 t1 c0 c1
        shift
        : >"$WORK/lat"
        c0=$(cpu_ticks "$controller")
        for ((r = 0; r < runs; r++)); do
            t0=$(date +%s%N)
            ctl "$@" >/dev/null
            t1=$(date +%s%N)
            echo $(((t1 - t0) / 1000)) >>"$WORK/lat"
        done
        c1=$(cpu_ticks "$controller")
        read -r p50 p99 < <(sort -n "$WORK/lat" | awk '{a[NR] = $1} END {i50 = int((NR + 1) * 0.5); i99 = int(NR * 0.99 + 0.999); if (i99 > NR) i99 = NR; printf "%.1f %.1f\n", a[i50] / 1000, a[i99] / 1000}')
        cpu_ms=$(awk -v d=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v r="$runs" 'BEGIN {printf "%.1f", d * 1000 / hz / r}')
    }
    measure "$RUNS" ls -o json
    read -r p50_ls p99_ls cpu_ls <<<"$p50 $p99 $cpu_ms"
    rss=$(awk -v k="$(mem_kib "$controller" VmRSS)" 'BEGIN {printf "%.1f", k / 1024}')
    peak=$(awk -v k="$(mem_kib "$controller" VmHWM)" 'BEGIN {printf "%.1f", k / 1024}')
    # The anchor, in the same run, after the figures above: every agent
    # asked at each ls, as before the inventory streams (`ls --fresh`).
    measure "$FRESH_RUNS" ls --fresh -o json
    read -r fresh50 fresh99 p50 p99 cpu_ms <<<"$p50 $p99 $p50_ls $p99_ls $cpu_ls"
    ratio=$(awk -v a="$fresh99" -v b="$p99" 'BEGIN {printf "%.1fx", a / b}')
    printf '%-7s %-7s %-6s %-6s %-9s %-9s %-16s %-9s %-9s %-13s %-13s %s\n' "$n" "$rows" "$sync" "$lists" "$p50" "$p99" "$cpu_ms" "$rss" "$peak" "$fresh50" "$fresh99" "$ratio"
    if [[ -n $leader ]]; then
        [[ $(leads 9797) == 0 ]] || { echo "bench: the measured controller leads; it should follow" >&2; exit 1; }
    fi
    kill "$controller" "${agents[@]}" ${leader:+"$leader"}
    wait "$controller" "${agents[@]}" ${leader:+"$leader"} 2>/dev/null || true
done
echo "(latency: whole roomyctl process incl. its TLS handshake; CPU: controller utime+stime per ls; ${RUNS} runs of ls from the kept lists, ${FRESH_RUNS} of ls --fresh, which asks every agent; p99_ratio: fresh p99 / p99)"
