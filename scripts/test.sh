#!/bin/bash
# Every test Roomy has, on a fresh Debian 12 machine (as root):
#   1. installs what it needs (apt packages, virtme-ng; skipped when present)
#   2. cargo fmt --check and clippy -D warnings
#   3. host tests (parsing, tables, metadata rewrite, superblocks, ...), and
#      a bounded, seeded cargo-fuzz run of the parsers people feed (fuzz/;
#      in the background at the lowest priority, like 4b, from here to the
#      end, where their logs are printed)
#   4. the fleet tier: roomy-controller and three agents (in-memory backend)
#      as processes in network namespaces, over mutual TLS (tests/fleet);
#      then two controllers on a 3-member etcd cluster: leader election,
#      failover after a SIGKILL, etcd members lost and back
#   4a. gRPC clients outside tonic: Python grpcio (C-core) against an agent
#      on its unix socket and over mutual TLS and against a controller over
#      mutual TLS; Node's @grpc/grpc-js on the unix socket (tests/grpcio)
#   4b. the Debian packages (scripts/package.sh, lintian without errors)
#      installed with dpkg into an overlay over the Debian 13 root below
#      (tests/pkg/install.sh)
#   5. the real-kernel tiers: boot Debian's kernel in QEMU (no KVM) and
#      drive roomy-agent (and the controller) through every scenario of
#      tests/vm/agent.sh and overlay2.sh: dm-thin, XFS, ext4 and dockerd
#      20.10 (devicemapper and overlay2 on XFS project quotas) over this
#      machine's Debian 12; then overlay2 and the containerd image store on
#      dockerd 26 over a Debian 13 root (tests/vm/trixie-root.sh, built once
#      with debootstrap and cached in /var/cache/roomy-vm).
# Ends with "N passed, M failed" for the real-kernel tiers; exits non-zero
# on any failure. ROOMY_SKIP_VM=1 runs steps 1-4b only (says so loudly).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says how long the one before took, so a slow CI run shows where.
step_t0=$SECONDS
step() {
    printf '\n== %s    (previous step: %ss, total %ss)\n' "$*" $((SECONDS - step_t0)) "$SECONDS"
    step_t0=$SECONDS
}

step "install dependencies"
tests/vm/install-deps.sh
command -v cargo >/dev/null || { echo "test.sh: cargo not found: install a Rust toolchain (1.88 or newer)" >&2; exit 1; }

# Build products live in a cache outside the checkout, like the VM tier's
# Debian 13 root: a clean clone (CI's) then rebuilds only what cargo's
# fingerprints say changed, instead of every dependency (5 min here).
# CARGO_TARGET_DIR, when set, wins.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ROOMY_BUILD_CACHE:-/var/cache/roomy-build}/target}
mkdir -p "$CARGO_TARGET_DIR"

# The Debian 13 root for the Docker 26 tier is built (first run) or checked
# (cached) beside the build: it waits on the network and dpkg, not the CPU.
if [[ ${ROOMY_SKIP_VM:-} != 1 ]]; then
    root_log=$(mktemp /tmp/roomy-trixie-root.XXXXXX)
    tests/vm/trixie-root.sh >"$root_log" 2>&1 &
    root_pid=$!
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --features roomy-agent/failpoints -- -D warnings

step "crate boundaries (the agent issues no certificates, roomyctl serves no metrics)"
links() { cargo tree -p "$1" -e normal --prefix none --offline 2>/dev/null | grep -q "^$2 "; }
for bad in "roomy-agent rcgen" "roomy-agent roomy-certs" "roomy-controller rcgen" "roomyctl roomy-metrics" "roomy-proto rustls"; do
    set -- $bad
    if links "$1" "$2"; then echo "test.sh: $1 links $2; keep it out (see docs/ARCHITECTURE.md, crates/)" >&2; exit 1; fi
done
links roomyctl rcgen || { echo "test.sh: the boundary check cannot see rcgen under roomyctl; is cargo tree working?" >&2; exit 1; }

step "build (every target once: the tests and the VM tiers' binaries share it)"
# --all-targets: the binaries get the features the tests' dev-dependencies
# turn on too, so cargo test below builds nothing again.
cargo build --release --workspace --all-targets --features roomy-agent/failpoints
# In the checkout, not the cache: the Docker 20.10 guest runs over this
# machine's root, where virtme-ng hides /var/cache behind a tmpfs.
bin=target/vm-bin
mkdir -p "$bin"
cp "$CARGO_TARGET_DIR"/release/{roomy-agent,roomyctl,roomy-controller} "$bin/"

step "host tests"
# The controller's etcd engine is tested against etcd members the tests
# start (etcd-server, installed above): here a missing etcd fails.
ROOMY_REQUIRE_ETCD=1 cargo test --release --workspace --features roomy-agent/failpoints
# boot.sh's own control flow (boots again only a kernel that died before
# the guest script started), with a stand-in for vng.
tests/vm/boot-test.sh

# The Debian 13 root: the packages below go into it and the Docker 26 tier
# boots it (built in the background since the start; with ROOMY_SKIP_VM=1,
# here and now). Sets $root; not a $(...): wait only works in the shell
# that started it.
debian13_root() {
    if [[ -z ${root_pid:-} ]]; then
        root=$(tests/vm/trixie-root.sh)
    elif wait "$root_pid"; then
        root=$(tail -n 1 "$root_log")
        rm -f "$root_log"
    else
        cat "$root_log" >&2
        echo "test.sh: building the Debian 13 root failed (log above)" >&2
        return 1
    fi
}
debian13_root || exit 1

