#!/bin/bash
# Host test of boot.sh's own control flow, with a stand-in for vng (no VM):
# a guest that dies before its script started is booted again once and says
# so; one that dies under the script, or dies twice, fails with vng's code.
# The stand-in runs the script on the host, where (without ROOMY_VM_ROOT)
# the guest's paths are the host's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # NAME WANT_RC WANT_RETRIES GOT_RC
    local got_retries=0
    [[ -e $tmp/work/out/boot-retries ]] && got_retries=$(wc -l <"$tmp/work/out/boot-retries")
    if [[ $4 -eq $2 && $got_retries -eq $3 ]]; then
        echo "PASS boot.sh: $1"
    else
        echo "FAIL boot.sh: $1: rc $4 (want $2), boots again $got_retries (want $3)"
        sed 's/^/    /' "$tmp/log"
        fails=$((fails + 1))
    fi
}

mkdir -p "$tmp/fake"
# DIE=before|after|never, per call number (calls counted in $tmp/calls).
cat >"$tmp/fake/vng" <<'FAKE'
#!/bin/bash
n=$(($(cat "$FAKE_CALLS" 2>/dev/null || echo 0) + 1)); echo "$n" >"$FAKE_CALLS"
plan=(${FAKE_PLAN}); what=${plan[$((n - 1))]:-never}
while [[ $# -gt 0 && $1 != --exec ]]; do shift; done
script=$2
echo "[    1.4] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI (stand-in, call $n)"
case $what in
before) exit 255 ;;
after) out=$(dirname "$script"); : >"$out/started"; exit 255 ;;
*) "$script"; exit $? ;;
esac
FAKE
chmod +x "$tmp/fake/vng"
printf '#!/bin/bash\necho guest ran; exit 7\n' >"$tmp/guest.sh"
chmod +x "$tmp/guest.sh"

run() { # PLAN
    rm -f "$tmp/calls"
    set +e
    PATH=$tmp/fake:$PATH FAKE_CALLS=$tmp/calls FAKE_PLAN=$1 ROOMY_VM_WORK=$tmp/work \
        ROOMY_VM_DISK_SIZE=1M ROOMY_VM_TIMEOUT=60 "$here/boot.sh" "$tmp/guest.sh" >"$tmp/log" 2>&1
    rc=$?
    set -e
}

run "before never"
check "a kernel that died before the script boots again, and the script's rc is kept" 7 1 "$rc"
grep -q "booting again" "$tmp/log" || { echo "FAIL boot.sh: no 'booting again' line"; fails=$((fails + 1)); }
[[ -s $tmp/work/out/console.boot-1.log ]] || { echo "FAIL boot.sh: the first boot's console log was not kept"; fails=$((fails + 1)); }
run "after never"
check "a guest that died under the script fails, not booted again" 255 0 "$rc"
run "before before"
check "a kernel that dies at boot twice fails" 255 1 "$rc"
run "never"
check "a clean boot runs once" 7 0 "$rc"
[[ $(cat "$tmp/calls") -eq 1 ]] || { echo "FAIL boot.sh: a clean boot started vng $(cat "$tmp/calls") times"; fails=$((fails + 1)); }
exit $((fails > 0))
