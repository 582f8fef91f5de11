#!/bin/bash
# The fleet tier (controller issue): roomy-controller and three roomy-agents
# as separate processes, each agent in its own network namespace with its own
# address (ip netns + veth), everything over mutual TLS, driven by roomyctl as
# users would. Agents use the in-memory backend (--backend sim); the real
# storage chain is proven in the VM tier (tests/vm/agent.sh, s10).
#
# Needs root (network namespaces). Env: ROOMY_BIN (dir with roomy-controller,
# roomy-agent, roomyctl). Ends with "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")" || exit 1

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding the roomy binaries}
[[ $(id -u) -eq 0 ]] || { echo "fleet.sh: needs root for network namespaces" >&2; exit 1; }
WORK=$(mktemp -d /tmp/roomy-fleet.XXXXXX)
PASSED=0
FAILED=0
PREFIX=rfl$$

pass() { PASSED=$((PASSED + 1)); echo "PASS $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1: ${2:-}"; }
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name" "$* (last output: ${OUT:-})"; fi
}

cleanup() {
    local i
    # shellcheck disable=SC2046 # one pid per word
    kill $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null
    for i in 1 2 3; do ip netns del "$PREFIX-h$i" 2>/dev/null; ip link del "$PREFIX-v$i" 2>/dev/null; done
    # Controller C's namespace and link (its iptables rules and the links'
    # forwarding settings go with them).
    ip netns del "$PREFIX-c" 2>/dev/null
    ip link del "$PREFIX-vc" 2>/dev/null
    ip route del blackhole 10.199.0.0/16 2>/dev/null
    [[ ${ROOMY_KEEP:-} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# roomyctl as USER (its certificate), output in OUT, exit code in RC.
as() {
    local user=$1
    shift
    OUT=$("$BIN/roomyctl" --controller "${CTL_ADDR:-127.0.0.1:7443}" --cert "$WORK/pki/users/$user.pem" \
        --key "$WORK/pki/users/$user.key" --ca "$WORK/pki/ca.pem" "$@" 2>&1)
    RC=$?
}

start_controller() {
    "$BIN/roomy-controller" --config "$WORK/controller.toml" >>"$WORK/controller.log" 2>&1 &
    echo $! >"$WORK/controller.pid"
    for _ in $(seq 50); do
        as vic hosts ls
        [[ $RC -eq 0 ]] && return 0
        sleep 0.2
    done
    echo "controller did not start:" >&2
    tail -20 "$WORK/controller.log" >&2
    return 1
}
# Agent I in its namespace; extra arguments go to roomy-agent.
start_agent() {
    local i=$1
    shift
    ip netns exec "$PREFIX-h$i" "$BIN/roomy-agent" --backend sim --sim-containers 3 --no-socket \
        --listen "10.199.$i.2:7444" --tls-cert "$WORK/pki/agents/host$i.pem" \
        --tls-key "$WORK/pki/agents/host$i.key" --tls-ca "$WORK/pki/ca.pem" \
        --state-dir "$WORK/state$i" --metrics-listen "10.199.$i.2:9787" "$@" \
        >>"$WORK/agent$i.log" 2>&1 &
    echo $! >"$WORK/agent$i.pid"
}
stop_agent() { kill "$(<"$WORK/agent$1.pid")"; wait "$(<"$WORK/agent$1.pid")" 2>/dev/null; }
# One sample of agent I's metrics (NAME{LABELS} exactly as exported), or 0.
agent_metric() {
    curl -s --max-time 2 "http://10.199.$1.2:9787/metrics" |
        awk -v name="$2 " 'index($0, name) == 1 {v=$NF} END {print v+0}'
}
# Wait up to SECONDS for a shell condition (a string, evaluated each time).
wait_for() {
    local seconds=$1 condition=$2
    for _ in $(seq $((seconds * 5))); do
        eval "$condition" && return 0
        sleep 0.2
    done
    return 1
}

stop_controller() { kill "$(<"$WORK/controller.pid")"; wait "$(<"$WORK/controller.pid")" 2>/dev/null; }

# ------------------------------------------------------------------ setup
# Test traffic must never leave this machine: with a test link down, packets
# for the test hosts hit this blackhole instead of the default route.
ip route add blackhole 10.199.0.0/16 metric 4000 || exit 1
"$BIN/roomyctl" certs init --out "$WORK/pki" --host host1 --host host2 --host host3 \
    --user alice:admin --user olga:operator --user vic:viewer >/dev/null || exit 1
for i in 1 2 3; do
    ns=$PREFIX-h$i
    ip netns add "$ns"
    ip link add "$PREFIX-v$i" type veth peer name eth0 netns "$ns"
    ip addr add "10.199.$i.1/24" dev "$PREFIX-v$i"
    ip link set "$PREFIX-v$i" up
    ip -n "$ns" addr add "10.199.$i.2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    start_agent "$i"
done
sed -e 's/^listen = .*/listen = "127.0.0.1:7443"/' -e 's/^agent_timeout_ms = .*/agent_timeout_ms = 1500/' \
    "$WORK/pki/controller.toml" >"$WORK/controller.toml"
printf 'metrics_listen = "127.0.0.1:9788"\n' | cat - "$WORK/controller.toml" >"$WORK/c.toml"
mv "$WORK/c.toml" "$WORK/controller.toml"
for i in 1 2; do
    printf '\n[[hosts]]\nname = "host%s"\naddress = "10.199.%s.2:7444"\n' "$i" "$i" >>"$WORK/controller.toml"
done
# A policy from the file (it selects no host), and a webhook that fails
# twice before it accepts.
printf '\n[[policies]]\nname = "from-config"\nhosts = "db*"\nat = "90%%"\ngrow = "1G"\nmax = "100G"\n' >>"$WORK/controller.toml"
# max_attempts: enough retries (~2 min) to outlast the receiver's outage
# across a failover, below.
printf '\n[[webhooks]]\nname = "sink"\nurl = "http://127.0.0.1:9799/hook"\nevents = ["grown", "skipped"]\nmax_attempts = 20\n' >>"$WORK/controller.toml"
python3 webhook_sink.py 9799 2 "$WORK/webhook.jsonl" &
echo $! >"$WORK/sink.pid"
start_controller || exit 1

# ------------------------------------------------------------------ tests
echo "=== registry and fan-out"
as alice hosts add host3 10.199.3.2:7444
check "admin adds a host" test "$RC" -eq 0
as vic ls
check "viewer ls exit 0" test "$RC" -eq 0
check "ls shows 3 hosts x 3 containers" test "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 9
check "ls has a HOST column" grep -q '^host2  c1 ' <<<"$OUT"
as vic ls host2
check "ls HOST shows only that host" test "$(grep -c '^host2 ' <<<"$OUT")" -eq 3 -a "$(grep -c '^host1 ' <<<"$OUT")" -eq 0
as vic ls -o json
check "ls -o json parses" python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); assert len(d["containers"]) == 9 and d["errors"] == []' <<<"$OUT"
# ls answers from the lists the agents' inventory streams keep current.
ctl_lists() { curl -s --max-time 2 http://127.0.0.1:9788/metrics | awk '/^roomy_host_inventory_streaming/ {n += $2} END {print n + 0}'; }
check "the controller keeps the 3 hosts' lists" wait_for 10 'test "$(ctl_lists)" -eq 3'
as vic ls
check "ls from the kept lists: 9 rows" test "$RC" -eq 0 -a "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 9
as vic ls --fresh
check "ls --fresh (every agent asked now): 9 rows" test "$RC" -eq 0 -a "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 9

echo "=== a host cut off answers as an error row, within the deadline"
# Cut host2 off inside its namespace: the host side loses carrier and
# connections hang until the controller's deadline.
ip -n "$PREFIX-h2" link set eth0 down
t0=$(date +%s%N)
as vic ls --fresh
t1=$(date +%s%N)
check "ls --fresh with host2 down exit 0" test "$RC" -eq 0
check "ls --fresh within deadline (<3 s)" test $(((t1 - t0) / 1000000)) -lt 3000
check "ls --fresh still lists host1 and host3" test "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 6
check "ls --fresh names host2 as not answering" grep -q "host host2 did not answer" <<<"$OUT"
# Plain ls shows host2's kept list until its stream is found dead: the
# connection's keepalive (a ping every 5 s, answered within the 1.5 s
# deadline here); then host2 is asked, and named as not answering.
check "ls names host2 as not answering once its stream is found dead" \
    wait_for 15 'as vic ls; grep -q "host host2 did not answer" <<<"$OUT" && test "$(grep -c " c[0-9] " <<<"$OUT")" -eq 6'
as vic hosts ls
check "hosts ls: host2 unreachable since" grep -q "^host2 .*unreachable since 20" <<<"$OUT"
check "hosts ls: host1 up" grep -q "^host1 .* up" <<<"$OUT"
as olga resize host2/c0 +1G
check "resize to a cut-off host exit 4" test "$RC" -eq 4
check "resize to a cut-off host says unreachable" grep -q "host2: agent unreachable" <<<"$OUT"
ip -n "$PREFIX-h2" link set eth0 up
sleep 1
as vic ls
check "host2 back: 9 rows" test "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 9
as vic hosts ls
check "hosts ls: host2 up again" grep -q "^host2 .* up" <<<"$OUT"

echo "=== routing, roles, audit"
as olga resize host1/c0 +1G
check "operator resize exit 0" test "$RC" -eq 0
check "operator resize message" grep -q "grew c0 from 2 GiB to 3 GiB" <<<"$OUT"
# Read your writes: the next ls shows the resize, though host1's kept list
# was read before it (the resize's generation is newer: host1 is asked).
as vic ls host1 -o json
check "ls right after the resize shows 3 GiB" python3 -c '
import json, sys
d = json.load(sys.stdin)
c0 = [c for c in d["containers"] if c["name"] == "c0"]
assert len(c0) == 1 and c0[0]["fs_size_bytes"] == 3 << 30, c0
' <<<"$OUT"
as vic inspect host1/c0 -o json
check "inspect shows 3G" grep -q '"fs_size_bytes": 3221225472' <<<"$OUT"
as vic resize host1/c1 +1G
check "viewer resize exit 3" test "$RC" -eq 3
check "viewer resize says why" grep -q "vic is viewer and resize needs operator" <<<"$OUT"
as vic inspect host1/c1 -o json
check "viewer resize changed nothing" grep -q '"fs_size_bytes": 2147483648' <<<"$OUT"
as olga hosts add host9 10.199.9.2:7444
check "operator hosts add exit 3" test "$RC" -eq 3
as olga resize host9/c0 +1G
check "unknown host exit 3" test "$RC" -eq 3
check "unknown host message" grep -q 'no host "host9"' <<<"$OUT"
as olga resize host1/nosuch +1G
check "unknown container exit 3" test "$RC" -eq 3
check "unknown container message" grep -q 'no container "nosuch"' <<<"$OUT"
as olga resize host1 +1G
check "target without container exit 3" test "$RC" -eq 3
as olga resize host1/c0 1G
check "shrink through the controller exit 3" test "$RC" -eq 3
as vic audit
check "audit lists the resize" grep -q "olga .*resize .*host1/c0 .*2 GiB -> 3 GiB .*ok" <<<"$OUT"
check "audit lists the denied resize" grep -q "vic .*resize .*host1/c1 .*PermissionDenied" <<<"$OUT"
check "audit lists hosts add" grep -q "alice .*hosts add .*host3 .*ok" <<<"$OUT"

echo "=== pools across the fleet"
as vic pool ls
check "pool ls: one row per host" test "$(grep -c ' sim-pool ' <<<"$OUT")" -eq 3
as olga pool grow host1 --data +10G
check "operator pool grow exit 0" test "$RC" -eq 0
check "pool grow message" grep -q "grew pool sim-pool online: data 100 GiB -> 110 GiB" <<<"$OUT"
as vic pool grow host1 --data +1G
check "viewer pool grow exit 3" test "$RC" -eq 3
as olga pool grow host1 --data 1G
check "pool shrink exit 3" test "$RC" -eq 3
as vic audit
check "audit lists the pool growth" grep -q "olga .*pool grow .*host1 .*100 GiB -> 110 GiB .*ok" <<<"$OUT"

echo "=== policies: refused when invalid, nothing changed"
as olga policy set bad --at 120% --grow 50% --max 4G
check "threshold over 100% exit 3" test "$RC" -eq 3
check "threshold over 100% says what to fix" grep -q "at most 100" <<<"$OUT"
as olga policy set bad --at 80% --grow 0% --max 4G
check "zero step exit 3" test "$RC" -eq 3 -a "$(grep -c "the step is zero" <<<"$OUT")" -eq 1
as olga policy set bad --at 80% --grow 50% --max 4G --containers 'c[0-'
check "selector that does not parse exit 3" test "$RC" -eq 3 -a "$(grep -c "never closes" <<<"$OUT")" -eq 1
as olga policy set bad --hosts host1 --at 80% --grow 50% --max 2500M
check "cap below a selected container exit 3" test "$RC" -eq 3
check "cap refusal names the container" grep -q "host1/c0 is 3 GiB, above the cap" <<<"$OUT"
as vic policy set bad --at 80% --grow 50% --max 4G
check "viewer policy set exit 3" test "$RC" -eq 3
as vic policy ls
check "refused policies changed nothing" test "$(grep -c '^bad ' <<<"$OUT")" -eq 0
check "config policy listed with source config" grep -q "^from-config .* config$" <<<"$OUT"
as olga policy rm from-config
check "config policy cannot be removed from the cli (exit 3)" test "$RC" -eq 3
as vic audit
check "refused policy set is audited" grep -q "olga .*policy set .*bad .*InvalidArgument" <<<"$OUT"

echo "=== policies: agents enforce them, with the controller down too"
# host3's containers fill at 150 MiB/s from now on. The stop comes while
# the controller holds host3's Sync and inventory streams: they end with
# the agent's stop, which must not wait out its 10 s grace.
t_stop=$(date +%s%N)
stop_agent 3
stop_ms=$((($(date +%s%N) - t_stop) / 1000000))
check "an agent whose streams a controller holds stops in $stop_ms ms (under 5 s; its grace is 10 s)" test "$stop_ms" -lt 5000
check "and not by the grace's cut" bash -c "! grep -q 'still busy' '$WORK/agent3.log'"
start_agent 3 --sim-fill-rate 150M
as olga policy set grow80 --hosts host3 --at 80% --grow 50% --max 4G --horizon 0 --cooldown 0
check "operator policy set exit 0" test "$RC" -eq 0
check "policy set says what it does" grep -q "created policy grow80: grow by 50% when used >= 80%, up to 4 GiB" <<<"$OUT"
check "the agent holds the policy" wait_for 10 'test "$(agent_metric 3 roomy_policies)" -eq 1'
check "host1 does not" test "$(agent_metric 1 roomy_policies)" -eq 0
as vic policy explain host1/c1
check "explain: host1 is not selected" grep -q "decision: none" <<<"$OUT"
check "explain shows the fill rate the agent measures" wait_for 5 'as vic policy explain host3/c0; grep -Eq "filling at 1[45][0-9](\.[0-9]+)? MiB/s" <<<"$OUT"'
check "explain names the policy" grep -q "^host3/c0: policy grow80" <<<"$OUT"
# Who fills next: host3's containers (150 MiB/s, growing up to the 4G cap)
# before host1's and host2's, which are not filling.
as vic top --once -o json
check "top: the filling containers first, time to full counted up to the cap" python3 -c '
import json, sys
d = json.load(sys.stdin)
cs = d["containers"]
first, rest = cs[:3], cs[3:]
assert [c["host"] for c in first] == ["host3"] * 3, [c["host"] for c in cs]
assert all(c["policy"] == "grow80" and c["cap_bytes"] == 4 << 30 for c in first), first
t = [c["full_in_seconds"] for c in first]
assert all(0 < s <= 40 for s in t) and t == sorted(t), t
assert rest and all(c["full_in_seconds"] is None for c in rest), rest
assert {p["host"] for p in d["pools"]} >= {"host1", "host2", "host3"}, d["pools"]
' <<<"$OUT"
# Not a terminal: one shot without --once (timeout: a loop would hang here).
OUT=$(timeout 20 "$BIN/roomyctl" --controller 127.0.0.1:7443 --cert "$WORK/pki/users/vic.pem" \
    --key "$WORK/pki/users/vic.key" --ca "$WORK/pki/ca.pem" top 2>&1)
RC=$?
check "top on a pipe prints once and exits 0" test "$RC" -eq 0
check "top's table: host3 on top, with its policy and cap" bash -c 'sed -n 2p <<<"$1" | grep -Eq "^host3 +c[0-2] .* grow80 +4 GiB$"' _ "$OUT"
check "top shows the pools too" grep -q "^HOST  *POOL  *DATA" <<<"$OUT"
# The kept lists carry fill rates as of their last read: within the
# agent's 10 s usage interval of the writes that started with host3's
# agent.
check "ls --sort full: host3 first" wait_for 15 'as vic ls --sort full; sed -n 2p <<<"$OUT" | grep -q "^host3 "'
as vic top host9 --once
check "top of an unknown host: exit 3" test "$RC" -eq 3
stop_controller
# 2 GiB at 0.5 GiB used: 80% in ~8 s, then 3 GiB, then the 4 GiB cap.
check "growth goes on with the controller down" wait_for 40 'test "$(agent_metric 3 '\''roomy_policy_actions_total{policy="grow80",action="grown"}'\'')" -ge 6'
check "cap reached while the controller is down" wait_for 20 'test "$(agent_metric 3 '\''roomy_policy_skips_total{policy="grow80",reason="cap_reached"}'\'')" -ge 3'
check "events buffered on the agent" test "$(agent_metric 3 roomy_events_buffered)" -ge 9
start_controller
check "buffered events delivered once the controller is back" wait_for 10 'test "$(agent_metric 3 roomy_events_buffered)" -eq 0'
as vic audit --limit 100
check "every growth audited as policy:grow80@host3" test "$(grep -c "policy:grow80@host3 .*resize .*host3/c[0-2] .* ok" <<<"$OUT")" -eq 6
check "audit shows 2 GiB -> 3 GiB" grep -q "policy:grow80@host3 .*host3/c0 .*2 GiB -> 3 GiB" <<<"$OUT"
as vic events --limit 100 -o json
check "events: grown and cap_reached, in order, each once" python3 -c '
import json, sys
ev = [json.loads(l) for l in sys.stdin if l.strip()]
h3 = [e for e in ev if e["host"] == "host3"]
seqs = [e["seq"] for e in h3]
assert seqs == sorted(set(seqs)), seqs
assert sum(e["kind"] == "grown" for e in h3) == 6, h3
caps = [e for e in h3 if e["reason"] == "cap_reached"]
assert len(caps) == 3 and "cap 4 GiB" in caps[0]["message"], caps
' <<<"$OUT"
as vic inspect host3/c2 -o json
check "inspect shows the cap size" grep -q '"fs_size_bytes": 4294967296' <<<"$OUT"
as vic policy explain host3/c0
check "explain at the cap: skip (cap_reached)" grep -q "decision: skip (cap_reached)" <<<"$OUT"
check "webhook got a grown event after 2 failures" wait_for 15 'grep -q '\''"kind":"grown".*"host":"host3"\|"host":"host3".*"kind":"grown"'\'' "$WORK/webhook.jsonl" 2>/dev/null'
check "webhook text line for chat" grep -q 'roomy: host3/c[0-2] grown 2 GiB' "$WORK/webhook.jsonl"
OUT=$(curl -s --max-time 2 http://127.0.0.1:9788/metrics)
check "controller metrics: host up" grep -q '^roomy_host_up{host="host1"} 1' <<<"$OUT"
check "controller metrics: events by kind" grep -q '^roomy_events_total{host="host3",kind="grown",reason="used_percent"} 6' <<<"$OUT"
check "controller metrics: webhook retried" grep -q '^roomy_webhook_deliveries_total{webhook="sink",result="retried"} 2' <<<"$OUT"
OUT=$(curl -s --max-time 2 http://10.199.3.2:9787/metrics)
check "agent metrics: container size" grep -q '^roomy_container_size_bytes{container="c0",.*} 4294967296' <<<"$OUT"
check "agent metrics: cap of the policy" grep -q '^roomy_container_max_size_bytes{container="c0",.*policy="grow80"} 4294967296' <<<"$OUT"
check "agent metrics: resize histogram" grep -q '^roomy_resize_duration_seconds_count{source="policy"} 6' <<<"$OUT"
timeout 5 "$BIN/roomyctl" --controller 127.0.0.1:7443 --cert "$WORK/pki/users/vic.pem" \
    --key "$WORK/pki/users/vic.key" --ca "$WORK/pki/ca.pem" events --follow --limit 0 >"$WORK/follow.out" 2>&1 &
sleep 1
as olga policy set grow80 --hosts host3 --at 80% --grow 50% --max 6G --horizon 0 --cooldown 0
check "replaced policy exit 0" grep -q "replaced policy grow80" <<<"$OUT"
check "events --follow streams the growth past the old cap" wait_for 10 'grep -q "host3/c[0-2]  grown .*4 GiB -> 6 GiB" "$WORK/follow.out"'
# A policy's growth is not routed through the controller: ls shows it from
# host3's kept list, which its stream brings up to date with messages of
# only the rows that changed (whole lists only at each stream's start).
ctl_sample() { curl -s --max-time 2 http://127.0.0.1:9788/metrics | awk -v k="$1" '$1 == k {print $2; f = 1} END {if (!f) print 0}'; }
# Whether all 3 containers of an ls -o json (stdin) are $1 bytes.
all_at() { python3 -c 'import json, sys; cs = json.load(sys.stdin)["containers"]; sys.exit(0 if len(cs) == 3 and all(c["fs_size_bytes"] == int(sys.argv[1]) for c in cs) else 1)' "$1"; }
check "ls shows the policy's 6 GiB from host3's kept list" wait_for 15 'as vic ls host3 -o json; all_at $((6 << 30)) <<<"$OUT"'
check "host3's stream sent changes only after its first list" test "$(ctl_sample 'roomy_host_inventory_messages_total{host="host3",kind="changes"}')" -ge 1 -a "$(ctl_sample 'roomy_host_inventory_messages_total{host="host3",kind="whole"}')" -ge 1
as olga policy rm grow80
check "policy rm exit 0" test "$RC" -eq 0
check "agents drop a removed policy" wait_for 5 'test "$(agent_metric 3 roomy_policies)" -eq 0'

echo "=== pool policies"
as olga policy set poolp --pool --hosts host2 --at 1% --grow 10G --max 105G --cooldown 0
check "pool policy set exit 0" test "$RC" -eq 0
check "pool policy grows host2's pool to its cap" wait_for 10 'as vic pool ls host2; grep -q "^host2  sim-pool  105 GiB " <<<"$OUT"'
check "pool growth audited as policy:poolp@host2" wait_for 5 'as vic audit; grep -q "policy:poolp@host2 .*pool grow .*host2 .*100 GiB -> 105 GiB .*ok" <<<"$OUT"'
check "pool at its cap: a skipped event says so" wait_for 10 'as vic events --host host2 -o json; grep -q "\"target\":\"pool\".*\"reason\":\"cap_reached\"" <<<"$OUT"'
as vic policy explain host2/pool
check "explain HOST/pool: skip (cap_reached)" grep -q "decision: skip (cap_reached)" <<<"$OUT"
as vic pool ls host1
check "pool policy left host1's pool alone" grep -q "^host1  sim-pool  110 GiB " <<<"$OUT"
as olga policy rm poolp

echo "=== controller restart keeps hosts and audit"
stop_controller
start_controller
as vic hosts ls
check "host3 (added by cli) survives restart" grep -q "^host3 " <<<"$OUT"
as vic audit
check "audit survives restart" grep -q "olga .*resize .*host1/c0" <<<"$OUT"
as alice hosts rm host3
check "admin hosts rm exit 0" test "$RC" -eq 0

echo "=== mutual TLS refusals"
"$BIN/roomyctl" certs init --out "$WORK/other" --user mallory:admin --host host1 >/dev/null
OUT=$("$BIN/roomyctl" --controller 127.0.0.1:7443 --cert "$WORK/other/users/mallory.pem" \
    --key "$WORK/other/users/mallory.key" --ca "$WORK/pki/ca.pem" ls 2>&1)
RC=$?
check "cert from another CA refused by controller (exit 3)" test "$RC" -eq 3
check "other CA: client says the certificate was refused" grep -qi "certificate" <<<"$OUT"
"$BIN/roomyctl" certs issue --dir "$WORK/pki" --not-after 2020-01-01T00:00:00Z user eve >/dev/null
as eve ls
check "expired client cert refused (exit 3)" test "$RC" -eq 3
OUT=$(curl -sS --max-time 5 --cacert "$WORK/pki/ca.pem" --resolve roomy-controller:7443:127.0.0.1 \
    https://roomy-controller:7443/ 2>&1)
check "no client cert: handshake refused" test $? -ne 0
OUT=$(curl -sS --max-time 5 --http2-prior-knowledge http://127.0.0.1:7443/roomy.v1.Controller/ListHosts 2>&1)
check "plaintext to controller refused" test $? -ne 0
check "controller logged the refusals" grep -qi "handshake" "$WORK/controller.log"
# Agents accept only the controller's identity.
OUT=$(curl -sS --max-time 5 --cacert "$WORK/pki/ca.pem" --cert "$WORK/pki/users/alice.pem" \
    --key "$WORK/pki/users/alice.key" --resolve host1:7444:10.199.1.2 --http2 https://host1:7444/ 2>&1)
check "agent refuses a user certificate" test $? -ne 0
check "agent logged the refused identity" grep -q "alice" "$WORK/agent1.log"
OUT=$(curl -sS --max-time 5 --http2-prior-knowledge http://10.199.1.2:7444/ 2>&1)
check "plaintext to agent refused" test $? -ne 0
OUT=$(curl -sS --max-time 5 --cacert "$WORK/pki/ca.pem" --resolve host1:7444:10.199.1.2 --http2 https://host1:7444/ 2>&1)
check "agent refuses a client without a certificate" test $? -ne 0
# An agent whose certificate is not the host's name is refused by the controller.
as alice hosts add wrongname 10.199.1.2:7444
as vic ls wrongname
check "agent with the wrong certificate name is an error row" grep -q "host wrongname did not answer" <<<"$OUT"
as alice hosts rm wrongname

OUT=$(curl -sS --max-time 5 --cacert "$WORK/other/ca.pem" --cert "$WORK/other/agents/host1.pem" \
    --key "$WORK/other/agents/host1.key" --resolve host1:7444:10.199.1.2 --http2 https://host1:7444/ 2>&1)
check "agent refuses a certificate from another CA" test $? -ne 0
check "agent logged the other CA" grep -qi "UnknownIssuer\|unknown" "$WORK/agent1.log"

echo "=== certificate kinds: a name is not a permission"
OUT=$("$BIN/roomyctl" certs issue --dir "$WORK/pki" user roomy-controller 2>&1)
RC=$?
check "certs issue refuses a user named roomy-controller" test "$RC" -ne 0
check "the refusal says the name is reserved" grep -q "reserved for the controller" <<<"$OUT"
check "the refusal wrote nothing" test ! -e "$WORK/pki/users/roomy-controller.pem"
OUT=$("$BIN/roomyctl" certs issue --dir "$WORK/pki" agent ROOMY-CONTROLLER 2>&1)
check "certs issue refuses an agent named like the controller" grep -q "reserved" <<<"$OUT"
# What an older roomyctl (or openssl) would sign: CN roomy-controller, a
# client certificate marked user (forged-user), and one with the
# controller's key usages and no kind at all (forged-none).
forge() { # NAME EXTENSIONS
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=roomy-controller \
        -keyout "$WORK/$1.key" -out "$WORK/$1.csr" 2>/dev/null &&
        openssl x509 -req -in "$WORK/$1.csr" -CA "$WORK/pki/ca.pem" -CAkey "$WORK/pki/ca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -days 2 -out "$WORK/$1.pem" \
            -extfile <(printf '%s\n' "$2") 2>/dev/null
}
forge forged-user $'extendedKeyUsage=clientAuth\nsubjectAltName=DNS:roomy-controller,URI:urn:roomy:kind:user'
forge forged-none $'extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:roomy-controller'
check "forged certificates made" test -s "$WORK/forged-user.pem" -a -s "$WORK/forged-none.pem"
for i in 1 2 3; do
    for f in forged-user forged-none; do
        OUT=$(curl -sS --max-time 5 --http2 --cacert "$WORK/pki/ca.pem" --cert "$WORK/$f.pem" --key "$WORK/$f.key" \
            --resolve "host$i:7444:10.199.$i.2" -H 'content-type: application/grpc' -H 'te: trailers' \
            --data-binary @<(printf '\0\0\0\0\0') "https://host$i:7444/roomy.v1.Agent/Inspect" -o /dev/null 2>&1)
        check "agent host$i refuses $f named roomy-controller" test $? -ne 0
    done
    check "agent host$i logged why (user certificate)" grep -q '"roomy-controller" holds a user certificate' "$WORK/agent$i.log"
    check "agent host$i logged why (no kind)" grep -q '"roomy-controller" holds a certificate without a Roomy kind' "$WORK/agent$i.log"
done
OUT=$("$BIN/roomyctl" --controller 127.0.0.1:7443 --cert "$WORK/forged-user.pem" --key "$WORK/forged-user.key" \
    --ca "$WORK/pki/ca.pem" ls 2>&1)
RC=$?
check "controller refuses the forged user certificate (exit 3)" test "$RC" -eq 3
check "controller says what was presented" grep -q "user certificate with the controller's reserved name" <<<"$OUT"
as vic inspect host1/c0 -o json
before=$OUT
OUT=$("$BIN/roomyctl" --controller 127.0.0.1:7443 --cert "$WORK/forged-none.pem" --key "$WORK/forged-none.key" \
    --ca "$WORK/pki/ca.pem" resize host1/c0 100G 2>&1)
RC=$?
check "controller refuses a certificate without a kind (exit 3)" test "$RC" -eq 3
check "controller names the missing kind" grep -q "without a Roomy kind" <<<"$OUT"
as vic audit --limit 20
check "controller audited the forged read" grep -q "roomy-controller .* ls .*PermissionDenied" <<<"$OUT"
check "controller audited the forged resize" grep -q "roomy-controller .*resize .*host1/c0 .*PermissionDenied" <<<"$OUT"
as vic inspect host1/c0 -o json
check "the refused resize changed nothing" test "$OUT" = "$before"

echo "=== gRPC health and reflection (what grpc_health_probe and grpcurl use)"
# One gRPC message over HTTP/2 with curl: a 5-byte frame header, then the
# protobuf. Health Check with an empty request; SERVING is field 1 = 1.
grpc() { # ADDR NAME CERT KEY PATH BODY-HEX
    printf '%s' "$6" | xxd -r -p >"$WORK/req.bin"
    curl -sS --max-time 5 --http2 --cacert "$WORK/pki/ca.pem" --cert "$3" --key "$4" \
        --resolve "$2:${1##*:}:${1%:*}" -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary @"$WORK/req.bin" "https://$2:${1##*:}$5" -o "$WORK/resp.bin" 2>&1
}
grpc 127.0.0.1:7443 roomy-controller "$WORK/pki/users/vic.pem" "$WORK/pki/users/vic.key" \
    /grpc.health.v1.Health/Check 0000000000
check "controller health: SERVING" test "$(xxd -p "$WORK/resp.bin")" = 00000000020801
grpc 10.199.1.2:7444 host1 "$WORK/pki/controller.pem" "$WORK/pki/controller.key" \
    /grpc.health.v1.Health/Check 0000000000
check "agent health: SERVING" test "$(xxd -p "$WORK/resp.bin")" = 00000000020801
grpc 127.0.0.1:7443 roomy-controller "$WORK/pki/users/vic.pem" "$WORK/pki/users/vic.key" \
    /grpc.reflection.v1.ServerReflection/ServerReflectionInfo 00000000023a00
check "controller reflection lists roomy.v1.Controller" grep -aq "roomy.v1.Controller" "$WORK/resp.bin"
# v1alpha too: grpcio-reflection, older grpcurl and IDE plugins speak only it.
grpc 127.0.0.1:7443 roomy-controller "$WORK/pki/users/vic.pem" "$WORK/pki/users/vic.key" \
    /grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo 00000000023a00
check "controller reflection v1alpha lists roomy.v1.Controller" grep -aq "roomy.v1.Controller" "$WORK/resp.bin"
grpc 10.199.1.2:7444 host1 "$WORK/pki/controller.pem" "$WORK/pki/controller.key" \
    /grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo 00000000023a00
check "agent reflection v1alpha lists roomy.v1.Agent and grpc.health.v1.Health, not the Controller" \
    bash -c "grep -aq 'roomy.v1.Agent' '$WORK/resp.bin' && grep -aq 'grpc.health.v1.Health' '$WORK/resp.bin' && ! grep -aq 'roomy.v1.Controller' '$WORK/resp.bin'"

echo "=== roomyctl says what failed, within its --timeout"
# An agent's port given as --controller: it has no Controller service.
OUT=$("$BIN/roomyctl" --controller 10.199.1.2:7444 --server-name host1 --cert "$WORK/pki/controller.pem" \
    --key "$WORK/pki/controller.key" --ca "$WORK/pki/ca.pem" hosts ls 2>&1)
RC=$?
check "agent port as --controller: exit 1" test "$RC" -eq 1
check "agent port as --controller: says Unimplemented and what to check" grep -q "does not offer this call (Unimplemented): is --controller pointing at an agent's port" <<<"$OUT"
# A controller address that accepts and never answers: --timeout 1 holds.
python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 7499)); s.listen(8); c=s.accept(); time.sleep(30)' &
echo $! >"$WORK/hang.pid"
sleep 0.5
t0=$(date +%s%N)
OUT=$("$BIN/roomyctl" --timeout 1 --controller 127.0.0.1:7499 --cert "$WORK/pki/users/vic.pem" \
    --key "$WORK/pki/users/vic.key" --ca "$WORK/pki/ca.pem" ls 2>&1)
RC=$?
t1=$(date +%s%N)
kill "$(<"$WORK/hang.pid")" 2>/dev/null
check "silent controller: exit 4 (unreachable)" test "$RC" -eq 4
check "silent controller: gave up within --timeout 1 (took $(((t1 - t0) / 1000000)) ms)" test $(((t1 - t0) / 1000000)) -lt 3500

echo "=== roomyctl settings and completions"
OUT=$(ROOMY_CONFIG="$WORK/pki/users/vic.toml" "$BIN/roomyctl" hosts ls 2>&1)
check "config file from certs init works (ROOMY_CONFIG)" grep -q "^host1 " <<<"$OUT"
OUT=$(ROOMY_CONFIG="$WORK/pki/users/vic.toml" "$BIN/roomyctl" --controller 127.0.0.1:1 hosts ls 2>&1)
check "a flag wins over the config file" test $? -eq 4
OUT=$(ROOMY_CONTROLLER=127.0.0.1:1 ROOMY_CONFIG="$WORK/pki/users/vic.toml" "$BIN/roomyctl" hosts ls 2>&1)
check "the environment wins over the config file" test $? -eq 4
OUT=$("$BIN/roomyctl" ls --bogus 2>&1)
check "usage error exit 2" test $? -eq 2
check "bash completions" bash -c "set -o pipefail; '$BIN/roomyctl' completions bash | grep -q _roomyctl"

echo "=== a list larger than gRPC's default 4 MiB"
# 20,000 containers on one agent make a 5 MB Inspect answer: refused with
# "decoded message length too large" by roomyctl (and by the controller,
# for the fleet's 26 MB ls of 10,000 hosts) before the limit was raised.
"$BIN/roomy-agent" --backend sim --sim-containers 20000 --socket "$WORK/big.sock" \
    --state-dir "$WORK/big-state" 2>"$WORK/big.log" &
big=$!
wait_for 20 'test -S "$WORK/big.sock"'
OUT=$("$BIN/roomyctl" --agent "unix://$WORK/big.sock" ls -o json 2>&1)
check "ls of 20,000 containers on one agent" test "$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["containers"]))' <<<"$OUT" 2>/dev/null)" = 20000
kill "$big"
wait "$big" 2>/dev/null

echo "=== certificates reload without restart"
old=$(openssl s_client -connect 127.0.0.1:7443 -servername roomy-controller -cert "$WORK/pki/users/vic.pem" \
    -key "$WORK/pki/users/vic.key" -CAfile "$WORK/pki/ca.pem" </dev/null 2>/dev/null | openssl x509 -noout -serial)
"$BIN/roomyctl" certs issue --dir "$WORK/pki" controller >/dev/null
kill -HUP "$(<"$WORK/controller.pid")"
sleep 1
new=$(openssl s_client -connect 127.0.0.1:7443 -servername roomy-controller -cert "$WORK/pki/users/vic.pem" \
    -key "$WORK/pki/users/vic.key" -CAfile "$WORK/pki/ca.pem" </dev/null 2>/dev/null | openssl x509 -noout -serial)
check "controller serves the new certificate" test -n "$new" -a "$old" != "$new"
as vic ls
check "clients and agents still work after reload" test "$RC" -eq 0 -a "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 6

echo "=== three controllers on a 3-member etcd cluster, over mutual TLS"
# Controller C runs in a network namespace of its own (10.199.4.2), so that
# it can be cut off later. The host routes between the test's veths:
# forwarding on these links only (the machine's net.ipv4.ip_forward is left
# alone; the settings go with the links), and the agents learn the way back.
CNS=$PREFIX-c
ip netns add "$CNS"
ip link add "$PREFIX-vc" type veth peer name eth0 netns "$CNS"
ip addr add 10.199.4.1/24 dev "$PREFIX-vc"
ip link set "$PREFIX-vc" up
ip -n "$CNS" addr add 10.199.4.2/24 dev eth0
ip -n "$CNS" link set eth0 up
ip -n "$CNS" link set lo up
ip -n "$CNS" route add 10.199.0.0/16 via 10.199.4.1
sysctl -qw "net.ipv4.conf.$PREFIX-vc.forwarding=1"
for i in 1 2 3; do
    sysctl -qw "net.ipv4.conf.$PREFIX-v$i.forwarding=1"
    ip -n "$PREFIX-h$i" route add 10.199.4.0/24 via "10.199.$i.1"
done
# etcd's own PKI (openssl, as an operator would make one): server
# certificates for 127.0.0.1 and for C's side of the host (10.199.4.1),
# peers and clients both authenticated.
E=$WORK/etcd-pki
mkdir -p "$E"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=etcd-test-ca \
    -keyout "$E/ca.key" -out "$E/ca.pem" 2>/dev/null
etcd_cert() { # NAME CN EXTENSIONS
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$E/$1.key" -out "$E/$1.csr" 2>/dev/null &&
        openssl x509 -req -in "$E/$1.csr" -CA "$E/ca.pem" -CAkey "$E/ca.key" -CAcreateserial -days 2 \
            -extfile <(printf '%s\n' "$3") -out "$E/$1.pem" 2>/dev/null
}
etcd_cert member etcd "subjectAltName=IP:127.0.0.1,IP:10.199.4.1
extendedKeyUsage=serverAuth,clientAuth"
etcd_cert client roomy-controller "extendedKeyUsage=clientAuth"
cluster=e1=https://127.0.0.1:23801,e2=https://127.0.0.1:23802,e3=https://127.0.0.1:23803
start_etcd() { # MEMBER
    etcd --name "e$1" --data-dir "$WORK/etcd$1" \
        --listen-client-urls "https://127.0.0.1:2379$1,https://10.199.4.1:2379$1" \
        --advertise-client-urls "https://127.0.0.1:2379$1" \
        --listen-peer-urls "https://127.0.0.1:2380$1" --initial-advertise-peer-urls "https://127.0.0.1:2380$1" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --cert-file "$E/member.pem" --key-file "$E/member.key" --trusted-ca-file "$E/ca.pem" --client-cert-auth \
        --peer-cert-file "$E/member.pem" --peer-key-file "$E/member.key" --peer-trusted-ca-file "$E/ca.pem" \
        --peer-client-cert-auth >>"$WORK/etcd$1.log" 2>&1 &
    echo $! >"$WORK/etcd$1.pid"
}
for m in 1 2 3; do start_etcd "$m"; done
etcd_healthy() {
    curl -s --max-time 2 --cacert "$E/ca.pem" --cert "$E/client.pem" --key "$E/client.key" \
        "https://127.0.0.1:2379$1/health" | grep -q '"health":"true"'
}
check "etcd: 3 members healthy" wait_for 60 'etcd_healthy 1 && etcd_healthy 2 && etcd_healthy 3'
etcd_healthy_from_c() {
    ip netns exec "$CNS" curl -s --max-time 2 --cacert "$E/ca.pem" --cert "$E/client.pem" --key "$E/client.key" \
        "https://10.199.4.1:2379$1/health" | grep -q '"health":"true"'
}
check "etcd answers from C's namespace too" wait_for 10 'etcd_healthy_from_c 1 && etcd_healthy_from_c 2 && etcd_healthy_from_c 3'

stop_controller
# host2's agent holds every resize 4 s (test-only failpoint), so that a
# resize can be in flight when its controller dies.
stop_agent 2
ROOMY_FAILPOINT=sim-resize=pause start_agent 2
# The webhook's receiver moves to where C reaches it too (the same file:
# what every leader delivered, in one place).
kill "$(<"$WORK/sink.pid")"
python3 webhook_sink.py 9799 0 "$WORK/webhook.jsonl" 10.199.4.1 &
echo $! >"$WORK/sink.pid"
# Controller A on 7443 (the address `as` uses), B on 7445, C in its
# namespace on 10.199.4.2:7447: the same file but for the listener, the
# metrics port and the store.
for c in A:127.0.0.1:7443:9788:127.0.0.1 B:127.0.0.1:7445:9789:127.0.0.1 C:10.199.4.2:7447:9791:10.199.4.1; do
    IFS=: read -r name ip port mport eip <<<"$c"
    {
        printf 'listen = "%s:%s"\nmetrics_listen = "%s:%s"\n' "$ip" "$port" "$ip" "$mport"
        grep -v -e '^store = ' -e '^listen = ' -e '^metrics_listen = ' "$WORK/controller.toml" |
            sed 's|^url = "http://127.0.0.1:9799/hook"|url = "http://10.199.4.1:9799/hook"|'
        printf '\n[etcd]\nendpoints = ["https://%s:23791", "https://%s:23792", "https://%s:23793"]\n' "$eip" "$eip" "$eip"
        printf 'ca = "%s"\ncert = "%s"\nkey = "%s"\ntimeout_ms = 3000\n' "$E/ca.pem" "$E/client.pem" "$E/client.key"
    } >"$WORK/controller-$name.toml"
done
ctl_addr() { sed -n 's/^listen = "\(.*\)"$/\1/p' "$WORK/controller-$1.toml"; }
# C runs, and its metrics are read, inside its namespace: they answer while it is cut off.
ctl_run() { [[ $1 == C ]] && echo ip netns exec "$CNS"; }
start_ctl() { # NAME
    local run
    read -ra run <<<"$(ctl_run "$1")"
    "${run[@]}" "$BIN/roomy-controller" --config "$WORK/controller-$1.toml" >>"$WORK/controller-$1.log" 2>&1 &
    echo $! >"$WORK/controller-$1.pid"
    CTL_ADDR=$(ctl_addr "$1") wait_for 20 'as vic hosts ls; test "$RC" -eq 0'
}
ctl_metric() { # NAME METRIC{LABELS}
    local run
    read -ra run <<<"$(ctl_run "$1")"
    "${run[@]}" curl -s --max-time 2 "http://$(sed -n 's/^metrics_listen = "\(.*\)"$/\1/p' "$WORK/controller-$1.toml")/metrics" |
        awk -v name="$2 " 'index($0, name) == 1 {v=$NF} END {print v+0}'
}
leaders() { # the names of the controllers that say they lead, one a line
    local n
    for n in A B C; do [[ $(ctl_metric "$n" roomy_controller_leader) == 1 ]] && echo "$n"; done
}
links() { # NAME: how many of the three agents' Sync links controller NAME holds
    local n=0 i
    for i in 1 2 3; do n=$((n + $(ctl_metric "$1" "roomy_host_sync_connected{host=\"host$i\"}"))); done
    echo "$n"
}
# The fleet so far moves over: its SQLite store copied into etcd.
sqlite_db=$(sed -n 's/^store = "\(.*\)"$/\1/p' "$WORK/controller.toml")
OUT=$("$BIN/roomy-controller" --config "$WORK/controller-A.toml" migrate --from "$sqlite_db" 2>&1)
check "migrate copies the SQLite store into etcd" grep -Eq "^copied 2 hosts, [0-9]+ policies, [1-9][0-9]* audit entries and [1-9][0-9]* events" <<<"$OUT"
OUT=$("$BIN/roomy-controller" --config "$WORK/controller-A.toml" migrate --from "$sqlite_db" 2>&1)
check "a second migrate is refused: the target is not empty" grep -q "copy into an empty one" <<<"$OUT"
# The oldest election key leads: A first, then C, then B, so that C is
# next in line when A dies (C is the one cut off later).
check "controller A starts on etcd" start_ctl A
check "and leads alone" wait_for 15 'test "$(leaders)" = A'
check "controller C starts in its own network namespace, on the same etcd" start_ctl C
check "controller B starts on the same etcd" start_ctl B
as vic audit --limit 1000
check "the SQLite era's audit is there" grep -q "olga .*resize .*host1/c0" <<<"$OUT"
check "exactly one of the three leads" wait_for 15 'test "$(leaders | wc -l)" -eq 1'
lead=$(leaders)
as alice hosts add host3 10.199.3.2:7444
check "a host added through A" test "$RC" -eq 0
check "is listed through B" wait_for 10 'CTL_ADDR=127.0.0.1:7445 as vic ls; test "$RC" -eq 0 -a "$(grep -c " c[0-9] " <<<"$OUT")" -eq 9'
check "and through C, from its namespace's address" wait_for 10 'CTL_ADDR=10.199.4.2:7447 as vic ls; test "$RC" -eq 0 -a "$(grep -c " c[0-9] " <<<"$OUT")" -eq 9'
check "the leader holds the three agents' links" wait_for 15 'test "$(links "$lead")" -eq 3'
for n in A B C; do
    [[ $n == "$lead" ]] || check "follower $n holds none" test "$(links "$n")" -eq 0
done
# The survivors: the two that do not lead; events --follow runs on one of them.
read -ra survivors <<<"$(printf '%s\n' B A C | grep -vx "$lead" | tr '\n' ' ')"
live=${survivors[0]}
timeout 120 "$BIN/roomyctl" --controller "$(ctl_addr "$live")" --cert "$WORK/pki/users/vic.pem" \
    --key "$WORK/pki/users/vic.key" --ca "$WORK/pki/ca.pem" events --follow --limit 0 -o json >"$WORK/follow-b.out" 2>&1 &
follow_b=$!
sleep 1
CTL_ADDR=127.0.0.1:7445 as olga policy set fill3 --hosts host3 --at 80% --grow 50% --max 64G --horizon 0 --cooldown 0
check "a policy set through B" test "$RC" -eq 0
check "reaches the agent through the leader" wait_for 15 'test "$(agent_metric 3 roomy_policies)" -eq 1'
check "host3 grows under it" wait_for 30 'test "$(agent_metric 3 '\''roomy_policy_actions_total{policy="fill3",action="grown"}'\'')" -ge 2'
followed() { grep -c '"host":"host3".*"kind":"grown"\|"kind":"grown".*"host":"host3"' "$WORK/follow-b.out"; }
check "events --follow on a follower streams the leader's events" wait_for 15 'test "$(followed)" -ge 1'

# The webhook's receiver goes down until a new leader is in place: the
# leader dies with a delivery it is retrying (its place is in etcd, so the
# next leader sends it; before, it died with the process).
kill "$(<"$WORK/sink.pid")"
webhook_retries() { ctl_metric "$lead" 'roomy_webhook_deliveries_total{webhook="sink",result="retried"}'; }
retried_before=$(webhook_retries)
check "the leader is retrying a webhook delivery" wait_for 60 'test "$(webhook_retries)" -gt "$retried_before"'
# The leader dies (SIGKILL: no goodbye, its lease runs out in etcd) while
# it routes a resize: host2's agent holds it 4 s, the kill comes meanwhile.
dead=$lead dead_addr=$(ctl_addr "$lead") live_addr=$(ctl_addr "$live")
(
    timeout 60 "$BIN/roomyctl" --controller "$dead_addr" --cert "$WORK/pki/users/olga.pem" \
        --key "$WORK/pki/users/olga.key" --ca "$WORK/pki/ca.pem" resize host2/c0 5G >"$WORK/inflight.out" 2>&1
    echo $? >"$WORK/inflight.rc"
) &
echo $! >"$WORK/inflight.pid"
check "a resize through the leader is in flight on host2's agent" wait_for 20 'grep -q "failpoint: pause" "$WORK/agent2.log"'
followed_before=$(followed)
t0=$(date +%s%N)
kill -9 "$(<"$WORK/controller-$dead.pid")"
for n in "${survivors[@]}"; do
    t1=$(date +%s%N)
    CTL_ADDR=$(ctl_addr "$n") as vic ls
    t2=$(date +%s%N)
    check "ls through survivor $n at once: 9 rows within its deadline (<3 s, took $(((t2 - t1) / 1000000)) ms)" \
        test "$RC" -eq 0 -a "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 9 -a $(((t2 - t1) / 1000000)) -lt 3000
done
resized=
for _ in $(seq 100); do
    CTL_ADDR=$live_addr as olga resize host1/c1 +1G
    if [[ $RC -eq 0 ]]; then resized=$((($(date +%s%N) - t0) / 1000000)); break; fi
    sleep 0.1
done
check "a routed resize through a survivor after the leader's death" test -n "$resized"
took_over= new_lead=
for _ in $(seq 150); do
    for n in "${survivors[@]}"; do
        if [[ $(ctl_metric "$n" 'roomy_host_sync_connected{host="host3"}') == 1 ]]; then
            took_over=$((($(date +%s%N) - t0) / 1000000)) new_lead=$n
            break 2
        fi
    done
    sleep 0.1
done
check "a survivor leads and holds host3's link" test -n "$took_over"
echo "failover: leader $dead killed -> first routed resize ${resized:-never} ms, -> new leader ${new_lead:-none}'s link to host3 ${took_over:-never} ms"
check "exactly one of the survivors leads" wait_for 15 'test "$(leaders)" = "$new_lead"'
check "the new leader holds the three agents' links" wait_for 15 'test "$(links "$new_lead")" -eq 3'
python3 webhook_sink.py 9799 0 "$WORK/webhook.jsonl" 10.199.4.1 &
echo $! >"$WORK/sink.pid"
for n in "${survivors[@]}"; do
    [[ $n == "$new_lead" ]] || check "the other survivor ($n) holds none" test "$(links "$n")" -eq 0
done
# The resize that was in flight: an answer either way, never a hang.
check "the resize in flight when its controller died ended (no hang)" wait_for 70 'test -s "$WORK/inflight.rc"'
inflight_rc=$(<"$WORK/inflight.rc")
OUT=$(<"$WORK/inflight.out")
echo "resize in flight through the killed leader: exit $inflight_rc: $OUT"
check "it completed (exit 0) or said the connection was lost and to check (exit 4), not by timeout" \
    bash -c '[[ $1 -eq 0 ]] || [[ $1 -eq 4 && $2 == *"lost the connection during the request"* && $2 == *"roomyctl inspect"* ]]' _ "$inflight_rc" "$OUT"
CTL_ADDR=$live_addr as vic inspect host2/c0 -o json
check "host2/c0 is then either its old size (2 GiB) or the new one (5 GiB)" \
    grep -Eq '"fs_size_bytes": (2147483648|5368709120)' <<<"$OUT"
CTL_ADDR=$live_addr as olga resize host2/c0 5G
check "the same resize again through a survivor: exit 0" test "$RC" -eq 0
check "and says what it did" grep -Eq "grew c0 from 2 GiB to 5 GiB|c0 is already 5 GiB: nothing changed" <<<"$OUT"
CTL_ADDR=$live_addr as vic inspect host2/c0 -o json
check "host2/c0 is 5 GiB" grep -q '"fs_size_bytes": 5368709120' <<<"$OUT"
CTL_ADDR=$live_addr as vic audit --limit 1000
check "the retry is audited, once, ok (the killed leader could not audit its resize)" \
    test "$(grep -c "olga .*resize .*host2/c0 .* ok" <<<"$OUT")" -eq 1
check "events buffered meanwhile are delivered" wait_for 20 'test "$(agent_metric 3 roomy_events_buffered)" -eq 0'
check "growth went on through the failover" wait_for 30 'test "$(agent_metric 3 '\''roomy_policy_actions_total{policy="fill3",action="grown"}'\'')" -ge 4'
check "the follow on a survivor went on through the failover" wait_for 45 'test "$(followed)" -gt "$followed_before"'
kill "$follow_b" 2>/dev/null
check "and showed each of host3's events once, in order" python3 -c '
import json, sys
seqs = [json.loads(l)["seq"] for l in open(sys.argv[1]) if l.startswith("{") and "\"host3\"" in l]
assert seqs and seqs == sorted(set(seqs)), seqs
' "$WORK/follow-b.out"
CTL_ADDR=$live_addr as olga policy rm fill3
check "the agent drops the policy" wait_for 15 'test "$(agent_metric 3 roomy_policies)" -eq 0'
check "and has nothing left to deliver" wait_for 15 'test "$(agent_metric 3 roomy_events_buffered)" -eq 0'
# Each once, no gap, in order: host3's events in etcd.
host3_events_ok() {
    CTL_ADDR=$live_addr as vic events --host host3 --limit 10000 -o json
    python3 -c '
import json, sys
seqs = [json.loads(l)["seq"] for l in sys.stdin if l.strip()]
assert seqs and seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
' <<<"$OUT"
}
check "host3's events in etcd: each once, no gap, in order" host3_events_ok
grown=$(agent_metric 3 'roomy_policy_actions_total{policy="fill3",action="grown"}')
CTL_ADDR=$live_addr as vic audit --limit 1000
check "every growth audited once" test "$(grep -c "policy:fill3@host3 .*resize .* ok" <<<"$OUT")" -eq "$grown"
check "the resize through the survivor audited" grep -q "olga .*resize .*host1/c1 .* ok" <<<"$OUT"

# roomyctl with two controllers' addresses: the dead one first.
CTL_ADDR=$dead_addr,$live_addr as vic ls
check "roomyctl --controller DEAD,LIVE: ls answers" test "$RC" -eq 0 -a "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 9
CTL_ADDR=$dead_addr,,$live_addr as vic ls
check "--controller with an empty entry: refused, exit 3" test "$RC" -eq 3
check "and says what to write" grep -q "empty address" <<<"$OUT"
CTL_ADDR=$dead_addr,127.0.0.1:7449 as vic ls
check "both dead: exit 4 naming both" bash -c '[[ $1 -eq 4 && $2 == *"$3"* && $2 == *7449* ]]' _ "$RC" "$OUT" "$dead_addr"
check "the dead controller comes back as a follower" start_ctl "$dead"
CTL_ADDR=$dead_addr as vic ls
check "and serves ls" test "$RC" -eq 0 -a "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 9
check "one leader among the three" wait_for 15 'test "$(leaders | wc -l)" -eq 1'

echo "=== a partitioned leader: C cut off from etcd"
# C must lead. It was next in line after A; should another lead, that one
# is killed and started again (its new election key goes to the back).
for _ in 1 2; do
    l=$(leaders)
    [[ $l == C || -z $l ]] && break
    kill -9 "$(<"$WORK/controller-$l.pid")"
    wait_for 15 'test "$(leaders | wc -l)" -eq 1'
    start_ctl "$l"
done
check "C leads" wait_for 15 'test "$(leaders)" = C'
check "and holds the three agents' links" wait_for 15 'test "$(links C)" -eq 3'
# Every key of etcd's audit prefix (its JSON gateway): first line the
# store's revision, then one line per entry: CREATE-REVISION WRITER PRINCIPAL
# TARGET. WRITER is the controller instance in the key (audit/TIME/INSTANCE+N):
# an event's audit entry is written in the event's own transaction.
etcd_audit() {
    python3 - "$E" <<'EOF'
import base64, json, ssl, sys, urllib.request
pki = sys.argv[1]
ctx = ssl.create_default_context(cafile=pki + "/ca.pem")
ctx.load_cert_chain(pki + "/client.pem", pki + "/client.key")
b64 = lambda s: base64.b64encode(s.encode()).decode()
body = json.dumps({"key": b64("/roomy/audit/"), "range_end": b64("/roomy/audit0")}).encode()
req = urllib.request.Request("https://127.0.0.1:23791/v3/kv/range", body)
r = json.load(urllib.request.urlopen(req, context=ctx, timeout=5))
print(r["header"]["revision"])
for kv in r.get("kvs", []):
    a = json.loads(base64.b64decode(kv["value"]))
    writer = base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1][:16]
    print(kv["create_revision"], writer, a["principal"], a["target"])
EOF
}
# host3 afresh (2 GiB, 0.5 GiB used, 150 MiB/s): a growth of each container
# every ~3.4 s under cut3, so events flow before, during and after the cut.
stop_agent 3
start_agent 3 --sim-fill-rate 150M
CTL_ADDR=$live_addr as olga policy set cut3 --hosts host3 --at 50% --grow 1G --max 64G --horizon 0 --cooldown 0
check "policy cut3 set" test "$RC" -eq 0
check "C stores host3's growths while it leads" \
    wait_for 30 'test "$(etcd_audit | awk "\$3 == \"policy:cut3@host3\"" | wc -l)" -ge 2'
c_writer=$(etcd_audit | awk '$3 == "policy:cut3@host3" {print $2}' | sort -u)
check "all of them by one controller instance (C's)" test "$(wc -w <<<"$c_writer")" -eq 1
# The cut, inside C's namespace: etcd's traffic dropped both ways (held
# writes stay queued in TCP, not refused). The agents still reach C, so it
# keeps receiving events it can no longer store, and must let go of the
# links by itself.
ip netns exec "$CNS" iptables -A OUTPUT -o eth0 -p tcp -d 10.199.4.1 --dport 23791:23793 -j DROP
ip netns exec "$CNS" iptables -A INPUT -i eth0 -p tcp -s 10.199.4.1 --sport 23791:23793 -j DROP
t0=$(date +%s%N)
# The store's revision 1 s after the cut, before C's lease (3 s, renewed
# each second) can have run out: anything of C's created after it was
# written after the lease ran out.
sleep 1
cut_rev=$(etcd_audit | sed -n 1p)
stepped_down= took_over= new_lead=
for _ in $(seq 300); do
    if [[ -z $stepped_down && $(ctl_metric C roomy_controller_leader) == 0 ]]; then
        stepped_down=$((($(date +%s%N) - t0) / 1000000))
    fi
    for n in A B; do
        if [[ -z $took_over && $(ctl_metric "$n" 'roomy_host_sync_connected{host="host3"}') == 1 ]]; then
            took_over=$((($(date +%s%N) - t0) / 1000000)) new_lead=$n
        fi
    done
    [[ -n $stepped_down && -n $took_over ]] && break
    sleep 0.1
done
check "the cut-off C says it no longer leads (roomy_controller_leader 0)" test -n "$stepped_down"
check "another controller leads and holds host3's link" test -n "$took_over"
echo "partition: C cut off -> C stepped down ${stepped_down:-never} ms, -> new leader ${new_lead:-none}'s link to host3 ${took_over:-never} ms"
check "exactly one leads while C is cut off" wait_for 15 'test "$(leaders)" = "$new_lead"'
check "the new leader holds the three agents' links" wait_for 15 'test "$(links "$new_lead")" -eq 3'
# C's gauge drops when C sees its streams end: each agent ends the old
# stream as the new leader's opens, a moment after B counts its own.
check "C holds none" wait_for 5 'test "$(links C)" -eq 0'
check "C logged why it stepped down" grep -q "no longer leading" "$WORK/controller-C.log"
# Its links can end before its leadership loop gets there (that loop may
# be waiting on the cut-off store): the line comes when the loop does.
check "and closed the agents' links itself (they still reach it)" wait_for 30 'grep -q "not leading: closing the agents'\'' sync links" "$WORK/controller-C.log"'
grown_cut=$(agent_metric 3 'roomy_policy_actions_total{policy="cut3",action="grown"}')
check "host3 grows on while C is cut off" \
    wait_for 30 'test "$(agent_metric 3 '\''roomy_policy_actions_total{policy="cut3",action="grown"}'\'')" -gt "$grown_cut"'
# Heal: whatever C still has queued for etcd arrives now, after its lease.
ip netns exec "$CNS" iptables -F
healed=$(agent_metric 3 'roomy_policy_actions_total{policy="cut3",action="grown"}')
check "healed: growth goes on" \
    wait_for 30 'test "$(agent_metric 3 '\''roomy_policy_actions_total{policy="cut3",action="grown"}'\'')" -ge $((healed + 3))'
check "healed: exactly one leads" wait_for 15 'test "$(leaders | wc -l)" -eq 1'
CTL_ADDR=$live_addr as olga policy rm cut3
check "cut3 removed, the agent drops it" wait_for 15 'test "$(agent_metric 3 roomy_policies)" -eq 0'
check "and has nothing left to deliver" wait_for 15 'test "$(agent_metric 3 roomy_events_buffered)" -eq 0'
check "host3's events in etcd, across the cut: each once, no gap, in order" host3_events_ok
grown=$(agent_metric 3 'roomy_policy_actions_total{policy="cut3",action="grown"}')
CTL_ADDR=$live_addr as vic audit --limit 1000
check "every growth under cut3 audited once ($grown)" test "$(grep -c "policy:cut3@host3 .*resize .* ok" <<<"$OUT")" -eq "$grown"
entries=$(etcd_audit | awk -v w="$c_writer" 'NR > 1 && $2 == w')
late=$(awk -v r="$cut_rev" '$1 + 0 > r + 0' <<<"$entries")
check "C stored nothing after its lease ran out ($(wc -l <<<"$entries") entries of its, none after revision $cut_rev)" \
    test -n "$entries" -a -z "$late"
[[ -z $late ]] || echo "late entries of C's: $late"

# The webhook through all of it (SQLite, migration, the leader killed, C
# cut off and healed): every grown or skipped event stored was delivered,
# nothing that was not stored; a change of leader may resend the one in
# flight (at least once), counted here.
webhook_complete() {
    CTL_ADDR=$live_addr as vic events --limit 100000 -o json
    printf '%s\n' "$OUT" >"$WORK/stored.jsonl"
    python3 - "$WORK/stored.jsonl" "$WORK/webhook.jsonl" <<'EOF'
import collections, json, sys
def events(path, kinds=("grown", "skipped")):
    out = []
    for line in open(path):
        if line.startswith("{"):
            e = json.loads(line)
            if e["kind"] in kinds:
                out.append((e["host"], e["seq"]))
    return out
stored, sent = events(sys.argv[1]), events(sys.argv[2])
missing, extra = set(stored) - set(sent), set(sent) - set(stored)
dups = sum(n - 1 for n in collections.Counter(sent).values())
print(f"webhook: {len(set(stored))} events stored, {len(sent)} deliveries, {dups} resent, missing {sorted(missing)[:5]}, not stored {sorted(extra)[:5]}")
sys.exit(1 if missing or extra or not stored else 0)
EOF
}
check "the webhook got every grown and skipped event across the leader changes, nothing else" \
    wait_for 60 'webhook_complete >"$WORK/webhook-check.out"'
cat "$WORK/webhook-check.out"

# One member down: a majority remains, nothing changes for users.
stop_etcd() { kill "$(<"$WORK/etcd$1.pid")"; wait "$(<"$WORK/etcd$1.pid")" 2>/dev/null; rm -f "$WORK/etcd$1.pid"; }
stop_etcd 3
as olga policy set quorum1 --hosts none --at 90% --grow 1G --max 2G
check "one etcd member stopped: writes go on" test "$RC" -eq 0
# Two down: no majority. Writes are refused in words; reads still answer.
stop_etcd 2
as olga policy set quorum2 --hosts none --at 90% --grow 1G --max 2G
check "two members stopped: a write is refused as unavailable (exit 4)" test "$RC" -eq 4
check "and says etcd has no majority" grep -q "majority of its members" <<<"$OUT"
as vic ls
check "ls still answers" test "$RC" -eq 0 -a "$(grep -c ' c[0-9] ' <<<"$OUT")" -eq 9
start_etcd 2
start_etcd 3
check "members back: writes work again" wait_for 30 'as olga policy set quorum2 --hosts none --at 90% --grow 1G --max 2G; test "$RC" -eq 0'
as vic policy ls
check "nothing lost: both policies there" test "$(grep -c '^quorum[12] ' <<<"$OUT")" -eq 2

echo "=== a controller refuses a store it cannot use"
sed -e 's|^endpoints = .*|endpoints = ["https://127.0.0.1:23799"]|' -e 's/^listen = .*/listen = "127.0.0.1:7446"/' \
    -e 's/^metrics_listen = .*/metrics_listen = "127.0.0.1:9790"/' "$WORK/controller-A.toml" >"$WORK/bad-etcd.toml"
OUT=$(timeout 30 "$BIN/roomy-controller" --config "$WORK/bad-etcd.toml" 2>&1)
RC=$?
check "unreachable etcd: exit 1, not a hang" test "$RC" -eq 1
check "names the address and what to check" grep -q "127.0.0.1:23799.*endpoint health" <<<"$OUT"
sed '0,/^\[/s//store = "\/tmp\/x.db"\n[/' "$WORK/controller-A.toml" >"$WORK/both.toml"
OUT=$(timeout 30 "$BIN/roomy-controller" --config "$WORK/both.toml" 2>&1)
RC=$?
check "store = and [etcd] both: refused" test "$RC" -ne 0
check "says to choose one" grep -q "choose one" <<<"$OUT"

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
