#!/bin/bash
# Fuzz the parsers that take input from people, files, the kernel and the
# network (cargo-fuzz targets in fuzz/), each from an empty corpus.
#
#   scripts/fuzz.sh             what the test command runs: a fixed seed and
#                               a fixed number of inputs per target, so CI
#                               tries what a run here tried (seconds each)
#   scripts/fuzz.sh 120 [T...]  a longer hunt: 120 s per target (or the
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

# NAME:RUNS:MAX_LEN. superblock's inputs reach ext4's 64-bit block count at
# 64 + 0x150; a controller config with a policy and a webhook needs ~400.
table="sizes:200000:256 targets:200000:256 policies:50000:256 superblock:200000:512
mountinfo:200000:256 docker_metadata:100000:256 dm_lines:200000:256 controller_config:50000:512"

corpus=$(mktemp -d /tmp/roomy-fuzz.XXXXXX)
trap 'rm -rf "$corpus"' EXIT
for t in $table; do
    name=${t%%:*}
    [[ $# -eq 0 || " $* " == *" $name "* ]] || continue
    runs=$(cut -d: -f2 <<<"$t")
    if [[ -n $seconds ]]; then
        bound=(-max_total_time="$seconds")
    else
        bound=(-seed=1 -runs="$runs")
    fi
    mkdir -p "$corpus/$name"
    if ! (cd fuzz && cargo +nightly fuzz run -O -a --target-dir "$CARGO_TARGET_DIR/fuzz" "$name" "$corpus/$name" -- \
        "${bound[@]}" -max_len="${t##*:}" >"$corpus/$name.log" 2>&1); then
        tail -40 "$corpus/$name.log" >&2
        echo "fuzz.sh: target $name failed (log above; the input is in fuzz/artifacts/$name/)" >&2
        exit 1
    fi
    echo "fuzz $name: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$corpus/$name.log" || echo "ran ${seconds}s, no crash")"
done
