# shellcheck shell=bash
# Helpers for guest scripts run by tests/vm/boot.sh. Source it:
#   . "$(dirname "$0")/lib.sh"
#
# Functions:
#   lab_init                       modules, scratch disk at $LAB, dirs
#   dockerd_launch NAME ARGS..     start containerd and a dockerd with ARGS,
#                                  wait for both, export DOCKER_HOST for it
#   dockerd_start NAME FS [ARGS..] the same for a devicemapper dockerd
#                                  (dm.fs=FS)
#   dockerd_use NAME               point DOCKER_HOST at dockerd NAME
#   dockerd_stop NAME              SIGTERM, wait for exit
#   dockerd_restart NAME           stop + start with the args given at start
#   image_import                   build roomy/busybox:latest (no registry)
#   D ARGS..                       /usr/bin/docker (20.10) on $DOCKER_HOST
#   lab_now / lab_time LABEL START print and record "TIME LABEL: Ns"
#   pass NAME / fail NAME REASON   record a result; summary prints the total
#   lab_group NAME BUDGET FN       run FN as one scenario group under its own
#                                  watchdog (BUDGET seconds); a group that
#                                  runs out is killed and fails by name
#   lab_scenario NAME              note the scenario now running (named by
#                                  the watchdog when it fires)
#   check_dmesg                    fail on WARNING:/BUG: in the kernel log
#   xfs_quota_root NAME SIZE [MNT] an XFS loop file mounted prjquota at MNT
#                                  (default $LAB/NAME/root, dockerd NAME's
#                                  data root); prints MNT
#   xfs_projid PATH                the XFS project id of PATH
#   overlay_quota_check NAME       on a running overlay2 dockerd NAME whose
#                                  data root is xfs_quota_root's: size=1G,
#                                  the layer's project id, raise it to 3G
#
# Env: LAB (default /tmp/lab), ROOMY_VM_OUT (shared rw dir from boot.sh;
# timings and dockerd logs are copied there), DOCKER_HOST (set by
# dockerd_start/dockerd_use).

LAB=${LAB:-/tmp/lab}
ROOMY_VM_OUT=${ROOMY_VM_OUT:-/tmp}
# Results go to a file, not shell variables: scenario groups run in
# subshells (so a watchdog can kill one), and their counts must survive.
LAB_RESULTS=${LAB_RESULTS:-$ROOMY_VM_OUT/results}
: >"$LAB_RESULTS"
# When lib.sh was sourced: the start of "script time" in this guest.
export LAB_T_SCRIPT
LAB_T_SCRIPT=$(date +%s.%N)

lab_log() { echo "lab: $*" >&2; }

lab_now() { date +%s.%N; }

# lab_time LABEL START: print elapsed time since START (from lab_now) and
# append it to $ROOMY_VM_OUT/timings so the host can read it afterwards.
lab_time() {
    local t
    t=$(awk -v a="$2" -v b="$(lab_now)" 'BEGIN { printf "%.1f", b - a }')
    echo "TIME $1: ${t}s"
    echo "$1 $t" >>"$ROOMY_VM_OUT/timings"
}

# The disk boot.sh attached: vng names it after its path (virtio-blk serial,
# 20 bytes). Fall back to the only whole disk without partitions.
lab_find_disk() {
    local b
    if [[ -n ${ROOMY_VM_DISK_SERIAL:-} ]]; then
        for b in /sys/block/*; do
            if [[ -r $b/serial && $(<"$b/serial") == "$ROOMY_VM_DISK_SERIAL" ]]; then
                echo "/dev/${b##*/}"
                return 0
            fi
        done
    fi
    for b in /sys/block/vd? /sys/block/sd?; do
        [[ -e $b ]] || continue
        compgen -G "$b/${b##*/}[0-9]*" >/dev/null && continue
        echo "/dev/${b##*/}"
        return 0
    done
    return 1
}

