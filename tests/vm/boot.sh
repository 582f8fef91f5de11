#!/bin/bash
# Boot a throwaway VM with a real Debian kernel (device-mapper, xfs, loop as
# modules) over the host's root filesystem and run one guest script in it.
#
#   tests/vm/boot.sh GUEST_SCRIPT [ARGS...]
#
# Exits with the guest script's exit code (124 on timeout).
# Env: ROOMY_VM_WORK (host work dir, default /tmp/roomy-vm),
#      ROOMY_VM_KERNEL (default /boot/vmlinuz-6.1.0-56-amd64, else the newest
#      /boot/vmlinuz-*-amd64),
#      ROOMY_VM_MEMORY (4G), ROOMY_VM_CPUS (2), ROOMY_VM_DISK_SIZE (48G, sparse),
#      ROOMY_VM_CPU (QEMU's -cpu, default max,erms=off,fsrm=off: see below),
#      ROOMY_VM_VERBOSE (1: the kernel's messages in the console log),
#      ROOMY_VM_KEEP_DISK (1: keep the guest's disk image after the run),
#      ROOMY_VM_TIMEOUT (1500 s; scripts/test.sh sets it from the scenario
#      groups' budgets). Every ROOMY_* variable set by the caller is
#      exported to the guest script, plus ROOMY_VM_OUT (the rw shared dir,
#      same path on host and guest) and ROOMY_VM_DISK_SERIAL.
#
#      ROOMY_VM_ROOT=DIR boots DIR as the guest's root instead of the host's
#      (e.g. DIR=$(tests/vm/trixie-root.sh): Debian 13, Docker 26). Then the
#      kernel is the newest DIR/boot/vmlinuz-* unless ROOMY_VM_KERNEL is set,
#      and the guest cannot see host paths, so boot.sh snapshots the guest
#      script's directory to $ROOMY_VM_WORK/vm and $ROOMY_BIN's executables to
#      $ROOMY_VM_WORK/bin and mounts them, with $ROOMY_VM_WORK/out, at
#      /srv/roomy/{vm,bin,out} in the guest (read-only, read-only, rw);
#      ROOMY_BIN and ROOMY_VM_OUT in the guest are those guest paths. Logs,
#      rc, timings: $ROOMY_VM_WORK/out on the host, as without a root. The
#      root itself is not written to (beyond creating the three mount points),
#      so several VMs can share one.
set -euo pipefail

