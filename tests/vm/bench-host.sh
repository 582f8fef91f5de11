#!/bin/bash
# The agent's cost on a busy host (runs inside the VM; started by
# scripts/bench-policy.sh with ROOMY_BENCH_ONLY=host, or alone through
# tests/vm/boot.sh): COUNT running containers (200) and 20 stopped ones on
# devicemapper, every running one under a policy at the default 250 ms
# sampling. Over a window idle (each agent started 10 s before it), while
# FILLERS (20) of them write, and idle again once the writers stopped (the
# grown containers pending):
# the agent's CPU (% of one core, utime+stime from /proc), RSS, open fds;
# with a baseline agent, the filling window runs three times on three sets
# of FILLERS containers (this agent, the baseline, this one again);
# dockerd's CPU over the same window beside it, and the Docker API calls
# the agent made in it (dockerd's debug log); `roomyctl ls` of every
# container on the agent's socket beside `docker ps -a` (the anchor: what
# an operator runs without Roomy), medians of 5; and the dm devices active
# before and after the ls runs (stopped containers cost no activation after
# the first read).
# With ROOMY_BASE_BIN (a directory holding an older roomy-agent, built by
# scripts/bench-policy.sh from ROOMY_BENCH_BASELINE=<git rev>), the idle
# and after-growth windows run again with that agent on the same
# containers, each between two of this agent's (A, B, A'), and the ratio
# is printed: a before/after in one run.
# Env: ROOMY_BIN, ROOMY_BASE_BIN, ROOMY_BENCH_CONTAINERS (200),
# ROOMY_BENCH_FILLERS (20), ROOMY_BENCH_WINDOW (seconds, 60).
# Results: stdout and $ROOMY_VM_OUT/bench-host.txt.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
# shellcheck source=lib.sh
. ./lib.sh

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding the roomy binaries}
NAME=host
COUNT=${ROOMY_BENCH_CONTAINERS:-200}
FILLERS=${ROOMY_BENCH_FILLERS:-20}
WINDOW=${ROOMY_BENCH_WINDOW:-60}
REPORT=$ROOMY_VM_OUT/bench-host.txt
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# user and system ticks apart: which side the idle agent's time is on
usys() { awk '{print $14, $15}' "/proc/$1/stat"; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
# Context switches of each of the process's threads so far ("tid count"
# lines): each is a thread put to sleep or woken, which under emulation
# costs a clock read and a page-table switch. Per thread, so that a
# blocking-pool thread ending in a window does not take its count along
# (summed, that made the figure negative).
switches() {
    local f
    for f in /proc/"$1"/task/*/status; do
        awk -v t="${f%/status}" '/ctxt_switches:/ {n += $2} END {print t, n + 0}' "$f" 2>/dev/null
    done
}
# Switches between two of those snapshots: threads in both by their
# difference, threads new in the second by their whole count.
switches_between() { awk 'NR == FNR {a[$1] = $2; next} {d += $2 - a[$1]} END {print d + 0}' <(echo "$1") <(echo "$2"); }
# ms of CMD..., median of 5 (lib.sh's timed)
median_ms() {
    local i
    : >"$LAB/runs"
    for i in 1 2 3 4 5; do timed "$LAB/runs" "$@" >/dev/null 2>&1 || true; done
    echo $(($(percentile 50 <"$LAB/runs") / 1000))
}
# Stop the agent and start it again, from DIR's roomy-agent if given (the
# baseline's), then give it 10 s: every idle window sees an agent that old.
restart_agent() { # [DIR]
    agent_stop
    BIN=${1:-$BIN} RUST_LOG=$AGENT_LOG agent_start || exit 1
    agent=$(<"$LAB/$NAME/agent.pid")
    sleep 10
}
roomy_ls() { "$BIN/roomyctl" --agent "unix://$LAB/$NAME/agent.sock" ls -o json; }
docker_ps() { D ps -a; }
active() { dmsetup ls --target thin | wc -l; }

lab_init || exit 1
ROOMY_BASESIZE=1G dockerd_start "$NAME" xfs || exit 1
image_import
# The refresh, a user's list and the inventory stream's lists log where
# their time goes at debug.
AGENT_LOG=info,roomy_agent::policy=debug,roomy_agent::backend::shared=debug,roomy_agent::inventory=debug
RUST_LOG=$AGENT_LOG controller_lab "$NAME" || exit 1
agent=$(<"$LAB/$NAME/agent.pid")
dockerd=$(<"$LAB/$NAME/dockerd.pid.launch")

t0=$(now_us)
# Three at a time: one after the other, 220 `docker run`s took 945 to
# 1132 s here, most of each spent waiting on dockerd, not the CPU.
seq "$COUNT" | xargs -P 3 -I{} sh -c '/usr/bin/docker run -d --name c{} roomy/busybox sleep 1d >/dev/null || echo "docker run c{} failed"' |
    grep . && { say "containers did not start"; exit 1; }
seq 20 | xargs -P 3 -I{} sh -c '/usr/bin/docker run --name s{} roomy/busybox true >/dev/null || echo "docker run s{} failed"' |
    grep . && { say "containers did not start"; exit 1; }
say "== $COUNT running and 20 stopped containers on devicemapper (started in $((($(now_us) - t0) / 1000000)) s)"
C policy set all --containers 'c*' --at 80% --grow 50% --max 4G
[[ $RC -eq 0 ]] || { say "policy set failed: $OUT"; exit 1; }
# The policy reaches the agent and the engine's refresh lists every
# container before the window opens.
sleep 10
rows=$(roomy_ls | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["containers"]))')
say "  roomyctl ls lists $rows containers"
# Started afresh, as the baseline's agent is before its window: both idle
# windows then see an agent 10 s old on the same containers (this one had
# lived through the 220 starts).
restart_agent

# dockerd logs every API call at debug: turned on here, by a reload of
# its config file (SIGHUP, as `systemctl reload docker`), and not for the
# container starts above. Each window counts the calls made while it
# sleeps: only the agent talks to dockerd then.
mkdir -p /etc/docker
echo '{"debug": true}' >/etc/docker/daemon.json
kill -HUP "$dockerd"
api_calls() { grep -c 'msg="Calling ' "$LAB/$NAME/dockerd.log"; }
# Calls N+1 to M of those, by kind (ids folded), most first.
api_calls_by() { # N M
    grep -o 'msg="Calling [A-Z]* [^"?]*' "$LAB/$NAME/dockerd.log" | head -n "$2" | tail -n +"$(($1 + 1))" |
        sed -E 's/.*Calling //; s|/v1\.[0-9]+||; s/[0-9a-f]{64}/<id>/' | sort | uniq -c | sort -rn |
        awk '{printf "%s%d %s %s", (NR > 1 ? ", " : ""), $1, $2, $3} END {print ""}'
}

# The median of KEY=N over the log lines in FILE (the agent's debug fields).
median_field() { grep -o "$1=[0-9]*" "$2" | cut -d= -f2 | percentile 50; }

# Set by window: the agent's CPU (% of one core) and ls's median (ms).
CPU="" LS=""
window() { # LABEL
    local a0 d0 a1 d1 before after
    local log=$LAB/$NAME/agent.log from
    from=$(wc -l <"$log")
    local u0 u1 s0 s1
    local k0 k1
    k0=$(api_calls)
    a0=$(ticks "$agent") d0=$(ticks "$dockerd") u0=$(usys "$agent") s0=$(switches "$agent")
    sleep "$WINDOW"
    a1=$(ticks "$agent") d1=$(ticks "$dockerd") u1=$(usys "$agent") s1=$(switches "$agent")
    k1=$(api_calls)
    local refreshes
    refreshes=$(tail -n +"$((from + 1))" "$log" | grep -c ' refreshed ' || true)
    # The listing's time, over the refreshes that listed (an older agent
    # lists at each one and does not say so).
    tail -n +"$((from + 1))" "$log" | grep ' refreshed ' | grep -v 'listed=false' >"$LAB/refreshes" || true
    # The inventory stream's lists for the controller, by kind (whole: every
    # row read; kept: only what changed; use: use alone), and what the sent
    # ones carried (an agent that logs it: rows and encoded bytes, before
    # TLS).
    local inventory
    inventory=$(tail -n +"$((from + 1))" "$log" | grep ' inventory listed ' |
        awk '{k = ""; t = 0; s = 0; for (i = 1; i <= NF; i++) {if ($i ~ /^kind=/) {k = substr($i, 6); gsub(/"/, "", k)} if ($i ~ /^took_ms=/) t = substr($i, 9); if ($i == "sent=true") s = 1
                 if ($i ~ /^sent_rows=/) {rows += substr($i, 11); counted = 1} if ($i ~ /^sent_bytes=/) bytes += substr($i, 12)}
             n[k]++; ms[k] += t; sent += s} END {for (k in n) printf "%d %s (%d ms in all), ", n[k], k, ms[k]; printf "%d sent", sent; if (counted) printf " (%d rows, %.1f KiB in all)", rows, bytes / 1024}')
    before=$(active)
    local ls_ms ps_ms
    from=$(wc -l <"$log")
    ls_ms=$(median_ms roomy_ls)
    # The agent's side of those lists: Docker's list, then the rows.
    tail -n +"$((from + 1))" "$log" | grep ' listed ' >"$LAB/lists" || true
    ps_ms=$(median_ms docker_ps)
    # roomyctl's own start and exit, no call: the part of an ls outside
    # the agent that is not the transfer.
    local start_ms
    start_ms=$(median_ms "$BIN/roomyctl" --version)
    after=$(active)
    CPU=$(awk -v d=$((a1 - a0)) -v hz="$hz" -v w="$WINDOW" 'BEGIN {printf "%.2f", d * 100 / hz / w}') LS=$ls_ms
    say "  $1: agent CPU $CPU% of one core (dockerd $(awk -v d=$((d1 - d0)) -v hz="$hz" -v w="$WINDOW" 'BEGIN {printf "%.2f", d * 100 / hz / w}')%), RSS $(awk -v k="$(kib "$agent" VmRSS)" 'BEGIN {printf "%.1f", k / 1024}') MiB (peak $(awk -v k="$(kib "$agent" VmHWM)" 'BEGIN {printf "%.1f", k / 1024}')), fds $(find "/proc/$agent/fd" -mindepth 1 | wc -l), threads $(find "/proc/$agent/task" -mindepth 1 -maxdepth 1 | wc -l), $(awk -v d="$(switches_between "$s0" "$s1")" -v w="$WINDOW" 'BEGIN {printf "%.1f", d / w}') context switches/s; of it user $(awk -v a="$u0" -v b="$u1" -v hz="$hz" -v w="$WINDOW" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.2f%%, system %.2f%%", (y[1] - x[1]) * 100 / hz / w, (y[2] - x[2]) * 100 / hz / w}')"
    say "  $1: $refreshes refreshes, $(wc -l <"$LAB/refreshes") of them listing the containers, median $(median_field list_ms "$LAB/refreshes") ms listing the running containers, $(median_field pool_ms "$LAB/refreshes") ms reading the pool"
    say "  $1: inventory stream lists: $inventory"
    say "  $1: Docker API calls by the agent $((k1 - k0))$( ((k1 > k0)) && echo ": $(api_calls_by "$k0" "$k1" | head -c 300)")"
    say "  $1: roomyctl ls $ls_ms ms (in the agent: Docker's list $(median_field docker_ms "$LAB/lists") ms, the rows $(median_field rows_ms "$LAB/lists") ms; roomyctl --version alone $start_ms ms), docker ps -a $ps_ms ms ($(awk -v a="$ps_ms" -v b="$ls_ms" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}')x); thin devices active $before before the ls runs, $after after"
}
window idle
# Where the agent's CPU goes, after a window so that the sampling does not
# weigh on its figure: perf (the host's, which this guest runs over) at
# 199 Hz for 30 s, the top of the flat profile in the report, and the
# whole lists in agent-perf-TAG*.txt.
profile() { # LABEL TAG
    command -v perf >/dev/null || return 0
    local out=$ROOMY_VM_OUT/agent-perf-$2
    perf record -q -e cpu-clock -F 199 --call-graph dwarf -p "$agent" -o "$LAB/perf.data" -- sleep 30 >/dev/null 2>&1
    perf report -i "$LAB/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -40 >"$out.txt"
    perf report -i "$LAB/perf.data" --no-children --sort comm --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -10 >"$out-threads.txt"
    # Each symbol with the call chains that led to it (dwarf unwinding:
    # the release build keeps no frame pointers).
    perf report -i "$LAB/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
        head -3000 >"$out-calls.txt"
    say "  $1: where the agent's CPU goes (perf, 30 s; whole list in $(basename "$out").txt):"
    head -8 "$out.txt" | sed 's/^/    /' | tee -a "$REPORT"
}
profile idle idle
# Which syscalls the idle agent makes, and how many: under emulation each
# is a page-table switch, and the count is what the code controls.
if command -v strace >/dev/null; then
    timeout -s INT 20 strace -c -f -p "$agent" -o "$ROOMY_VM_OUT/agent-syscalls.txt" >/dev/null 2>&1 || true
    say "  idle: syscalls in 20 s under strace (whole table in agent-syscalls.txt): $(awk '$NF == "total" {print $4}' "$ROOMY_VM_OUT/agent-syscalls.txt")"
    grep -E '^ +[0-9.]+ ' "$ROOMY_VM_OUT/agent-syscalls.txt" | sort -k4 -n -r | head -8 | sed 's/^/    /' | tee -a "$REPORT"
    # Who makes the two most frequent ones: each call with its stack, for
    # 10 s, counted by its first five frames in the agent's binary (std's
    # and core's left out: they say how, not who).
    timeout -s INT 10 strace -f -k -e trace=clock_gettime,statfs -p "$agent" -o "$LAB/stacks.txt" >/dev/null 2>&1 || true
    python3 - "$LAB/stacks.txt" >"$ROOMY_VM_OUT/agent-syscall-stacks.txt" <<'EOF' || true
import collections, re, sys
counts = collections.Counter()
call, frames = None, []
def demangle(sym):
    # Rust's legacy mangling (_ZN 6policy 4tick 17h<hash> E), enough to read.
    if not sym.startswith("_ZN"):
        return sym
    parts, i = [], 3
    while i < len(sym) and sym[i].isdigit():
        j = i
        while sym[j].isdigit():
            j += 1
        n = int(sym[i:j])
        parts.append(sym[j:j + n])
        i = j + n
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    return "::".join(parts).replace("$LT$", "<").replace("$GT$", ">").replace("$u20$", " ").replace("..", "::")
def flush():
    if call:
        # The agent binary's frames (not libc's), innermost first.
        ours = [f for f in frames if f and not f.startswith(("std::", "core::", "alloc::", "<"))][:5] or frames[:5]
        counts[(call, " <- ".join(ours) or "?")] += 1
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^\d+\s+(\w+)\(", line)
    if m:
        flush()
        call, frames = m.group(1), []
    elif line.lstrip().startswith(">") and "roomy-agent(" in line:
        f = re.search(r"\(([^)+]*)", line)
        frames.append(demangle(f.group(1)) if f and f.group(1) else line.split()[-1])
flush()
for (c, where), n in counts.most_common(25):
    print(f"{n:6d} {c:14s} {where}")
EOF
    say "  idle: clock_gettime and statfs in 10 s by caller (agent-syscall-stacks.txt):"
    head -8 "$ROOMY_VM_OUT/agent-syscall-stacks.txt" | cut -c1-300 | sed 's/^/    /' | tee -a "$REPORT"
fi
if [[ -n ${ROOMY_BASE_BIN:-} ]]; then
    cpu=$CPU ls=$LS
    # The same containers and policy under the older agent, then this one
    # back for the filling window.
    restart_agent "$ROOMY_BASE_BIN"
    window "idle, baseline agent ($ROOMY_BASE_BIN)"
    base=$CPU base_ls=$LS
    restart_agent
    # This agent again after the baseline's (A, B, A): how far the VM
    # drifts between windows, beside the difference between the agents.
    window "idle, this agent again"
    say "  idle, this agent against the baseline: CPU $cpu% and $CPU% (before and after) against $base% ($(awk -v a="$base" -v b="$cpu" -v c="$CPU" 'BEGIN {if (b + c > 0) printf "%.1f", 2 * a / (b + c); else print "-"}')x less), ls $ls ms against $base_ls ms ($(awk -v a="$base_ls" -v b="$ls" 'BEGIN {if (b > 0) printf "%.1f", a / b; else print "-"}')x faster)"
fi
grown_count() { C events --limit 1000 -o json; grep -o '"kind":"grown"' <<<"$OUT" | wc -l; }
# FILLERS containers from c<FIRST> on write 1200 MiB each; the window runs
# while they do.
fill() { # FIRST LABEL
    local i
    for ((i = $1; i < $1 + FILLERS; i++)); do
        D exec -d "c$i" dd if=/dev/zero of=/f bs=1M count=1200 >/dev/null
    done
    window "$2"
}
# All writers stopped at once, from the host (one `docker exec` each took
# 1-2 s here, and the last ones kept writing, and being grown, into the
# window after), then until no growth for 10 s: the rate-aware trigger
# still sees a writer's rate for its 3 s window after it stopped. Sets
# GROWN to the growths so far.
GROWN=0
stop_writers() {
    pkill -x dd
    local last still=0 now i
    last=$(grown_count)
    for ((i = 0; i < 60 && still < 5; i++)); do
        sleep 2
        now=$(grown_count)
        if [[ $now == "$last" ]]; then still=$((still + 1)); else still=0 last=$now; fi
    done
    say "  writers stopped; growths settled at $last (no new one for $((still * 2)) s)"
    GROWN=$last
}
# What FILLERS writers from c<FIRST> wrote, deleted and trimmed down to the
# pool's loop file: three sets of 20 x 1200 MiB do not fit the scratch
# disk (a run that tried filled it, and the pool went needs_check).
unwrite() { # FIRST
    local i dev mp
    for ((i = $1; i < $1 + FILLERS; i++)); do
        D exec "c$i" rm -f /f
        dev=$(D inspect -f '{{.GraphDriver.Data.DeviceName}}' "c$i")
        mp=$(findmnt -n -o TARGET "/dev/mapper/$dev" | head -1)
        [[ -n $mp ]] && fstrim "$mp"
    done
    say "  their data deleted and trimmed: scratch disk $(df -h --output=used,size "$LAB" | tail -1 | awk '{print $1 " used of " $2}')"
}
fill 1 "$FILLERS filling"
# The writers are still at it (20 x 1200 MiB take minutes here).
profile "$FILLERS filling" filling
say "  growths by the policy meanwhile: $(grown_count)"
# A host where policies have worked for a while: the writers stopped, the
# grown containers pending (dockerd adopts their size at its next start)
# and their devices held by the guard. Idle again, this agent and the
# baseline's.
stop_writers
# With a baseline: the same load on the next containers under the older
# agent, then on the ones after under this one again (A, B, A'), each
# agent started 10 s before its writers: the filling host's before/after
# in one run.
if [[ -n ${ROOMY_BASE_BIN:-} ]] && ((COUNT >= 3 * FILLERS)); then
    cpu=$CPU ls=$LS grown=$GROWN
    unwrite 1
    restart_agent "$ROOMY_BASE_BIN"
    fill $((FILLERS + 1)) "$FILLERS others filling, baseline agent"
    base=$CPU base_ls=$LS
    stop_writers
    base_grown=$((GROWN - grown)) grown=$GROWN
    unwrite $((FILLERS + 1))
    restart_agent
    fill $((2 * FILLERS + 1)) "$FILLERS more filling, this agent again"
    stop_writers
    say "  filling, this agent against the baseline: CPU $cpu% and $CPU% (before and after) against $base% ($(awk -v a="$base" -v b="$cpu" -v c="$CPU" 'BEGIN {if (b + c > 0) printf "%.2f", 2 * a / (b + c); else print "-"}')x less), ls $ls and $LS ms against $base_ls ms; growths $((GROWN - grown)) against the baseline's $base_grown"
fi
guarded=$(roomy_ls | python3 -c 'import json,sys; print(sum(1 for c in json.load(sys.stdin)["containers"] if c.get("devicemapper", {}).get("guarded")))')
window "idle after the growths ($guarded containers pending and guarded)"
if [[ -n ${ROOMY_BASE_BIN:-} ]]; then
    cpu=$CPU ls=$LS
    restart_agent "$ROOMY_BASE_BIN"
    window "idle after the growths, baseline agent"
    base=$CPU base_ls=$LS
    # This agent again, restarted as the baseline's was (A, B, A'): the
    # first window after the writers may carry what they left behind
    # (dirty pages written back, dockerd's exec cleanup), and only this
    # agent's lived through the growths.
    restart_agent
    window "idle after the growths, this agent restarted"
    say "  idle after the growths, this agent against the baseline: CPU $cpu% and $CPU% (the agent that grew them, then restarted) against $base% ($(awk -v a="$base" -v b="$cpu" -v c="$CPU" 'BEGIN {if (b + c > 0) printf "%.1f", 2 * a / (b + c); else print "-"}')x less), ls $ls ms against $base_ls ms"
fi
cp "$LAB/$NAME/agent.log" "$ROOMY_VM_OUT/agent-bench-host.log"
echo "bench-host: done" >&2
