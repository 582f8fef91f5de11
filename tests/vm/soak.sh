#!/bin/bash
# Soak (runs inside the VM; started by scripts/soak.sh): N containers on
# overlay2 over XFS project quotas (dockerd 20.10), each created at 64M and
# writing at one of five speeds (0.06 to 1 MiB/s) up to 200M, under the
# policy "grow by 50% at 80%, cap 256M", through roomy-controller and one
# agent over mutual TLS. Mixed in for the whole run: a manual resize
# (+16M, through the controller) every 10 s, a `docker restart` every 15 s,
# the controller stopped and started again at 1/3 and 2/3 of the run.
# Checks what an operator would: no write failed below the cap, every
# container runs at the end, every event arrived once (per-host seq with no
# gap and no repeat), every growth is in the audit log once, the agent's RSS
# and open fds flat. Prints the figures.
# Env: ROOMY_BIN, ROOMY_SOAK_N (50), ROOMY_SOAK_SECONDS (600).
# Results: stdout, $ROOMY_VM_OUT/soak.txt, $ROOMY_VM_OUT/results.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
# shellcheck source=lib.sh
. ./lib.sh

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding the roomy binaries}
NAME=soak
N=${ROOMY_SOAK_N:-50}
T=${ROOMY_SOAK_SECONDS:-600}
REPORT=$ROOMY_VM_OUT/soak.txt
: >"$REPORT"

lab_init || exit 1
# Dirty memory capped at about a second of this emulated disk, as in a1.
sysctl -q -w vm.dirty_bytes=$((48 << 20)) vm.dirty_background_bytes=$((16 << 20))
# Room for every cap plus the manual growths, with the agent's 10% margin.
xfs_quota_root soak 24G >/dev/null || { fail "soak: XFS prjquota root"; summary; exit 1; }
dockerd_launch soak --storage-driver overlay2 || { fail "soak: dockerd starts"; summary; exit 1; }
image_import
controller_lab soak --metrics-listen 127.0.0.1:9787 || { fail "soak: controller lab starts"; summary; exit 1; }
agent_pid=$(<"$LAB/$NAME/agent.pid")

C policy set soak --containers 'soak*' --at 80% --grow 50% --max 256M
check "soak: policy set" test "$RC" -eq 0
sleep 3

# The writer is the container's command, so a restart resumes it: 512 KiB
# files, fsync'd, counted from what is there; any failed write is kept in
# /failed (the container's own layer, so it survives restarts).
t0=$(lab_now)
for i in $(seq "$N"); do
    pause=$(awk -v k=$((i % 5)) 'BEGIN {print 0.5 * 2 ^ k}')
    D run -d --name "soak$i" --storage-opt size=64M roomy/busybox sh -c "mkdir -p /w; n=\$(ls /w | wc -l)
        while [ \$n -lt 400 ]; do
            dd if=/dev/zero of=/w/\$n bs=512k count=1 conv=fsync 2>/tmp/dd.err || { date; cat /tmp/dd.err; } >>/failed
            n=\$((n + 1)); sleep $pause
        done; exec sleep 1d" >/dev/null || fail "soak: soak$i starts"
done
lab_time soak-create "$t0"

# The mixers, each in the background until the end; what each did goes to
# a file, one line per action, read at the end.
end=$((SECONDS + T))
(
    while ((SECONDS < end)); do
        sleep 10
        C resize "vmhost/soak$((RANDOM % N + 1))" +16M
        echo "$RC $OUT" | head -1
    done
) >"$LAB/manual.log" 2>&1 &
manual=$!
(
    while ((SECONDS < end)); do
        sleep 15
        c=soak$((RANDOM % N + 1))
        D restart -t 1 "$c" >/dev/null 2>&1
        echo "$? $c"
    done
) >"$LAB/restarts.log" 2>&1 &
restarts=$!
sample() { # what sampled: the agent's and controller's RSS (KiB) and fds
    echo "$((SECONDS - start)) $(awk '/^VmRSS/ {print $2}' "/proc/$agent_pid/status") $(ls "/proc/$agent_pid/fd" | wc -l)" \
        "$(awk '/^VmRSS/ {print $2}' "/proc/$CONTROLLER/status" 2>/dev/null || echo 0) $(ls "/proc/$CONTROLLER/fd" 2>/dev/null | wc -l)"
}
start=$SECONDS
: >"$LAB/samples"
stopped_controller=0
while ((SECONDS < end)); do
    sample >>"$LAB/samples"
    if ((stopped_controller < 2 && SECONDS - start >= (stopped_controller + 1) * T / 3)); then
        controller_stop
        stopped_controller=$((stopped_controller + 1))
        say "controller stopped ($stopped_controller) at $((SECONDS - start)) s; buffered on the agent: $(agent_metric roomy_events_buffered) events"
        sleep 20
        controller_start || fail "soak: controller starts again ($stopped_controller)"
    fi
    sleep 20
done
wait "$manual" "$restarts"
sample >>"$LAB/samples"
check "soak: the agent ran throughout" kill -0 "$agent_pid"
# Let the last growths land and the agent's buffer drain to the controller.
sleep 10
check "soak: every buffered event delivered" wait_until 120 'test "$(agent_metric roomy_events_buffered)" -eq 0'