die() { echo "boot.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || die "usage: $0 GUEST_SCRIPT [ARGS...]"
script=$(realpath -e -- "$1") || die "guest script $1 not found"
shift
[[ -x $script ]] || die "guest script $script is not executable"

vm_root=
if [[ -n ${ROOMY_VM_ROOT:-} ]]; then
    vm_root=$(realpath -e -- "$ROOMY_VM_ROOT") || die "ROOMY_VM_ROOT $ROOMY_VM_ROOT not found"
    [[ $vm_root != / ]] || vm_root=
fi
if [[ -n $vm_root ]]; then
    [[ -x $vm_root/bin/sh ]] || die "ROOMY_VM_ROOT $vm_root has no /bin/sh: not a root filesystem"
    kernel=${ROOMY_VM_KERNEL:-}
    if [[ -z $kernel ]]; then
        kernel=$(find "$vm_root/boot" -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V | tail -n 1)
        [[ -n $kernel ]] || die "no $vm_root/boot/vmlinuz-*: set ROOMY_VM_KERNEL"
    fi
else
    kernel=${ROOMY_VM_KERNEL:-/boot/vmlinuz-6.1.0-56-amd64}
    # A fresh install may bring another 6.1 ABI: take the newest Debian kernel.
    if [[ -z ${ROOMY_VM_KERNEL:-} && ! -e $kernel ]]; then
        kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' | sort -V | tail -n 1)
        kernel=${kernel:-/boot/vmlinuz-6.1.0-56-amd64}
    fi
fi
command -v vng >/dev/null || die "vng (virtme-ng) not found: run tests/vm/install-deps.sh"
[[ -r $kernel ]] || die "kernel $kernel not found/readable: run tests/vm/install-deps.sh"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: run tests/vm/install-deps.sh"

work=$(realpath -m -- "${ROOMY_VM_WORK:-/tmp/roomy-vm}")
out=$work/out
disk=$work/disk.img
timeout_s=${ROOMY_VM_TIMEOUT:-1500}

# Fresh state every boot: the disk is disposable, results of the previous run
# would be misleading.
mkdir -p "$work"
rm -rf "$out" "$disk" "$work/vm" "$work/bin"
mkdir -p "$out"
# Sparse: only what the guest writes takes host space. 48G: one boot runs
# every group, and their data roots stay on it (16G filled up once the
# overlay2 groups joined the devicemapper ones: about 30G in all).
truncate -s "${ROOMY_VM_DISK_SIZE:-48G}" "$disk"
# A full run writes about 30 GiB into it; with less room than that the
# guest would stop at the first write that finds none, silently.
free_gib=$(($(df --output=avail -k "$work" | tail -n 1) / 1048576))
((free_gib >= 30)) ||
    echo "boot.sh: warning: only ${free_gib} GiB free under $work, and a full run writes about 30 GiB to its disk; free some (disk images kept with ROOMY_VM_KEEP_DISK), or set ROOMY_VM_WORK to a roomier place" >&2

# Guest-side paths: the same as the host's over the host's root; with
# ROOMY_VM_ROOT, host dirs mounted at /srv/roomy/* (vng's
# --rwdir/--rodir GUEST=HOST), so the shared root is never written to.
guest_out=$out
guest_script=$script
mounts=(--rwdir "$out")
if [[ -n $vm_root ]]; then
    guest_dir=/srv/roomy
    mkdir -p "$vm_root$guest_dir/out" "$vm_root$guest_dir/vm" "$vm_root$guest_dir/bin" ||
        die "cannot create the mount points $vm_root$guest_dir/{out,vm,bin}"
    # Snapshots, not live dirs: a build or an edit on the host during the run
    # must not change what the guest runs.
    cp -a "$(dirname "$script")/." "$work/vm/"
    # The scenarios that run Roomy from its images need scripts/image.sh,
    # which lives outside the script's directory: snapshotted beside it.
    image_sh=$(dirname "$script")/../../scripts/image.sh
    if [[ -f $image_sh ]]; then
        mkdir -p "$work/vm/scripts"
        cp -p "$image_sh" "$work/vm/scripts/"
        export ROOMY_IMAGE_SH=$guest_dir/vm/scripts/image.sh
    fi
    guest_out=$guest_dir/out
    guest_script=$guest_dir/vm/$(basename "$script")
    mounts=(--rwdir "$guest_out=$out" --rodir "$guest_dir/vm=$work/vm")
    if [[ -n ${ROOMY_BIN:-} ]]; then
        bin_host=$(realpath -e -- "$ROOMY_BIN") || die "ROOMY_BIN $ROOMY_BIN not found"
        mkdir -p "$work/bin"
        # The executables only (target/release also holds GBs of build state).
        find "$bin_host" -maxdepth 1 -type f -perm -u+x -exec cp --reflink=auto -p {} "$work/bin/" \;
        mounts+=(--rodir "$guest_dir/bin=$work/bin")
        ROOMY_BIN=$guest_dir/bin
    fi
fi

# vng --exec does not forward the caller's environment, so write it to a file
# in the shared dir and let a small runner source it. virtio-blk serials hold
# at most 20 bytes; vng uses the image path as the serial.
ROOMY_VM_OUT=$guest_out
ROOMY_VM_DISK_SERIAL=${disk:0:20}
export ROOMY_VM_OUT ROOMY_VM_DISK_SERIAL
{
    echo "# generated by boot.sh"
    while IFS= read -r name; do
        printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e | grep '^ROOMY_' || true)
    printf 'export ROOMY_VM_BOOT_T0=%q\n' "$(date +%s.%N)"
} >"$out/env.sh"

