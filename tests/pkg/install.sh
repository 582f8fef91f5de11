#!/bin/bash
# Installs Roomy's Debian packages into a fresh Debian root the way an
# operator would (dpkg -i, then apt's dependency resolution is not needed:
# the root has what $auto computed), and checks what they promise:
#
#   tests/pkg/install.sh ROOT DEB...
#
# ROOT is a debootstrapped Debian root (the Docker 26 tier's, from
# tests/vm/trixie-root.sh); it is not modified: the packages go into an
# overlay on top of it, thrown away at the end. Needs root (mount, chroot).
# Ends with "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: tests/pkg/install.sh ROOT DEB..." >&2; exit 2; }
base=$(realpath -- "$1"); shift
[[ -x $base/usr/bin/dpkg ]] || { echo "install.sh: $base is not a Debian root (no usr/bin/dpkg)" >&2; exit 2; }

work=$(mktemp -d /tmp/roomy-pkg.XXXXXX)
root=$work/root
mkdir -p "$work"/{upper,work,root,debs}
cleanup() {
    umount "$root/proc" 2>/dev/null || true
    umount "$root" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/work" "$root"
mount -t proc proc "$root/proc"
cp -- "$@" "$work/debs/"
mkdir -p "$root/tmp/debs" && cp -- "$@" "$root/tmp/debs/"

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "PASS $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# 1. Install: dpkg alone, as from a downloaded file; no daemon may start
#    (none has a configuration yet) and no unit may be enabled.
# No shell runs in the root to expand a glob: the names, one by one.
in_root_debs=()
for d in "$@"; do in_root_debs+=("/tmp/debs/${d##*/}"); done
if in_root dpkg -i "${in_root_debs[@]}" >"$work/dpkg.log" 2>&1; then ok "dpkg -i of $(ls "$work/debs" | paste -sd' ')"; else
    cat "$work/dpkg.log"; bad "dpkg -i"; fi
for p in roomy-agent roomy-controller roomyctl; do
    check "$p is installed (dpkg status ii)" \
        bash -c "chroot '$root' dpkg-query -W -f='\${db:Status-Abbrev}' $p | grep -q '^ii'"
done

# 2. The binaries from their installed paths.
check "roomy-agent --version from /usr/bin" bash -c "chroot '$root' /usr/bin/roomy-agent --version | grep -q '^roomy-agent [0-9]'"
check "roomy-controller --version from /usr/bin" bash -c "chroot '$root' /usr/bin/roomy-controller --version | grep -q '^roomy-controller [0-9]'"
check "roomyctl --help from /usr/bin names resize" bash -c "chroot '$root' /usr/bin/roomyctl --help | grep -q 'resize'"
# The agent must be the release build: the failpoints feature is tests only.
check "the packaged agent has no failpoints" bash -c "! grep -aq 'failpoint: SIGKILL' '$root/usr/bin/roomy-agent'"

# 3. Units installed, pointing at the installed binaries, not enabled.
for u in roomy-agent roomy-controller; do
    f=$root/usr/lib/systemd/system/$u.service
    [[ -f $f ]] || f=$root/lib/systemd/system/$u.service
    check "$u.service installed" test -f "$f"
    check "$u.service runs /usr/bin/$u" bash -c "grep -q '^ExecStart=/usr/bin/$u ' '$f' && test -x '$root/usr/bin/$u'"
    check "$u.service not enabled (no daemon without its configuration)" \
        bash -c "! ls '$root'/etc/systemd/system/*.wants/$u.service >/dev/null 2>&1"
done
check "no roomy process was started" bash -c "! pgrep -f '^/usr/bin/roomy-(agent|controller)' >/dev/null"

# 4. State directory, configs, man pages, completions.
check "/var/lib/roomy exists, root-owned, mode 700" \
    bash -c "[[ \$(stat -c '%U:%G %a' '$root/var/lib/roomy') == 'root:root 700' ]]"
check "/etc/roomy/controller.example.toml is a conffile" \
    bash -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' roomy-controller | grep -q '/etc/roomy/controller.example.toml'"
check "roomy-agent(8) is a man page of section 8" bash -c "zcat '$root/usr/share/man/man8/roomy-agent.8.gz' | grep -q '^.TH roomy-agent 8'"
check "roomy-controller(8) is a man page of section 8" bash -c "zcat '$root/usr/share/man/man8/roomy-controller.8.gz' | grep -q '^.TH roomy-controller 8'"
check "roomyctl(1) and roomyctl-resize(1) installed" \
    bash -c "zcat '$root/usr/share/man/man1/roomyctl.1.gz' | grep -q '^.TH roomyctl 1' && zcat '$root/usr/share/man/man1/roomyctl-resize.1.gz' | grep -q '^.TH roomyctl-resize 1'"
check "bash completion for roomyctl" grep -q 'roomyctl' "$root/usr/share/bash-completion/completions/roomyctl"
check "zsh and fish completions" test -s "$root/usr/share/zsh/vendor-completions/_roomyctl" -a -s "$root/usr/share/fish/vendor_completions.d/roomyctl.fish"

# 5. Removal and purge leave nothing of Roomy's behind but the state it
#    keeps (intent records must survive a remove/reinstall).
in_root dpkg -r roomy-agent roomy-controller roomyctl >>"$work/dpkg.log" 2>&1 || bad "dpkg -r"
check "dpkg -r removes the binaries" bash -c "! test -e '$root/usr/bin/roomy-agent' && ! test -e '$root/usr/bin/roomyctl'"
check "dpkg -r keeps /var/lib/roomy" test -d "$root/var/lib/roomy"
in_root dpkg -P roomy-controller >>"$work/dpkg.log" 2>&1 || bad "dpkg -P"
check "dpkg -P removes the example config" bash -c "! test -e '$root/etc/roomy/controller.example.toml'"

echo "packages: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
