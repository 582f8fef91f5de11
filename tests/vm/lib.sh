# shellcheck shell=bash
# Helpers for guest scripts run by tests/vm/boot.sh. Source it:
#   . "$(dirname "$0")/lib.sh"
#
# Functions:
#   lab_init                       modules, scratch disk at $LAB, dirs
#   dockerd_start NAME FS [ARGS..] start a devicemapper dockerd (dm.fs=FS),
#                                  wait for it, export DOCKER_HOST for it
#   dockerd_use NAME               point DOCKER_HOST at dockerd NAME
#   dockerd_stop NAME              SIGTERM, wait for exit
#   dockerd_restart NAME           stop + start with the args given at start
#   image_import                   build roomy/busybox:latest (no registry)
#   D ARGS..                       /usr/bin/docker (20.10) on $DOCKER_HOST
#   lab_now / lab_time LABEL START print and record "TIME LABEL: Ns"
#   pass NAME / fail NAME REASON   count results; summary prints the total
#   check_dmesg                    fail on WARNING:/BUG: in the kernel log
#
# Env: LAB (default /tmp/lab), ROOMY_VM_OUT (shared rw dir from boot.sh;
# timings and dockerd logs are copied there), DOCKER_HOST (set by
# dockerd_start/dockerd_use).

LAB=${LAB:-/tmp/lab}
ROOMY_VM_OUT=${ROOMY_VM_OUT:-/tmp}
LAB_PASSED=0
LAB_FAILED=0
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
    [[ -x /usr/sbin/runc ]] || { lab_log "runc missing"; return 1; }
    lab_log "scratch disk $disk on $LAB ($(df -h --output=size "$LAB" | tail -1 | tr -d ' '))"
}

D() { /usr/bin/docker "$@"; }

dockerd_use() { export DOCKER_HOST="unix://$LAB/$1/docker.sock"; }

# dockerd_start NAME FS [EXTRA_DOCKERD_ARGS...]
# Each NAME gets its own data-root, exec-root and socket; dockerd 20.10 then
# spawns its own containerd under the exec-root (/usr/bin/containerd), so
# several dockerds can run side by side (each with its own loop-lvm pool).
dockerd_start() {
    local name=$1 fs=$2 dir=$LAB/$1 t0 i
    shift 2
    mkdir -p "$dir"
    # Remembered for dockerd_restart.
    printf '%q ' "$fs" "$@" >"$dir/args"
    t0=$(lab_now)
    /usr/sbin/dockerd \
        --storage-driver devicemapper \
        --storage-opt "dm.fs=$fs" --storage-opt "dm.basesize=${ROOMY_BASESIZE:-2G}" \
        --iptables=false --bridge=none \
        --data-root "$dir/root" --exec-root "$dir/exec" \
        -H "unix://$dir/docker.sock" --pidfile "$dir/dockerd.pid" \
        "$@" </dev/null >>"$dir/dockerd.log" 2>&1 &
    echo $! >"$dir/dockerd.pid.launch"
    dockerd_use "$name"
    for ((i = 0; i < 120; i++)); do
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

dockerd_stop() {
    local name=$1 dir=$LAB/$1 pid i
    pid=$(<"$dir/dockerd.pid.launch")
    kill -TERM "$pid" 2>/dev/null || true
    # dockerd waits up to 15 s for containers (--shutdown-timeout), then
    # deactivates devices and stops its containerd.
    for ((i = 0; i < 120; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        lab_log "dockerd $name still alive after 60 s; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    cp "$dir/dockerd.log" "$ROOMY_VM_OUT/dockerd-$name.log" 2>/dev/null || true
}

dockerd_restart() {
    local name=$1 args
    args=$(<"$LAB/$1/args")
    dockerd_stop "$name"
    eval "dockerd_start \"\$name\" $args"
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
    LAB_PASSED=$((LAB_PASSED + 1))
    echo "PASS $1"
}

fail() {
    LAB_FAILED=$((LAB_FAILED + 1))
    echo "FAIL $1: ${2:-}"
}

# Exactly one final line; non-zero when anything failed.
summary() {
    echo "$LAB_PASSED passed, $LAB_FAILED failed"
    [[ $LAB_FAILED -eq 0 ]]
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
# agent flags in the array AGENT_ARGS.
# shellcheck disable=SC2034 # set by the scripts that source this
AGENT_ARGS=()

agent_start() {
    # shellcheck disable=SC2153 # NAME is set by the sourcing script
    local dir=$LAB/$NAME i
    mkdir -p "$dir/state"
    rm -f "$dir/agent.sock"
    env "$@" RUST_LOG="${RUST_LOG:-info}" "$BIN/roomy-agent" \
        --socket "$dir/agent.sock" --state-dir "$dir/state" \
        --docker-host "unix://$dir/docker.sock" --guard-interval 2 "${AGENT_ARGS[@]}" \
        </dev/null >>"$dir/agent.log" 2>&1 &
    echo $! >"$dir/agent.pid"
    for ((i = 0; i < 100; i++)); do
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
    pid=$(<"$LAB/$NAME/agent.pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# roomyctl against the agent in use; output to $OUT, exit code in $RC.
R() {
    # shellcheck disable=SC2034 # read by the scripts that source this
    OUT=$("$BIN/roomyctl" --agent "unix://$LAB/$NAME/agent.sock" "$@" 2>&1)
    # shellcheck disable=SC2034
    RC=$?
}