lab_init() {
    local m disk
    for m in dm-mod dm-thin-pool dm-flakey loop xfs ext4; do
        modprobe "$m" || { lab_log "modprobe $m failed"; return 1; }
    done
    if [[ ${ROOMY_VM_BOOT_T0:-} ]]; then
        lab_time boot-to-script "$ROOMY_VM_BOOT_T0"
    fi
    # Guest /tmp is RAM; docker's loop files must live on the scratch disk.
    disk=$(lab_find_disk) || { lab_log "no scratch disk found"; return 1; }
    mkdir -p "$LAB"
    if ! mountpoint -q "$LAB"; then
        mkfs.ext4 -q -F -E nodiscard "$disk"
        mount "$disk" "$LAB"
    fi
    mkdir -p "$LAB/run" "$LAB/tmp"
    # cgroup2 is mounted by virtme-ng-init, /run and /etc are writable
    # overlays, udevd runs (devicemapper waits on udev cookies): check anyway.
    mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
    [[ -w /run ]] || mount -t tmpfs tmpfs /run
    # virtme-ng mounts an empty tmpfs on /etc/lvm; a host has lvm2's own
    # files there (lvm.conf, the command profiles the agent's lvm shell
    # needs). Under it is the root's /etc/lvm, seen through the writable
    # /etc overlay: LVM's archives go to the guest's RAM, never to the root.
    if [[ $(findmnt -n -o FSTYPE /etc/lvm 2>/dev/null) == tmpfs ]]; then
        umount /etc/lvm || { lab_log "umount of virtme's /etc/lvm failed"; return 1; }
    fi
    [[ -x /usr/sbin/runc ]] || { lab_log "runc missing"; return 1; }
    lab_log "scratch disk $disk on $LAB ($(df -h --output=size "$LAB" | tail -1 | tr -d ' '))"
}

D() { /usr/bin/docker "$@"; }

dockerd_use() { export DOCKER_HOST="unix://$LAB/$1/docker.sock"; }

# containerd_start NAME: a containerd for dockerd NAME, started and waited
# for by the harness. dockerd 20.10 would spawn its own, but gives it a
# fixed 60 s to answer, which a loaded emulated machine overruns (the lab
# failed that way right after a build); hosts run containerd as a service
# of its own anyway. CRI is off: nothing here speaks it.
containerd_start() {
    local dir=$LAB/$1/containerd t0 i
    mkdir -p "$dir"
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
EOF
    t0=$(lab_now)
    /usr/bin/containerd --config "$dir/config.toml" </dev/null >>"$dir/containerd.log" 2>&1 &
    echo $! >"$dir/containerd.pid"
    # Up to 300 s: a machine twice as slow as the slowest start seen (35 s
    # for dockerd with its containerd) still fits, many times over.
    for ((i = 0; i < 600; i++)); do
        if ctr --address "$dir/containerd.sock" version >/dev/null 2>&1; then
            lab_time "containerd-$1-ready" "$t0"
            return 0
        fi
        kill -0 "$(<"$dir/containerd.pid")" 2>/dev/null || break
        sleep 0.5
    done
    lab_log "containerd for $1 did not come up; log tail:"
    tail -n 20 "$dir/containerd.log" >&2
    return 1
}

containerd_running() {
    local pidf=$LAB/$1/containerd/containerd.pid
    [[ -f $pidf ]] && kill -0 "$(<"$pidf")" 2>/dev/null
}