say "== soak: $N containers, ${T} s, policy 50% at 80% cap 256M, writers 0.06-1 MiB/s to 200M"
running=$(D ps -q --filter name=soak | wc -l)
failed_writes=0 failed_in=""
for i in $(seq "$N"); do
    if D exec "soak$i" test -s /failed 2>/dev/null; then
        failed_writes=$((failed_writes + 1))
        failed_in+=" soak$i: $(D exec "soak$i" tail -2 /failed | tr '\n' ' ')"
    fi
done
restarts_ok=$(awk '$1 == 0' "$LAB/restarts.log" | wc -l)
restarts_all=$(wc -l <"$LAB/restarts.log")
manual_ok=$(awk '$1 == 0' "$LAB/manual.log" | wc -l)
manual_all=$(wc -l <"$LAB/manual.log")
say "containers running at the end: $running of $N"
say "docker restarts: $restarts_ok of $restarts_all exit 0"
say "manual resizes: $manual_ok of $manual_all exit 0 (the others, while the controller was stopped: $(awk '$1 != 0 {$1 = ""; print substr($0, 2, 90)}' "$LAB/manual.log" | sort | uniq -c | sed 's/^ *//' | tr '\n' ';'))"
check "soak: every container runs at the end" test "$running" -eq "$N"
check "soak: every docker restart succeeded" test "$restarts_ok" -eq "$restarts_all"
OUT=$failed_in
check "soak: no write failed below the cap ($failed_writes containers saw one)" test "$failed_writes" -eq 0

C events --limit 10000 --host vmhost -o json
echo "$OUT" >"$LAB/events.json"
C audit --limit 10000 -o json
echo "$OUT" >"$LAB/audit.json"
# Per-host seq: every number from the first to the last once (nothing lost,
# nothing twice); per container, grown events = audited policy resizes.
python3 - "$LAB/events.json" "$LAB/audit.json" "$manual_ok" >"$LAB/ledger" <<'EOF'
import collections, json, sys
def load(path):  # events -o json is one object per line (it can stream); audit, an array
    text = open(path).read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
events = load(sys.argv[1])
audit = load(sys.argv[2])
seqs = sorted(e["seq"] for e in events)
dups = [s for s, n in collections.Counter(seqs).items() if n > 1]
gaps = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs)) if seqs else []
kinds = collections.Counter(e["kind"] for e in events)
grown = collections.Counter(e["target"] for e in events if e["kind"] == "grown")
audited = collections.Counter(a["target"].split("/", 1)[1] for a in audit
                              if a["principal"] == "policy:soak@vmhost" and a["action"] == "resize" and a["result"] == "ok")
manual = sum(1 for a in audit if a["principal"] == "olga" and a["action"] == "resize" and a["result"] == "ok")
mismatch = sorted(c for c in set(grown) | set(audited) if grown[c] != audited[c])
print(f"events {len(seqs)} seq {seqs[0] if seqs else 0}..{seqs[-1] if seqs else 0} duplicates {len(dups)} gaps {len(gaps)}")
print("kinds " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
print(f"growths {sum(grown.values())} audited {sum(audited.values())} containers_mismatched {len(mismatch)} {' '.join(mismatch[:5])}")
print(f"manual_audited {manual} manual_ok {sys.argv[3]}")
print(f"grown_containers {len(grown)}")
EOF
cat "$LAB/ledger" | tee -a "$REPORT"
field() { awk -v k="$1" '{for (i = 1; i < NF; i++) if ($i == k) print $(i + 1)}' "$LAB/ledger"; }
check "soak: events arrived (the policy grew containers)" test "$(field growths)" -gt 0
check "soak: no event twice" test "$(field duplicates)" -eq 0
check "soak: no event lost (no gap in seq)" test "$(field gaps)" -eq 0
check "soak: every growth audited once, per container" test "$(field containers_mismatched)" -eq 0 -a "$(field growths)" -eq "$(field audited)"
check "soak: every manual resize audited once" test "$(field manual_audited)" -eq "$manual_ok"

# Flat: from the first sample past the warm-up (containers made, writers
# going) to the last, RSS within 25% + 4 MiB and fds within 8.
say "samples (s, agent RSS KiB, agent fds, controller RSS KiB, controller fds):"
column -t "$LAB/samples" | sed 's/^/  /' | tee -a "$REPORT"
read -r _ rss0 fd0 _ < <(awk -v w=$((T / 6)) '$1 >= w' "$LAB/samples" | head -1)
read -r _ rss1 fd1 _ < <(tail -1 "$LAB/samples")
max_rss=$(awk '{if ($2 > m) m = $2} END {print m}' "$LAB/samples")
say "agent RSS after warm-up ${rss0} KiB, at the end ${rss1} KiB (max ${max_rss}); fds ${fd0} -> ${fd1}"
check "soak: agent RSS flat" test "$rss1" -le $((rss0 * 5 / 4 + 4096))
check "soak: agent fds flat" test "$fd1" -le $((fd0 + 8))
check_dmesg
cp "$LAB/$NAME/agent.log" "$ROOMY_VM_OUT/agent-soak.log"
cp "$CTL_DIR/controller.log" "$LAB/samples" "$LAB/ledger" "$LAB/events.json" "$LAB/audit.json" "$LAB/manual.log" "$LAB/restarts.log" "$ROOMY_VM_OUT/" 2>/dev/null
C policy rm soak
controller_stop
summary
