# shellcheck shell=bash
# overlay2 scenarios (issue: modern Docker), sourced by agent.sh: dockerd
# with --storage-driver overlay2 on an XFS data root mounted prjquota (a loop
# file, lib.sh's xfs_quota_root), containers made with --storage-opt size=,
# roomy-agent picking the overlay2 backend by itself. Every scenario checks
# what a user would: df inside, checksums of data written before, a write
# that needs the new room, exit codes and words, and that refusals change
# nothing. Needs agent.sh's helpers (check, R, df_bytes, write_data, ...).

# The project limit, in bytes, as XFS itself reports it (xfs_quota).
quota_limit() {
    local c=$1 layer id
    layer=$(dirname "$(D inspect -f '{{.GraphDriver.Data.UpperDir}}' "$c")")
    id=$(xfs_projid "$layer")
    # report -p -b: blocks in KiB; hard limit is column 4.
    xfs_quota -x -c "report -p -b -N" "$LAB/$NAME/root" | awk -v id="#$id" '$1 == id {printf "%.0f\n", $4 * 1024}'
}
# df inside must show the limit (within XFS's rounding and a little for the
# container's own root): 97% .. 100%.
df_is() {
    local got=$1 want=$2
    [[ $got -le $want && $got -ge $((want * 97 / 100)) ]]
}
sized_box() { D run -d --name "$1" --storage-opt "size=$2" roomy/busybox sleep 1d >/dev/null; }
o_snapshot() { echo "$(quota_limit "$1") $(df_bytes "$1") $(data_sum "$1")"; }

# O1. a running container created with size=1G grows to 3G and by +1G; a
# 2.5G write then fits; data written before is intact.
o1_running() {
    sized_box o1 1G
    local sum
    sum=$(write_data o1)
    check "o1 df inside shows 1G" df_is "$(df_bytes o1)" "$GiB"
    R inspect o1 -o json
    check "o1 inspect: limit 1G from the project quota" grep -q "\"limit_bytes\": $GiB" <<<"$OUT"
    check "o1 inspect: names its XFS project" grep -Eq '"project_id": [1-9]' <<<"$OUT"
    R resize o1 3G
    check "o1 resize 3G exit 0" test "$RC" -eq 0
    check "o1 says grown online" grep -q "grew o1 from 1 GiB to 3 GiB online" <<<"$OUT"
    check "o1 df inside shows 3G at once" df_is "$(df_bytes o1)" $((3 * GiB))
    check "o1 xfs_quota agrees: 3G" test "$(quota_limit o1)" -eq $((3 * GiB))
    R resize o1 +1G
    check "o1 resize +1G exit 0" test "$RC" -eq 0
    check "o1 df inside shows 4G" df_is "$(df_bytes o1)" $((4 * GiB))
    check "o1 a 2.5G write fits" D exec o1 dd if=/dev/zero of=/big bs=1M count=2560 conv=fsync
    D exec o1 rm -f /big
    check "o1 data intact" test "$(data_sum o1)" = "$sum"
    R inspect o1 -o json
    check "o1 inspect: Docker's recorded size=1G is stale" grep -q '"docker_size_stale": true' <<<"$OUT"
    R resize o1 4G
    check "o1 same size again is a no-op" grep -q "already 4 GiB: nothing changed" <<<"$OUT"
    R ls
    check "o1 ls shows overlay2 at 4 GiB" grep -Eq "^o1 +running +overlay2 +4 GiB +xfs" <<<"$OUT"
}

# O2. the size holds across docker stop/start, docker restart, a dockerd
# restart and an unmount/remount of the backing filesystem.
o2_survives() {
    local sum
    sum=$(data_sum o1)
    D stop -t 1 o1 >/dev/null
    check "o2 stop+start" D start o1
    check "o2 df 4G after stop+start" df_is "$(df_bytes o1)" $((4 * GiB))
    check "o2 restart" D restart -t 1 o1
    check "o2 df 4G after restart" df_is "$(df_bytes o1)" $((4 * GiB))
    dockerd_restart "$NAME" >/dev/null
    check "o2 start after dockerd restart" D start o1
    check "o2 df 4G after dockerd restart" df_is "$(df_bytes o1)" $((4 * GiB))
    # The backing filesystem unmounted and mounted again: XFS keeps limits on disk.
    agent_stop
    dockerd_stop "$NAME"
    umount "$LAB/$NAME/root" && mount -o loop,prjquota "$LAB/xfs-$NAME.img" "$LAB/$NAME/root"
    check "o2 backing fs remounted" mountpoint -q "$LAB/$NAME/root"
    dockerd_launch "$NAME" --storage-driver overlay2 >/dev/null || fail "o2 dockerd after remount" "did not start"
    agent_start || fail "o2 agent after remount" "did not start"
    check "o2 start after remount" D start o1
    check "o2 df 4G after remount" df_is "$(df_bytes o1)" $((4 * GiB))
    check "o2 data intact after all that" test "$(data_sum o1)" = "$sum"
}

