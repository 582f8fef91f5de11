#!/bin/bash
# A sim roomy-agent against gRPC C-core clients (grpcio): over its unix socket
# with the :authority grpcio picks itself (the percent-encoded socket path)
# for unix:///abs, unix:/abs and, as a control, grpc.default_authority=localhost;
# and, when roomyctl is there, over TCP with mutual TLS, and a
# roomy-controller in front of that agent over mutual TLS; then Node's
# @grpc/grpc-js (grpc-js-test.js) on the unix socket, where node is.
# Prints PASS/FAIL lines and "N passed, N failed"; exits 1 on any failure.
#
# Env: ROOMY_BIN (dir with roomy-agent, roomyctl; default target/vm-bin or target/release of
# this checkout, else /var/cache/roomy-build/target/release),
# GRPCIO_VENV (default /var/cache/roomy-vm/grpcio-venv; made if missing).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PY_SCRIPT=${GRPCIO_TEST_PY:-$here/grpcio-test.py}
BIN=${ROOMY_BIN:-}
if [ -z "$BIN" ]; then
    for d in "$here/../../target/vm-bin" "$here/../../target/release" /var/cache/roomy-build/target/release; do
        [ -x "$d/roomy-agent" ] && { BIN=$(cd "$d" && pwd); break; }
    done
fi
[ -x "${BIN:-}/roomy-agent" ] || { echo "grpcio-test: no roomy-agent (set ROOMY_BIN)" >&2; exit 2; }
# Pinned, so a new release on PyPI cannot change what this test proves
# overnight; the venv's name carries the versions, so a change of pins
# makes a new one.
PINS="grpcio==1.85.3 grpcio-reflection==1.85.1 grpcio-health-checking==1.85.1 protobuf==7.36.2"
VENV=${GRPCIO_VENV:-/var/cache/roomy-vm/grpcio-$(md5sum <<<"$PINS" | cut -c1-8)}
if ! "$VENV/bin/python" -c 'import grpc, grpc_reflection, grpc_health' 2>/dev/null; then
    echo "grpcio-test: making $VENV ($PINS, from PyPI)"
    rm -rf "$VENV"
    # shellcheck disable=SC2086 # a list of requirements
    python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install -q --only-binary :all: $PINS ||
        { rm -rf "$VENV"; echo "grpcio-test: could not make $VENV (python3-venv and PyPI needed: tests/vm/install-deps.sh)" >&2; exit 2; }
fi
"$VENV/bin/python" -c 'import grpc, google.protobuf as p; print("grpcio", grpc.__version__, "protobuf", p.__version__)'

