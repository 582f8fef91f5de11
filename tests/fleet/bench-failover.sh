#!/bin/bash
# Failover benchmark (issue: several controllers on etcd): three
# controllers on a local etcd member, one simulated agent whose 20
# containers fill under a policy (10 MB/s each, a 64 MiB growth at 25%: an
# event every ~80 ms, for minutes before the 100 GiB sim pool fills), mutual
# TLS between Roomy's parts. Each round SIGKILLs the leader and times,
# from the kill:
#   resize: the first routed resize through a survivor that succeeds;
#   link:   a survivor holding the agent's Sync stream (the new leader);
#   ack:    the first event the new leader stores (it acknowledges what it
#           stored), from its roomy_events_total;
# then starts the killed controller again (it queues as a follower).
# Prints each round and the median and max. Goal: under 5 s with the
# default settings (lease_ttl_s = 3).
#
# Env: ROOMY_BIN; ROOMY_FAILOVER_ROUNDS (default 5).
set -euo pipefail
cd "$(dirname "$0")"

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding the roomy binaries}
ROUNDS=${ROOMY_FAILOVER_ROUNDS:-5}
# shellcheck source=tests/fleet/etcd-member.sh
source ./etcd-member.sh
WORK=$(mktemp -d /tmp/roomy-failover-bench.XXXXXX)
# set -e holds in the trap too: a kill of jobs already gone must not end it before the rm.
trap 'kill $(jobs -p) 2>/dev/null || true; [[ ${ROOMY_KEEP:-} == 1 ]] || rm -rf "$WORK"' EXIT

start_etcd_member 24090

"$BIN/roomyctl" certs init --out "$WORK/pki" --user ops:operator >/dev/null
"$BIN/roomyctl" certs issue --dir "$WORK/pki" agent sim-agent >/dev/null
"$BIN/roomy-agent" --backend sim --sim-containers 20 --sim-fill-rate 10M --no-socket --state-dir "$WORK/state" \
    --listen 127.0.0.1:24100 --tls-cert "$WORK/pki/agents/sim-agent.pem" \
    --tls-key "$WORK/pki/agents/sim-agent.key" --tls-ca "$WORK/pki/ca.pem" 2>"$WORK/agent.log" &

# Controller N (0, 1, 2) listens on 2420N, metrics on 2430N.
for n in 0 1 2; do
    {
        printf 'metrics_listen = "127.0.0.1:%s"\n' $((24300 + n))
        sed -e "s/^listen = .*/listen = \"127.0.0.1:$((24200 + n))\"/" -e '/^store = /d' "$WORK/pki/controller.toml"
        printf '[[hosts]]\nname = "host0"\naddress = "127.0.0.1:24100"\nserver_name = "sim-agent"\n'
        printf '[etcd]\nendpoints = ["http://127.0.0.1:24090"]\n'
    } >"$WORK/c$n.toml"
done
start() {
    "$BIN/roomy-controller" --config "$WORK/c$1.toml" 2>>"$WORK/c$1.log" &
    echo $! >"$WORK/c$1.pid"
}
metric() { # N NAME-PREFIX: the sum of the controller's samples starting so
    { curl -s --max-time 1 "http://127.0.0.1:$((24300 + $1))/metrics" || true; } |
        awk -v p="$2" 'index($0, p) == 1 {t += $NF} END {printf "%d\n", t}'
}
ctl() { # N ARGS...
    local n=$1
    shift
    "$BIN/roomyctl" --controller "127.0.0.1:$((24200 + n))" --cert "$WORK/pki/users/ops.pem" \
        --key "$WORK/pki/users/ops.key" --ca "$WORK/pki/ca.pem" --timeout 2 "$@"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
leader() {
    local n
    for n in 0 1 2; do
        if [[ $(metric "$n" 'roomy_controller_leader ') == 1 ]]; then echo "$n"; fi
    done
}
for n in 0 1 2; do start "$n"; done
for _ in $(seq 300); do [[ $(leader | wc -l) -eq 1 ]] && break; sleep 0.1; done
ctl 0 policy set steady --hosts host0 --at 25% --grow 64M --max 100000G --horizon 0 --cooldown 0 >/dev/null
# Events flowing before the first kill.
for _ in $(seq 300); do [[ $(metric "$(leader)" 'roomy_events_total{host="host0"') -gt 0 ]] && break; sleep 0.1; done

printf '%-6s %-7s %-10s %-8s %-8s\n' round killed resize_ms link_ms ack_ms
: >"$WORK/figures"
for ((r = 1; r <= ROUNDS; r++)); do
    dead=$(leader)
    [[ -n $dead ]] || { echo "bench-failover: no leader before round $r" >&2; exit 1; }
    mapfile -t alive < <(printf '%s\n' 0 1 2 | grep -vx "$dead")
    # Followers store no events: their counters stay where they were.
    declare -A before=()
    for n in "${alive[@]}"; do before[$n]=$(metric "$n" 'roomy_events_total{host="host0"'); done
    t0=$(now_ms)
    kill -9 "$(<"$WORK/c$dead.pid")"
    # Reaped here, with bash's "Killed" notice silenced.
    wait "$(<"$WORK/c$dead.pid")" 2>/dev/null || true
    resize= link= ack=
    while (($(now_ms) - t0 < 30000)) && [[ -z $resize || -z $link || -z $ack ]]; do
        if [[ -z $resize ]] && ctl "${alive[$((r % 2))]}" resize host0/c0 +1G >/dev/null 2>&1; then
            resize=$(($(now_ms) - t0))
        fi
        for n in "${alive[@]}"; do
            if [[ -z $link && $(metric "$n" 'roomy_host_sync_connected{host="host0"}') == 1 ]]; then
                link=$(($(now_ms) - t0))
            fi
            if [[ -z $ack && $(metric "$n" 'roomy_events_total{host="host0"') -gt ${before[$n]} ]]; then
                ack=$(($(now_ms) - t0))
            fi
        done
        sleep 0.05
    done
    printf '%-6s %-7s %-10s %-8s %-8s\n' "$r" "c$dead" "${resize:-never}" "${link:-never}" "${ack:-never}"
    [[ -n $resize && -n $link && -n $ack ]] || { echo "bench-failover: round $r did not recover in 30 s" >&2; exit 1; }
    echo "$resize $link $ack" >>"$WORK/figures"
    start "$dead"
    sleep 2
done
python3 - "$WORK/figures" <<'EOF'
import statistics, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1])]
for i, name in enumerate(["first routed resize", "new leader's link", "first event stored and acked"]):
    col = [r[i] for r in rows]
    print(f"leader killed -> {name}: median {statistics.median(col):.0f} ms, max {max(col)} ms (goal: under 5000 ms)")
EOF
echo "(one etcd member, three controllers and one simulated agent on this machine; lease_ttl_s 3, the default)"