# O3. a stopped container grows without being started.
o3_stopped() {
    sized_box o3 1G
    local sum
    sum=$(write_data o3)
    D stop -t 1 o3 >/dev/null
    R resize o3 2G
    check "o3 stopped resize exit 0" test "$RC" -eq 0
    check "o3 says while stopped" grep -q "while stopped" <<<"$OUT"
    check "o3 still stopped" test "$(D inspect -f '{{.State.Running}}' o3)" = false
    check "o3 starts" D start o3
    check "o3 df 2G" df_is "$(df_bytes o3)" $((2 * GiB))
    check "o3 data intact" test "$(data_sum o3)" = "$sum"
}

# O4. refusals change nothing: the shared table, a container without a
# limit, and a backing filesystem without prjquota.
o4_refusals() {
    sized_box o4 1G
    write_data o4 >/dev/null
    refusals o4 o_snapshot
    D run -d --name o4free roomy/busybox sleep 1d >/dev/null
    local before
    before=$(df_bytes o4free)
    R resize o4free 2G
    check "o4 no-limit container exit 3" test "$RC" -eq 3
    check "o4 no-limit says what to do" grep -q "created without --storage-opt size, so it has no disk limit.*recreate it with --storage-opt size=SIZE" <<<"$OUT"
    check "o4 no-limit container unchanged" test "$(df_bytes o4free)" = "$before"
    R inspect o4free -o json
    check "o4 inspect shows no limit" grep -q '"project_id": 0' <<<"$OUT"
}

# O4b. an XFS data root mounted without prjquota: Docker gives no sizes, and
# the agent says why instead of failing later.
o4_no_prjquota() {
    local keep=$NAME
    NAME=noquota
    mkdir -p "$LAB/noquota/root"
    truncate -s 2G "$LAB/xfs-noquota.img"
    mkfs.xfs -q -f "$LAB/xfs-noquota.img"
    mount -o loop "$LAB/xfs-noquota.img" "$LAB/noquota/root"
    dockerd_launch noquota --storage-driver overlay2 >/dev/null || { fail "o4 noquota dockerd" "did not start"; NAME=$keep; return; }
    image_import
    agent_start || { fail "o4 noquota agent" "did not start"; NAME=$keep; return; }
    D run -d --name nq roomy/busybox sleep 1d >/dev/null
    R resize nq 2G
    check "o4 no prjquota: exit 3" test "$RC" -eq 3
    check "o4 no prjquota: says mount with prjquota" grep -q "mounted without project quota enforcement.*add prjquota" <<<"$OUT"
    agent_stop
    dockerd_stop noquota
    umount "$LAB/noquota/root"
    NAME=$keep
    dockerd_use "$NAME"
}

# O5. concurrent resizes of one container end at the larger; ten containers
# grown at once all end right.
o5_concurrent() {
    sized_box o5 1G
    local sum a b rc_a rc_b i
    sum=$(write_data o5)
    "$BIN/roomyctl" --agent "unix://$LAB/$NAME/agent.sock" resize o5 2G >/dev/null 2>&1 &
    a=$!
    "$BIN/roomyctl" --agent "unix://$LAB/$NAME/agent.sock" resize o5 3G >/dev/null 2>&1 &
    b=$!
    wait $a
    rc_a=$?
    wait $b
    rc_b=$?
    check "o5 larger succeeded" test "$rc_b" -eq 0
    check "o5 smaller ran or was refused" test "$rc_a" -eq 0 -o "$rc_a" -eq 3
    check "o5 limit 3G" test "$(quota_limit o5)" -eq $((3 * GiB))
    check "o5 data intact" test "$(data_sum o5)" = "$sum"
    for i in $(seq 10); do sized_box "t$i" 512M; done
    local pids=()
    for i in $(seq 10); do
        "$BIN/roomyctl" --agent "unix://$LAB/$NAME/agent.sock" resize "t$i" 1G >/dev/null 2>&1 &
        pids+=($!)
    done
    local failed=0
    for a in "${pids[@]}"; do wait "$a" || failed=$((failed + 1)); done
    check "o5 ten at once: all exit 0" test "$failed" -eq 0
    local wrong=0
    for i in $(seq 10); do
        [[ $(quota_limit "t$i") -eq $GiB ]] && df_is "$(df_bytes "t$i")" "$GiB" || wrong=$((wrong + 1))
    done
    check "o5 ten at once: each at 1G in XFS and in df" test "$wrong" -eq 0
    D rm -f $(seq -f 't%g' 10) >/dev/null
}

