#!/bin/bash
# Fuzz the parsers that take input from people, files, the kernel and the
# network (cargo-fuzz targets in fuzz/), each from an empty corpus.
#
#   scripts/fuzz.sh             what the test command runs: 8 s per
#                               target from a fixed seed, as many targets at
#                               once as there are cores (8 targets: 32 s on
#                               2 cores; a regression check, not a hunt)
#   scripts/fuzz.sh 600 [T...]  a longer hunt: 600 s per target (or the
#                               targets named), a seed of the clock's
#
# -a: debug assertions on, so an arithmetic overflow is a crash, not a wrong
# size. A crash is kept in fuzz/artifacts/TARGET/ and becomes a unit test
# beside its parser. Needs the nightly toolchain and cargo-fuzz
# (tests/vm/install-deps.sh installs cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ROOMY_BUILD_CACHE:-/var/cache/roomy-build}/target}

seconds=${1:-}
[[ -z $seconds || $seconds =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS [TARGET...]]" >&2; exit 2; }
shift || true
if [[ -n $seconds ]]; then
    seed=0 # libFuzzer: 0 is a seed from the clock
else
    seconds=8 seed=1
fi
jobs=${ROOMY_FUZZ_JOBS:-$(nproc)}

# NAME:MAX_LEN. superblock's inputs reach ext4's 64-bit block count at
# 64 + 0x150; a controller config with a policy and a webhook needs ~400.
table="sizes:256 targets:256 policies:256 superblock:512 mountinfo:256 docker_metadata:256 dm_lines:256 controller_config:512"
wanted=()
for t in $table; do
    [[ $# -eq 0 || " $* " == *" ${t%%:*} "* ]] && wanted+=("$t")
done

# Built once, before the runs, so parallel runs do not queue on cargo's lock.
fuzz_dir=$CARGO_TARGET_DIR/fuzz
(cd fuzz && cargo +nightly fuzz build -O -a --target-dir "$fuzz_dir" >/dev/null)
bin_dir=$fuzz_dir/x86_64-unknown-linux-gnu/release

corpus=$(mktemp -d /tmp/roomy-fuzz.XXXXXX)
trap 'rm -rf "$corpus"' EXIT
mkdir -p fuzz/artifacts
one() { # NAME:MAX_LEN; its exit code lands in $corpus/NAME.rc
    local name=${1%%:*} max_len=${1##*:} rc=0
    mkdir -p "$corpus/$name" "fuzz/artifacts/$name"
    "$bin_dir/$name" "$corpus/$name" -artifact_prefix="fuzz/artifacts/$name/" \
        -seed="$seed" -max_total_time="$seconds" -max_len="$max_len" >"$corpus/$name.log" 2>&1 || rc=$?
    if [[ $rc -eq 0 ]]; then
        echo "fuzz $name: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' "$corpus/$name.log" || echo "ran ${seconds}s, no crash")"
    else
        tail -40 "$corpus/$name.log" >&2
        echo "fuzz.sh: target $name failed (log above; the input is in fuzz/artifacts/$name/)" >&2
    fi
    echo "$rc" >"$corpus/$name.rc"
}
for t in "${wanted[@]}"; do
    # At most $jobs at once.
    while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do wait -n || true; done
    one "$t" &
done
wait
for t in "${wanted[@]}"; do
    [[ $(cat "$corpus/${t%%:*}.rc" 2>/dev/null) == 0 ]] || exit 1
done
