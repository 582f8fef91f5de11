#!/bin/bash
# Fuzz the parsers that take input from people, files, the kernel and the
# network (cargo-fuzz targets in fuzz/), each from an empty corpus.
#
#   scripts/fuzz.sh             what the test command runs: a fixed number
#                               of runs per target (what about 8 s gives one
#                               core here) from a fixed seed, as many
#                               targets at once as there are cores: the
#                               same inputs however busy the machine is (the
#                               test command runs it at the lowest priority
#                               beside the VMs); a regression check, not a
#                               hunt
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
    seed=1
fi
jobs=${ROOMY_FUZZ_JOBS:-$(nproc)}

# NAME:MAX_LEN:RUNS. superblock's inputs reach ext4's 64-bit block count at
# 64 + 0x150; a controller config with a policy and a webhook needs ~400.
# RUNS: about 8 s of one idle core here for each (policies validates and
# formats every spec: 9,000 runs there; superblock: 1.2 million).
table="sizes:256:400000 targets:256:1000000 policies:256:9000 superblock:512:1200000 mountinfo:256:250000 docker_metadata:256:450000 dm_lines:256:200000 controller_config:512:100000"
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
one() { # NAME:MAX_LEN:RUNS; its exit code lands in $corpus/NAME.rc
    local name max_len runs rc=0
    IFS=: read -r name max_len runs <<<"$1"
    # A hunt runs for its time; the regression check does its runs.
    local bound=(-runs="$runs")
    [[ -n $seconds ]] && bound=(-max_total_time="$seconds")
    mkdir -p "$corpus/$name" "fuzz/artifacts/$name"
    "$bin_dir/$name" "$corpus/$name" -artifact_prefix="fuzz/artifacts/$name/" \
        -seed="$seed" "${bound[@]}" -max_len="$max_len" >"$corpus/$name.log" 2>&1 || rc=$?
    if [[ $rc -eq 0 ]]; then
        echo "fuzz $name: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' "$corpus/$name.log" || echo "no crash")"
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