WORK=$(mktemp -d /tmp/grpcio-test.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # WHAT TEST...  (30 s: a sim agent starts in well under one)
    local what=$1 i; shift
    for i in $(seq 300); do "$@" && return 0; sleep 0.1; done
    echo "grpcio-test: $what did not come up; its log:" >&2; cat "$WORK"/*.log >&2; exit 2
}

SOCK=$WORK/agent.sock
RUST_LOG=info,h2=debug "$BIN/roomy-agent" --backend sim --socket "$SOCK" \
    --state-dir "$WORK/state" >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
wait_for "roomy-agent on $SOCK" test -S "$SOCK"

PASS=0 FAIL=0
tally() { # LABEL COMMAND...: run a client's checks (120 s at most), count its PASS/FAIL lines
    local label=$1 out
    shift
    out=$(timeout 120 "$@" 2>&1)
    [ $? -eq 124 ] && out+=$'\nFAIL [timeout] the checks took over 120 s'
    printf '%s\n' "$out" | grep -v '^grpcio: .* passed'
    PASS=$((PASS + $(grep -c '^PASS' <<<"$out")))
    FAIL=$((FAIL + $(grep -c '^FAIL' <<<"$out")))
    grep -q '^\(PASS\|FAIL\)' <<<"$out" || { echo "FAIL [$label] the script ran no check"; FAIL=$((FAIL + 1)); }
}
run() { tally "$*" "$VENV/bin/python" "$PY_SCRIPT" "$@"; } # PY-ARGS...
run --target "unix://$SOCK" --label "unix://$SOCK"
run --target "unix:$SOCK" --label "unix:$SOCK"
run --target "unix://$SOCK" --authority localhost --label "unix://$SOCK authority=localhost"

if [ -x "$BIN/roomyctl" ]; then
    PORT=$((17000 + RANDOM % 2000))
    "$BIN/roomyctl" certs init --out "$WORK/pki" --host host1 --user vic:admin >"$WORK/certs.log" 2>&1 ||
        { echo "FAIL [tls] roomyctl certs init: $(tail -3 "$WORK/certs.log")"; FAIL=$((FAIL + 1)); }
    if [ -f "$WORK/pki/agents/host1.pem" ]; then
        RUST_LOG=info,h2=debug "$BIN/roomy-agent" --backend sim --no-socket --listen "127.0.0.1:$PORT" \
            --tls-cert "$WORK/pki/agents/host1.pem" --tls-key "$WORK/pki/agents/host1.key" \
            --tls-ca "$WORK/pki/ca.pem" --state-dir "$WORK/state-tls" >"$WORK/agent-tls.log" 2>&1 &
        PIDS+=($!)
        wait_for "roomy-agent on 127.0.0.1:$PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null
        run --target "127.0.0.1:$PORT" --server-name host1 --tls-ca "$WORK/pki/ca.pem" \
            --tls-cert "$WORK/pki/controller.pem" --tls-key "$WORK/pki/controller.key" \
            --label "tcp+mTLS 127.0.0.1:$PORT"
        # The controller over mutual TLS, routing to that agent as host1.
        CPORT=$((PORT + 1))
        sed -e "s/^listen = .*/listen = \"127.0.0.1:$CPORT\"/" "$WORK/pki/controller.toml" >"$WORK/controller.toml"
        printf '\n[[hosts]]\nname = "host1"\naddress = "127.0.0.1:%s"\n' "$PORT" >>"$WORK/controller.toml"
        RUST_LOG=info,h2=debug "$BIN/roomy-controller" --config "$WORK/controller.toml" >"$WORK/controller.log" 2>&1 &
        PIDS+=($!)
        wait_for "roomy-controller on 127.0.0.1:$CPORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$CPORT" 2>/dev/null
        run --target "127.0.0.1:$CPORT" --server-name roomy-controller --controller-host host1 \
            --tls-ca "$WORK/pki/ca.pem" --tls-cert "$WORK/pki/users/vic.pem" --tls-key "$WORK/pki/users/vic.key" \
            --label "controller tcp+mTLS 127.0.0.1:$CPORT"
    fi
fi

# Node's @grpc/grpc-js, the other stack gRPC ships that is not C-core or
# Go: where node and npm are installed (they are on CI's machines), pinned,
# into a cached directory of its own.
GRPC_JS=/var/cache/roomy-vm/grpc-js-1.14.7
if command -v node >/dev/null && command -v npm >/dev/null; then
    if [ ! -d "$GRPC_JS/node_modules/@grpc/grpc-js" ]; then
        echo "grpcio-test: installing @grpc/grpc-js 1.14.7 and @grpc/proto-loader 0.8.1 into $GRPC_JS (npm)"
        npm install --silent --no-audit --no-fund --prefix "$GRPC_JS" @grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1 >/dev/null ||
            { echo "FAIL [grpc-js] npm install"; FAIL=$((FAIL + 1)); }
    fi
    for target in "unix://$SOCK" "unix:$SOCK"; do
        tally "grpc-js $target" env NODE_PATH="$GRPC_JS/node_modules" \
            node "$here/grpc-js-test.js" "$target" "$here/../../proto" "grpc-js $target"
    done
else
    echo "grpcio-test: node or npm missing: the @grpc/grpc-js checks did NOT run"
fi

if grep -q 'malformed headers' "$WORK"/*.log; then
    echo "grpcio-test: h2 refused headers (RUST_LOG=h2=debug):"
    grep -m3 'malformed headers' "$WORK"/*.log | sed 's/^/    /'
fi
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