# Off the critical path, at the lowest priority: fuzzing and the Debian
# packages run beside the fleet, gRPC and VM tiers, which get the CPU first
# (the fleet and gRPC tiers mostly wait on their processes: 5 s of CPU in
# 65 s; a TCG guest leaves part of the second core). In line they were 144
# and 80 s of a 2828 s run. Their logs are printed at the end, and a
# failure fails the run. They start after the host tests: a cargo build
# holds the build directory's lock, and the tests would wait on it.
fuzz() {
    echo "fuzz the parsers of sizes, targets, policy specs and globs, superblocks, mountinfo, Docker metadata, dm lines and the controller's config (scripts/fuzz.sh: 8 s each from a fixed seed, one per core)"
    scripts/fuzz.sh
}
packages() {
    echo "Debian packages: build (no failpoints: what ships), lintian, install into a fresh Debian 13 root"
    local debs
    mapfile -t debs < <(scripts/package.sh target/debian)
    [[ ${#debs[@]} -eq 3 ]] || { echo "test.sh: scripts/package.sh made ${#debs[@]} packages, not 3" >&2; return 1; }
    tests/pkg/install.sh "$root" "${debs[@]}"
}
bg_names=() bg_pids=()
background() { # NAME: runs the function NAME
    ( renice -n 19 -p "$BASHPID" >/dev/null; t0=$SECONDS; "$1"; rc=$?; echo "($1 took $((SECONDS - t0)) s)"; exit $rc ) \
        >"/tmp/roomy-test-$1.log" 2>&1 &
    bg_names+=("$1") bg_pids+=($!)
}
# Waits for them; prints each log (its tail when it passed); 1 if any failed.
background_done() {
    local i bad=0 log
    for i in "${!bg_pids[@]}"; do
        log=/tmp/roomy-test-${bg_names[$i]}.log
        if wait "${bg_pids[$i]}"; then
            printf '\n== %s (in the background): passed\n' "${bg_names[$i]}"
            tail -n 14 "$log"
        else
            printf '\n== %s (in the background): FAILED\n' "${bg_names[$i]}"
            cat "$log"
            bad=1
        fi
    done
    return $bad
}
background fuzz
background packages

step "fleet tier (controller + agents in network namespaces, mutual TLS)"
ROOMY_BIN=$(realpath "$bin") tests/fleet/fleet.sh

step "gRPC clients outside tonic (Python grpcio, Node grpc-js) on the agent's unix socket and over mutual TLS"
ROOMY_BIN=$(realpath "$bin") tests/grpcio/grpcio-test.sh

if [[ ${ROOMY_SKIP_VM:-} == 1 ]]; then
    background_done || exit 1
    echo "test.sh: ROOMY_SKIP_VM=1: the real-kernel tier did NOT run" >&2
    exit 0
fi

# Each scenario group has its own watchdog inside the guest (and says which
# ran out); a boot's own watchdog is their sum plus the boot. Both tiers
# run, whatever the first one's outcome, and the last line adds them up.
# One after the other: booted side by side (tried), the 20.10 tier took
# 2541 s instead of about 2030 and the Docker 26 guest logged a soft lockup
# (its vCPU starved for 23 s), so it saved nothing and failed a check.
rc=0
step "real-kernel tier, Docker 20.10 (Debian 12, kernel 6.1): devicemapper, overlay2 on XFS quotas"
budget=$(tests/vm/agent.sh --budget)
ROOMY_VM_WORK=/tmp/roomy-vm ROOMY_VM_TIMEOUT=$((budget + 300)) ROOMY_BIN=$(realpath "$bin") \
    tests/vm/boot.sh tests/vm/agent.sh || rc=1

step "real-kernel tier, Docker 26 (Debian 13 root, kernel 6.12): overlay2, the containerd image store"
budget=$(ROOMY_VM_TIER=docker26 tests/vm/agent.sh --budget)
# Kernel messages on: one run here saw this guest die without a word (vng
# 255); if it happens again, the log says why.
ROOMY_VM_VERBOSE=1 ROOMY_VM_ROOT=$root ROOMY_VM_TIER=docker26 ROOMY_VM_WORK=/tmp/roomy-vm-26 ROOMY_VM_TIMEOUT=$((budget + 300)) \
    ROOMY_BIN=$(realpath "$bin") tests/vm/boot.sh tests/vm/agent.sh || rc=1

# A tier that died before its first result has no results file: count 0
# (grep -c prints nothing for a missing file, which broke the sum once).
count() { if [[ -r $2 ]]; then grep -c "$1" "$2" || true; else echo 0; fi; }
passed=0 failed=0 rebooted=()
for w in /tmp/roomy-vm /tmp/roomy-vm-26; do
    passed=$((passed + $(count '^PASS' "$w/out/results")))
    failed=$((failed + $(count '^FAIL' "$w/out/results")))
    [[ -e $w/out/boot-retries ]] && rebooted+=("$w")
done
# A tier that died before writing results still fails the run.
[[ $rc -eq 0 ]] || failed=$((failed > 0 ? failed : 1))
bg_rc=0
background_done || bg_rc=1
echo
echo "test.sh: last step $((SECONDS - step_t0))s, total ${SECONDS}s"
echo "real-kernel tiers: $passed passed, $failed failed"
# Say it when a tier needed a second boot (the kernel died before our script).
for w in "${rebooted[@]}"; do
    echo "test.sh: $w booted twice: the first kernel died before the guest script started ($w/out/console.boot-1.log)"
done
[[ $bg_rc -eq 0 ]] || echo "test.sh: a step run in the background failed (its log is above)"
[[ $rc -eq 0 && $failed -eq 0 && $bg_rc -eq 0 ]]