containerd_stop() {
    local dir=$LAB/$1/containerd pid i
    [[ -f $dir/containerd.pid ]] || return 0
    pid=$(<"$dir/containerd.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/containerd.pid"
}

# dockerd_launch NAME DOCKERD_ARGS...: containerd (above), then dockerd with
# its own data-root, exec-root and socket, so several can run side by side;
# waits until it answers.
dockerd_launch() {
    local name=$1 dir=$LAB/$1 t0 i
    shift
    mkdir -p "$dir"
    # Remembered for dockerd_restart.
    printf '%q ' "$@" >"$dir/args"
    containerd_running "$name" || containerd_start "$name" || return 1
    t0=$(lab_now)
    /usr/sbin/dockerd --containerd "$dir/containerd/containerd.sock" \
        --iptables=false --bridge=none \
        --data-root "$dir/root" --exec-root "$dir/exec" \
        -H "unix://$dir/docker.sock" --pidfile "$dir/dockerd.pid" \
        "$@" </dev/null >>"$dir/dockerd.log" 2>&1 &
    echo $! >"$dir/dockerd.pid.launch"
    dockerd_use "$name"
    # Up to 300 s (35 s seen on a slow machine under TCG).
    for ((i = 0; i < 600; i++)); do
        if D info >/dev/null 2>&1; then
            lab_time "dockerd-$name-ready" "$t0"
            return 0
        fi
        if ! kill -0 "$(<"$dir/dockerd.pid.launch")" 2>/dev/null; then
            break
        fi
        sleep 0.5
    done
    lab_log "dockerd $name did not come up; log tail:"
    tail -n 40 "$dir/dockerd.log" >&2
    cp "$dir/dockerd.log" "$ROOMY_VM_OUT/dockerd-$name.log" 2>/dev/null || true
    return 1
}

# lvm_pool_setup [DATA]: Docker's direct-lvm recipe on a 6G loop device:
# VG docker, thin pool docker/thinpool of DATA (2G) with 64M of metadata.
LVM_LOOP=""
lvm_pool_setup() {
    export LVM_SUPPRESS_FD_WARNINGS=1
    truncate -s 6G "$LAB/lvm.img"
    LVM_LOOP=$(losetup -f --show "$LAB/lvm.img")
    pvcreate -ff -y "$LVM_LOOP" >/dev/null &&
        vgcreate docker "$LVM_LOOP" >/dev/null &&
        lvcreate -y --wipesignatures y -n thinpool docker -L "${1:-2G}" >/dev/null &&
        lvcreate -y --wipesignatures y -n thinpoolmeta docker -L 64M >/dev/null &&
        lvconvert -y --zero n -c 512K --thinpool docker/thinpool --poolmetadata docker/thinpoolmeta >/dev/null
}

# The VG and its loop device gone, for the next lvm_pool_setup.
lvm_pool_teardown() {
    vgchange -an docker >/dev/null 2>&1
    vgremove -ff -y docker >/dev/null 2>&1
    pvremove -ff -y "$LVM_LOOP" >/dev/null 2>&1
    losetup -d "$LVM_LOOP" 2>/dev/null
    rm -f "$LAB/lvm.img"
    LVM_LOOP=""
}

# dockerd_start NAME FS [EXTRA_DOCKERD_ARGS...]: a devicemapper dockerd
# (loop-lvm unless the extra args say otherwise) with dm.fs=FS.
dockerd_start() {
    local name=$1 fs=$2
    shift 2
    dockerd_launch "$name" --storage-driver devicemapper \
        --storage-opt "dm.fs=$fs" --storage-opt "dm.basesize=${ROOMY_BASESIZE:-2G}" "$@"
}

# dockerd_stop NAME [keep-containerd]
dockerd_stop() {
    local name=$1 dir=$LAB/$1 pid i
    pid=$(<"$dir/dockerd.pid.launch")
    kill -TERM "$pid" 2>/dev/null || true
    # dockerd waits up to 15 s for containers (--shutdown-timeout), then
    # deactivates devices.
    for ((i = 0; i < 240; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        lab_log "dockerd $name still alive after 120 s; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    [[ ${2:-} == keep-containerd ]] || containerd_stop "$name"
    cp "$dir/dockerd.log" "$ROOMY_VM_OUT/dockerd-$name.log" 2>/dev/null || true
}

# Restarts dockerd only, as `systemctl restart docker` does: containerd
# (and, with live-restore, the containers) stay up.
dockerd_restart() {
    local name=$1 args
    args=$(<"$LAB/$1/args")
    dockerd_stop "$name" keep-containerd
    eval "dockerd_launch \"\$name\" $args"
}

# roomy/busybox:latest from the host's busybox-static: a rootfs with
# /bin/busybox and a relative symlink per applet, imported with docker import.
image_import() {
    local root=$LAB/busybox-rootfs a
    rm -rf "$root"
    mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp,root}
    cp /bin/busybox "$root/bin/busybox"
    for a in $(/bin/busybox --list); do
        [[ $a == busybox ]] || ln -sf busybox "$root/bin/$a"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    tar -C "$root" -c . |
        D import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - roomy/busybox:latest >/dev/null
}

pass() {
    echo "PASS $1"
    echo "PASS $1" >>"$LAB_RESULTS"
}

fail() {
    echo "FAIL $1: ${2:-}"
    echo "FAIL $1" >>"$LAB_RESULTS"
}

# check NAME CONDITION-COMMAND...: pass/fail one assertion.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name" "$* (last output: ${OUT:-})"; fi
}

# wait_until SECONDS CONDITION-STRING: true as soon as the condition is,
# false once SECONDS have passed on the clock. (It counted 0.2 s sleeps, so
# a condition that itself takes a second, a docker exec on a loaded machine,
# stretched "300" to over 900 s: a CI run spent a group's budget there.)
wait_until() {
    local end=$((SECONDS + $1))
    while :; do
        eval "$2" && return 0
        ((SECONDS >= end)) && return 1
        sleep 0.2
    done
}

# Writers inside containers. box_write C FILE MiB [DD-OPERAND...] writes MiB
# of zeros to FILE in container C in the background. Its exit code and dd's
# complaint go to C's /dev/shm (the tmpfs Docker gives every container), not
# beside FILE: a writer meant to fill the disk must still be able to say how
# it ended (in a CI run the shell could not create /fill2.rc on the full XFS
# and the test waited for it until its group's budget ran out).
box_write() {
    local c=$1 f=$2 n=$3 s=/dev/shm/${2##*/}
    shift 3
    D exec -d "$c" sh -c "dd if=/dev/zero of=$f bs=1M count=$n $* 2>$s.err; echo \$? >$s.rc"
}
# box_write_wait C FILE SECONDS: until that writer has ended; when it has not,
# what the container runs and how full it is go to the log.
box_write_wait() {
    local s=/dev/shm/${2##*/}
    wait_until "$3" "D exec $1 test -s $s.rc" && return 0
    lab_log "$1: the writer of $2 still runs after $3 s: $(D exec "$1" sh -c 'ps; df -h /' 2>&1 | tr '\n' ' ')"
    return 1
}
box_write_rc() { D exec "$1" cat "/dev/shm/${2##*/}.rc" 2>/dev/null; }
box_write_err() { D exec "$1" cat "/dev/shm/${2##*/}.err" 2>/dev/null; }
# box_write_ok C FILE: it ended with exit 0 and without ENOSPC.
box_write_ok() { [[ $(box_write_rc "$1" "$2") == 0 ]] && ! box_write_err "$1" "$2" | grep -qi 'no space'; }

# agent_metric NAME: the value of one sample on the agent's /metrics
# (--metrics-listen 127.0.0.1:9787); nothing when the agent does not answer,
# so a `test ... -eq 0` on it fails instead of passing on a dead endpoint.
agent_metric() {
    curl -s --max-time 5 http://127.0.0.1:9787/metrics |
        awk -v name="$1 " 'index($0, name) == 1 {v = $NF} END {if (v != "") print v + 0}'
}

# Exactly one final line; non-zero when anything failed.
summary() {
    local p f
    # grep -c exits 1 on a count of 0: not a failure under set -e.
    p=$(grep -c '^PASS' "$LAB_RESULTS" || true)
    f=$(grep -c '^FAIL' "$LAB_RESULTS" || true)
    echo "$p passed, $f failed"
    [[ $f -eq 0 ]]
}

lab_scenario() { echo "$1" >"$ROOMY_VM_OUT/current-scenario"; }

# lab_group NAME BUDGET FN: run FN in its own process group with a watchdog
# of BUDGET seconds. Budgets are set at about 2.5x what the group takes on
# the machine it was measured on, since machines here differ by 2x: a group
# that runs out is stuck, not slow. Everything the group started (dockerd,
# its containerd, the agent) is in its process group and dies with it; the
# next group starts its own dockerd, so it does not inherit the wreck.
lab_group() {
    local name=$1 budget=$2 fn=$3 t0 start pid current
    echo "=== group $name (budget ${budget}s)"
    lab_scenario "$name (setup)"
    t0=$(lab_now)
    start=$SECONDS
    set -m
    # Job control off inside, so the group's own background jobs stay in
    # its process group.
    (
        set +m
        "$fn"
    ) &
    pid=$!
    set +m
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS - start >= budget)); then
            current=$(<"$ROOMY_VM_OUT/current-scenario")
            echo "lab: group $name ran out of its ${budget}s budget during $current; killing it" >&2
            kill -TERM -- "-$pid" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 -- "-$pid" 2>/dev/null || break
                sleep 0.5
            done
            kill -KILL -- "-$pid" 2>/dev/null
            fail "group $name" "ran out of its ${budget}s budget during $current (see TIME lines for how far it got)"
            break
        fi
        sleep 1
    done
    wait "$pid" 2>/dev/null
    lab_time "group-$name" "$t0"
}

check_dmesg() {
    local hits
    hits=$(dmesg | grep -E 'WARNING:|BUG:' || true)
    if [[ -n $hits ]]; then
        echo "$hits" | head -n 20
        fail dmesg "kernel WARNING/BUG in dmesg"
    else
        pass dmesg
    fi
}

# ------------------------------------------------------------ roomy-agent
# agent_start [VAR=VALUE...]: start roomy-agent for dockerd $NAME (socket
# $LAB/$NAME/agent.sock, state $LAB/$NAME/state), env VAR=VALUE added;
# wait for its socket. agent_stop: SIGTERM and wait. R ARGS...: roomyctl
# against it, output in $OUT, exit code in $RC. Needs BIN and NAME; extra
# agent flags in the array AGENT_ARGS; AGENT_BIN: another agent build's dir.
# shellcheck disable=SC2034 # set by the scripts that source this
AGENT_ARGS=()

agent_start() {
    # shellcheck disable=SC2153 # NAME is set by the sourcing script
    local dir=$LAB/$NAME i
    mkdir -p "$dir/state"
    rm -f "$dir/agent.sock"
    env "$@" RUST_LOG="${RUST_LOG:-info}" "${AGENT_BIN:-$BIN}/roomy-agent" \
        --socket "$dir/agent.sock" --state-dir "$dir/state" \
        --docker-host "unix://$dir/docker.sock" --guard-interval 2 "${AGENT_ARGS[@]}" \
        </dev/null >>"$dir/agent.log" 2>&1 &
    echo $! >"$dir/agent.pid"
    for ((i = 0; i < 300; i++)); do
        [[ -S $dir/agent.sock ]] && return 0
        kill -0 "$(<"$dir/agent.pid")" 2>/dev/null || break
        sleep 0.2
    done
    echo "agent did not start; log tail:" >&2
    tail -n 30 "$dir/agent.log" >&2
    return 1
}

agent_stop() {
    local pid
    [[ -f $LAB/$NAME/agent.pid ]] || return 0
    pid=$(<"$LAB/$NAME/agent.pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------ controller lab
# controller_lab DIR [AGENT-ARG...]: the fleet in one VM. Certificates
# (`roomyctl certs init`: host vmhost, user olga as operator) in $LAB/DIR/pki;
# the agent in use restarted on mutual TLS at 127.0.0.1:7444 with the extra
# arguments given (it keeps its unix socket, so R still works); a
# roomy-controller on 127.0.0.1:7443 that knows the agent as "vmhost",
# started and answering. C then runs roomyctl through it as olga.
# AGENT_ARGS keeps the TLS arguments until the caller empties it.
CTL_DIR="" CONTROLLER=""
controller_lab() {
    CTL_DIR=$LAB/$1
    shift
    local pki=$CTL_DIR/pki
    mkdir -p "$CTL_DIR"
    "$BIN/roomyctl" certs init --out "$pki" --host vmhost --user olga:operator >/dev/null || return 1
    agent_stop
    AGENT_ARGS=(--listen 127.0.0.1:7444 --tls-cert "$pki/agents/vmhost.pem" --tls-key "$pki/agents/vmhost.key"
        --tls-ca "$pki/ca.pem" "$@")
    agent_start || return 1
    sed -e 's/^listen = .*/listen = "127.0.0.1:7443"/' "$pki/controller.toml" >"$CTL_DIR/controller.toml"
    printf '\n[[hosts]]\nname = "vmhost"\naddress = "127.0.0.1:7444"\n' >>"$CTL_DIR/controller.toml"
    controller_start
}

# C ARGS...: roomyctl through the controller as olga; $OUT and $RC as R.
C() {
    # shellcheck disable=SC2034 # read by the scripts that source this
    OUT=$("$BIN/roomyctl" --controller 127.0.0.1:7443 --cert "$CTL_DIR/pki/users/olga.pem" \
        --key "$CTL_DIR/pki/users/olga.key" --ca "$CTL_DIR/pki/ca.pem" --timeout 60 "$@" 2>&1)
    # shellcheck disable=SC2034
    RC=$?
}

# The controller of controller_lab, (re)started until it answers (30 s;
# its log, appended to across restarts, is $CTL_DIR/controller.log).
controller_start() {
    "$BIN/roomy-controller" --config "$CTL_DIR/controller.toml" >>"$CTL_DIR/controller.log" 2>&1 &
    CONTROLLER=$!
    if wait_until 90 'C hosts ls; [[ $RC -eq 0 ]]'; then return 0; fi
    echo "controller did not answer in 30 s; log tail:" >&2
    tail -n 10 "$CTL_DIR/controller.log" >&2
    return 1
}

controller_stop() {
    [[ -n $CONTROLLER ]] || return 0
    kill -TERM "$CONTROLLER" 2>/dev/null
    wait "$CONTROLLER" 2>/dev/null
    CONTROLLER=""
    cp "$CTL_DIR/controller.log" "$ROOMY_VM_OUT/controller-$(basename "$CTL_DIR").log" 2>/dev/null
    return 0
}

# roomyctl against the agent in use; output to $OUT, exit code in $RC.
R() {
    # shellcheck disable=SC2034 # read by the scripts that source this
    OUT=$("$BIN/roomyctl" --agent "unix://$LAB/$NAME/agent.sock" "$@" 2>&1)
    # shellcheck disable=SC2034
    RC=$?
}

# ------------------------------------------------------ overlay2 on XFS quota
# xfs_quota_root NAME SIZE [MNT]: a sparse loop file $LAB/xfs-NAME.img of
# SIZE (truncate syntax), mkfs.xfs, mounted with prjquota (project quota
# accounting and enforcement: what overlay2's size= needs, F11/F12) at MNT,
# by default $LAB/NAME/root, the data root dockerd_launch NAME uses. Prints
# MNT; already mounted: just prints it.
xfs_quota_root() {
    local name=$1 size=$2 mnt=${3:-$LAB/$1/root} img=$LAB/xfs-$1.img
    mkdir -p "$mnt"
    if ! mountpoint -q "$mnt"; then
        rm -f "$img"
        truncate -s "$size" "$img" || return 1
        mkfs.xfs -q -f "$img" >&2 || { lab_log "mkfs.xfs $img failed"; return 1; }
        mount -o loop,prjquota "$img" "$mnt" || { lab_log "mount -o loop,prjquota $img failed"; return 1; }
    fi
    if ! xfs_quota -x -c 'state -p' "$mnt" 2>/dev/null | grep -q 'Enforcement: ON'; then
        lab_log "project quota not enforced on $mnt"
        xfs_quota -x -c 'state -p' "$mnt" >&2
        return 1
    fi
    echo "$mnt"
}

# xfs_projid PATH: "projid = N" from xfs_io's lsproj, N printed.
xfs_projid() {
    xfs_io -r -c lsproj "$1" 2>/dev/null | sed -n 's/^projid = \([0-9]*\)$/\1/p'
}

# overlay_quota_check NAME [CONTAINER]: on overlay2 dockerd NAME (running,
# data root from xfs_quota_root NAME, roomy/busybox imported): create
# CONTAINER (default q1) with --storage-opt size=1G, check df inside shows
# ~1 GiB, find the layer's project id (parent of UpperDir), raise its
# limits to 3 GiB with xfs_quota, check df shows ~3 GiB at once, write
# 1.5 GB. Results as pass/fail "overlay-NAME-..."; the id in $PROJID.
overlay_quota_check() {
    local name=$1 c=${2:-q1} mnt=$LAB/$1/root t0 upper layer mb home out
    local p=overlay-$name
    PROJID=
    t0=$(lab_now)
    if ! D run -d --name "$c" --storage-opt size=1G roomy/busybox sleep 1d >/dev/null; then
        fail "$p-run" "docker run --storage-opt size=1G failed"
        tail -n 20 "$LAB/$name/dockerd.log"
        return 1
    fi
    lab_time "$p-run" "$t0"
    pass "$p-run"
    D exec "$c" df -m / || true
    mb=$(D exec "$c" df -mP / | awk 'NR == 2 { print $2 }') || true
    if [[ $mb =~ ^[0-9]+$ && $mb -ge 1000 && $mb -le 1050 ]]; then
        pass "$p-df-1g"
    else
        fail "$p-df-1g" "df -m / inside shows ${mb} MB, not ~1024"
    fi
    upper=$(D inspect -f '{{.GraphDriver.Data.UpperDir}}' "$c") || true
    layer=$(dirname "$upper")
    home=$mnt/overlay2
    echo "UpperDir $upper"
    echo "lsproj $layer: $(xfs_io -r -c lsproj "$layer" 2>&1)"
    echo "lsproj $layer/diff: $(xfs_io -r -c lsproj "$layer/diff" 2>&1)"
    echo "lsproj $layer-init: $(xfs_io -r -c lsproj "$layer-init" 2>&1)"
    echo "lsproj $home (overlay2 home): $(xfs_io -r -c lsproj "$home" 2>&1)"
    echo "lsattr -v $layer (PROJINHERIT: \"proj-inherit\"):"
    xfs_io -r -c 'lsattr -v' "$layer" 2>&1 || true
    PROJID=$(xfs_projid "$layer") || true
    if [[ $PROJID =~ ^[0-9]+$ && $PROJID -gt 0 ]]; then
        pass "$p-projid"
    else
        fail "$p-projid" "no project id on $layer"
        return 1
    fi
    echo "--- xfs_quota report -p (KiB)"
    xfs_quota -x -c 'report -p -b' "$mnt" || true
    t0=$(lab_now)
    xfs_quota -x -c "limit -p bsoft=3g bhard=3g $PROJID" "$mnt" || fail "$p-limit" "xfs_quota limit failed"
    lab_time "$p-limit" "$t0"
    mb=$(D exec "$c" df -mP / | awk 'NR == 2 { print $2 }') || true
    D exec "$c" df -m / || true
    if [[ $mb =~ ^[0-9]+$ && $mb -ge 3000 && $mb -le 3100 ]]; then
        pass "$p-df-3g"
    else
        fail "$p-df-3g" "df -m / inside shows ${mb} MB after the raise, not ~3072"
    fi
    t0=$(lab_now)
    if out=$(D exec "$c" dd if=/dev/zero of=/big bs=1M count=1500 conv=fsync 2>&1); then
        pass "$p-write-1500m"
    else
        fail "$p-write-1500m" "1.5 GB write under the raised 3 GiB limit failed"
    fi
    tail -n 1 <<<"$out"
    lab_time "$p-write-1500m" "$t0"
    D exec "$c" df -m / || true
}

# ------------------------------------------------------------- benchmarks

# timed FILE CMD...: run CMD, append its wall time (us) to FILE; a failure
# counts in BENCH_FAILS. $EPOCHREALTIME is bash's gettimeofday, the same
# clock as `date +%s%N` without forking a process around each measurement
# (that fork would add the same constant to every method).
BENCH_FAILS=0
timed() {
    local file=$1 t0 t1 rc
    shift
    t0=${EPOCHREALTIME//[.,]/}
    "$@"
    rc=$?
    t1=${EPOCHREALTIME//[.,]/}
    echo $((t1 - t0)) >>"$file"
    if [[ $rc -ne 0 ]]; then
        BENCH_FAILS=$((BENCH_FAILS + 1))
        echo "bench: '$*' exited $rc" >&2
    fi
    return "$rc"
}

# Wall clock in microseconds, without a fork (as `timed`).
now_us() { local t=${EPOCHREALTIME//[.,]/}; echo "$t"; }

# say TEXT...: print it and append it to $REPORT.
say() { echo "$*" | tee -a "$REPORT"; }

# percentile P <FILE: the P-th percentile of one number per line ("-" for
# none).
percentile() { sort -n | awk -v p="$1" '{a[NR]=$1} END {if (NR == 0) {print "-"; exit} i=int((NR-1)*p/100+0.5)+1; print a[i]}'; }

# stats FILE: "n median p95 min max" in ms (p95: nearest rank).
stats() {
    sort -n "$1" | awk '{ v[NR] = $1 } END {
        n = NR; med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        i = int(0.95 * n); if (i < 0.95 * n) i++; if (i < 1) i = 1
        printf "%d %.1f %.1f %.1f %.1f\n", n, med / 1000, v[i] / 1000, v[1] / 1000, v[n] / 1000 }'
}

# ratio X Y: X/Y as "N.NNx".
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (y > 0) printf "%.2fx", x / y; else printf "n/a" }'; }