# O6. the agent SIGKILLed at each step: the restarted agent finishes.
o6_killed_agent() {
    local step size=1 sum
    sized_box o6 1G
    sum=$(write_data o6)
    for step in after-intent after-grow; do
        size=$((size + 1))
        agent_stop
        agent_start ROOMY_FAILPOINT=$step
        R resize o6 ${size}G
        check "o6 $step: agent died mid-resize" bash -c "! kill -0 $(<"$LAB/$NAME/agent.pid") 2>/dev/null && test $RC -ne 0"
        agent_start
        sleep 1
        check "o6 $step: limit ${size}G" test "$(quota_limit o6)" -eq $((size * GiB))
        check "o6 $step: df ${size}G" df_is "$(df_bytes o6)" $((size * GiB))
        check "o6 $step: no intent left" test -z "$(ls "$LAB/$NAME/state/intents")"
    done
    check "o6 recovery logged" grep -q "finished the resize of o6 to 2 GiB" "$LAB/$NAME/agent.log"
    check "o6 data intact" test "$(data_sum o6)" = "$sum"
}

# O8. the backing filesystem grows online under a writer.
o8_backing_grows() {
    local before
    R pool ls -o json
    before=$(grep -o '"data_total_bytes": [0-9]*' <<<"$OUT" | cut -d' ' -f2)
    check "o8 pool is the loop-backed XFS" grep -q '"backing": "loop"' <<<"$OUT"
    sized_box o8 2G
    box_write o8 /w 600 conv=fsync
    sleep 1
    R pool grow --data +2G
    check "o8 pool grow exit 0" test "$RC" -eq 0
    R pool ls -o json
    local after
    after=$(grep -o '"data_total_bytes": [0-9]*' <<<"$OUT" | cut -d' ' -f2)
    check "o8 backing XFS grew by about 2G ($before -> $after)" test "$after" -ge $((before + 2 * GiB - 64 * 1048576))
    check "o8 df on the host agrees" test "$(df -B1 --output=size "$LAB/$NAME/root" | tail -1)" -ge $((before + 2 * GiB - 64 * 1048576))
    box_write_wait o8 /w 600
    check "o8 writer finished without error" box_write_ok o8 /w
    R pool grow --data +100T
    check "o8 beyond the file's filesystem: exit 3" test "$RC" -eq 3
    R pool grow --metadata +1G
    check "o8 metadata: exit 3, says XFS has none" grep -q "no separate metadata" <<<"$OUT"
}