# The runner records the rc in the shared dir too, so a guest that dies
# without a clean exit (panic, timeout) is not mistaken for success.
{
    echo '#!/bin/bash'
    # First thing: say the kernel got as far as the script (see the retry below).
    printf ': > %q\n' "$guest_out/started"
    printf 'set -a; . %q; set +a\n' "$guest_out/env.sh"
    # One channel for both streams keeps their order on the host.
    echo 'exec 2>&1'
    printf 'cd %q\n' "$(dirname "$guest_script")"
    printf '%q' "$guest_script"
    [[ $# -gt 0 ]] && printf ' %q' "$@"
    echo
    # Flushed before the guest powers off: once (a bench run, 2026-12-06)
    # the file was missing on the host after the script had finished.
    # shellcheck disable=SC2016 # expanded in the guest
    printf 'rc=$?; echo "$rc" > %q; sync %q; exit "$rc"\n' "$guest_out/rc" "$guest_out/rc"
} >"$out/run.sh"
chmod +x "$out/run.sh"

# vng shares files with the guest over virtiofs when it finds a Rust
# virtiofsd on PATH (install-deps.sh builds one), else over 9p, slower.
virtiofsd_dir=${ROOMY_VM_CACHE:-/var/cache/roomy-vm}/virtiofsd/bin
if [[ -x $virtiofsd_dir/virtiofsd ]]; then
    PATH=$virtiofsd_dir:$PATH
else
    echo "boot.sh: no $virtiofsd_dir/virtiofsd (tests/vm/install-deps.sh builds it): files go over 9p, slower" >&2
fi

# The scratch disk, over virtio-blk as vng's --disk attaches it, but with
# cache=unsafe: the guest's flushes are not passed to this machine's disk.
# The image is thrown away after the boot, so a host crash losing it costs
# nothing, and the guest's own fsync and power-cut semantics (dm-flakey,
# inside the guest) are unchanged. With vng's default (writeback, every
# guest flush an fdatasync here) s1 (a 3G write with fsync) took 229 s,
# with cache=unsafe 170 s, in runs alone on this 2-core machine.
disk_args=(--disk "$disk")
if [[ ${ROOMY_VM_DISK_CACHE:-unsafe} != default ]]; then
    disk_args=("--qemu-opts=-drive if=none,id=roomy-disk,file=$disk,format=raw,cache=${ROOMY_VM_DISK_CACHE:-unsafe},aio=threads -device virtio-blk-pci,drive=roomy-disk,serial=$ROOMY_VM_DISK_SERIAL")
fi

root_args=()
[[ -n $vm_root ]] && root_args=(--root "$vm_root")
# vng hides the kernel's messages; ROOMY_VM_VERBOSE=1 shows them in the
# console log (to see why a guest died).
[[ ${ROOMY_VM_VERBOSE:-} == 1 ]] && root_args+=(--verbose)
echo "boot.sh: booting $kernel${vm_root:+ over root $vm_root} (mem ${ROOMY_VM_MEMORY:-4G}, disk $disk, out $out, timeout ${timeout_s}s)" >&2
# QEMU 7.2's TCG (Debian 12) now and then runs a stale translation of a
# static branch the kernel has just patched: "Oops: int3" in early boot
# (seen once, in CI's run of the 6.12 tier; 0 in 30 bare boots here),
# before any of our code ran. Only that case boots again, once, and says so; a
# guest that dies after the script started fails as it did.
# The CPU: vng asks TCG for "max", whose ERMS bit makes the kernel clear and
# copy memory with `rep stosb`/`movsb`, which TCG runs one byte per loop
# turn. Without ERMS and FSRM the kernel takes its `rep stosq` and unrolled
# paths: in a guest here, 400 MiB written to tmpfs took 1.8 s instead of
# 5.2 s and a 400 MiB allocation 1.6 s instead of 4.8; fork+exec did not
# change. Nothing Roomy does depends on those two bits.
cpu_args=(--qemu-opt=-cpu "--qemu-opt=${ROOMY_VM_CPU:-max,erms=off,fsrm=off}")
deadline=$((SECONDS + timeout_s))
for attempt in 1 2; do
    rm -f "$out/started" "$out/rc"
    set +e
    # timeout (without --foreground) signals its whole process group, so qemu
    # dies with vng. stdin from /dev/null: CI has no terminal and vng must not
    # grab ours. The pipe matters: QEMU reopens /proc/self/fd/1 and /proc/self/fd/2
    # with its own offsets, so when our stdout is a regular file the streams
    # overwrite each other; through a pipe nothing is lost (and a copy is kept).
    timeout -k 20 $((deadline - SECONDS)) vng -r "$kernel" "${root_args[@]}" --disable-kvm \
        --memory "${ROOMY_VM_MEMORY:-4G}" --cpus "${ROOMY_VM_CPUS:-2}" "${cpu_args[@]}" \
        -a apparmor=0 -a security=none \
        "${mounts[@]}" "${disk_args[@]}" \
        --exec "$guest_out/run.sh" </dev/null 2>&1 | tee "$out/console.log"
    vng_rc=${PIPESTATUS[0]}
    set -e
    [[ $vng_rc -ne 124 && ! -e $out/started && $attempt -eq 1 ]] || break
    mv "$out/console.log" "$out/console.boot-$attempt.log"
    echo "boot.sh: the kernel died while booting, before the guest script started (vng rc $vng_rc; its messages: $out/console.boot-$attempt.log); booting again" >&2
    echo "$kernel" >>"$out/boot-retries"
    truncate -s 0 "$disk" && truncate -s "${ROOMY_VM_DISK_SIZE:-48G}" "$disk"
done

# The disk is the guest's scratch space, tens of GiB of a sparse file
# after a full run or a bench: gone with the guest (its logs are in $out),
# unless kept for a look inside (ROOMY_VM_KEEP_DISK=1; then
# mount -o loop,ro,noload). Kept, three bench runs filled this machine's
# disk, and QEMU pauses a guest whose disk write finds no space until the
# watchdog ends it.
[[ -n ${ROOMY_VM_KEEP_DISK:-} ]] || rm -f "$disk"

if [[ $vng_rc -eq 124 ]]; then
    echo "boot.sh: TIMEOUT after ${timeout_s}s" >&2
    exit 124
fi
if [[ ! -s $out/rc ]]; then
    echo "boot.sh: guest script did not finish (vng rc $vng_rc)" >&2
    # vng's 255: QEMU exited without the script's exit code (a kernel panic).
    if [[ ! -e $out/started ]]; then
        echo "boot.sh: the kernel died twice before the guest script started; its messages: $out/console.log and console.boot-1.log (ROOMY_VM_VERBOSE=1 shows all)" >&2
    elif [[ $vng_rc -eq 255 ]]; then
        echo "boot.sh: the guest died under the script (kernel panic?); ROOMY_VM_VERBOSE=1 shows the kernel's messages in $out/console.log" >&2
    fi
    exit $((vng_rc == 0 ? 1 : vng_rc))
fi
rc=$(<"$out/rc")
echo "boot.sh: guest script exited $rc (logs in $out)" >&2
exit "$rc"