# O9. roomy-agent from its image (scripts/image.sh), run as a container of
# the Docker 26 it serves with the README's `docker run` line (through
# agent.sh's agent_container_start): it picks overlay2 by itself, grows a
# running container's quota online and a stopped one's, and a refusal
# exits 3 and changes nothing. Its own dockerd, on a lab directory made a
# shared mount (agent.sh's make_shared): the agent's rslave bind must see
# what dockerd mounts later.
o9_agent_container() {
    local keep=$NAME dir sum sum_s
    NAME=ovimg
    dir=$LAB/$NAME
    make_shared "$dir"
    if ! xfs_quota_root "$NAME" 6G >/dev/null || ! dockerd_launch "$NAME" --storage-driver overlay2 >/dev/null; then
        fail "o9 dockerd on overlay2 with prjquota" "did not start"
        NAME=$keep
        dockerd_use "$NAME"
        return
    fi
    image_import
    check "o9 scripts/image.sh agent" "$IMAGE_SH" agent "$BIN"
    if agent_container_start; then
        check "o9 the agent's container picked overlay2" wait_until 30 \
            "D logs $AGENT_CONTAINER 2>&1 | grep -q backend=Overlay2"
        sized_box o9 1G
        sized_box o9s 1G
        sum=$(write_data o9)
        sum_s=$(write_data o9s)
        D stop -t 1 o9s >/dev/null
        R resize o9 2G
        check "o9 resize through the agent's container: exit 0" test "$RC" -eq 0
        check "o9 says grown online" grep -q "grew o9 from 1 GiB to 2 GiB online" <<<"$OUT"
        check "o9 df inside shows 2G at once" df_is "$(df_bytes o9)" $((2 * GiB))
        check "o9 xfs_quota agrees: 2G" test "$(quota_limit o9)" -eq $((2 * GiB))
        check "o9 a 1.5G write fits" D exec o9 dd if=/dev/zero of=/big bs=1M count=1536 conv=fsync
        D exec o9 rm -f /big
        check "o9 data intact" test "$(data_sum o9)" = "$sum"
        R resize o9 1G
        check "o9 a shrink is refused (exit 3)" test "$RC" -eq 3
        check "o9 the refusal changed nothing" test "$(quota_limit o9)" -eq $((2 * GiB))
        R resize o9s 3G
        check "o9 stopped resize through the agent's container: exit 0" test "$RC" -eq 0
        check "o9 stopped one still stopped" test "$(D inspect -f '{{.State.Running}}' o9s)" = false
        check "o9 stopped one starts" D start o9s
        check "o9 stopped one's df 3G" df_is "$(df_bytes o9s)" $((3 * GiB))
        check "o9 stopped one's data intact" test "$(data_sum o9s)" = "$sum_s"
    else
        fail "o9 the agent's container answers" "$(D logs --tail 20 "$AGENT_CONTAINER" 2>&1)"
    fi
    D logs "$AGENT_CONTAINER" >"$ROOMY_VM_OUT/agent-container-overlay2.log" 2>&1
    D rm -f "$AGENT_CONTAINER" o9 o9s >/dev/null 2>&1
    dockerd_stop "$NAME"
    umount "$dir/root" 2>/dev/null
    umount -l "$dir" 2>/dev/null
    NAME=$keep
    dockerd_use "$NAME"
}

# C1. Docker's containerd image store (Docker 26 opt-in, 29 default): its
# overlayfs snapshotter accepts --storage-opt size and ignores it. The agent
# says so, and what to do, for every call; nothing is changed.
c1_containerd_store() {
    local keep=$NAME
    NAME=cstore
    xfs_quota_root cstore 4G >/dev/null || { fail "c1 XFS root"; NAME=$keep; return; }
    echo '{"features": {"containerd-snapshotter": true}}' >"$LAB/cstore.json"
    dockerd_launch cstore --config-file "$LAB/cstore.json" >/dev/null || { fail "c1 dockerd" "did not start"; NAME=$keep; return; }
    check "c1 dockerd uses the containerd image store" bash -c "/usr/bin/docker info --format '{{json .DriverStatus}}' | grep -q io.containerd.snapshotter"
    image_import
    D run -d --name cs --storage-opt size=1G roomy/busybox sleep 1d >/dev/null
    agent_start || { fail "c1 agent starts on a containerd-store host"; NAME=$keep; return; }
    R resize cs 2G
    check "c1 resize refused: exit 3" test "$RC" -eq 3
    check "c1 says why: the snapshotter ignores --storage-opt size" grep -q "containerd image store.*ignores --storage-opt size" <<<"$OUT"
    check "c1 says what to do: containerd-snapshotter false" grep -q '"containerd-snapshotter": false' <<<"$OUT"
    R ls
    check "c1 ls refused the same way" grep -q "containerd image store" <<<"$OUT"
    agent_stop
    dockerd_stop cstore
    NAME=$keep
    dockerd_use "$NAME"
}

group_overlay() {
    NAME=ov
    xfs_quota_root ov 10G >/dev/null || { fail "group overlay: XFS prjquota root"; return 1; }
    dockerd_launch ov --storage-driver overlay2 || { fail "group overlay: dockerd starts"; return 1; }
    image_import
    agent_start || { fail "group overlay: agent starts"; return 1; }
    check "overlay: agent picked the overlay2 backend" grep -q "backend=Overlay2" "$LAB/ov/agent.log"
    scenarios o1_running o2_survives o3_stopped o4_refusals o5_concurrent o6_killed_agent o8_backing_grows \
        o4_no_prjquota o9_agent_container c1_containerd_store s16_lost_events
    agent_stop
    dockerd_stop ov
}
