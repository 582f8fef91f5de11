# Sourced by the fleet benchmarks: one local etcd member without TLS (the
# benches measure Roomy's side; the fleet tier proves etcd over mutual TLS).
# start_etcd_member CLIENT-PORT: data and log under $WORK, peer port
# CLIENT-PORT + 1, a background job of the caller; returns once it answers
# /health (fails after 20 s).
start_etcd_member() {
    local c=$1 p=$(($1 + 1))
    etcd --name b --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$c" \
        --advertise-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" \
        --initial-advertise-peer-urls "http://127.0.0.1:$p" --initial-cluster "b=http://127.0.0.1:$p" \
        >"$WORK/etcd.log" 2>&1 &
    for _ in $(seq 100); do
        curl -s --max-time 1 "http://127.0.0.1:$c/health" | grep -q true && return 0
        sleep 0.2
    done
    echo "etcd did not answer on 127.0.0.1:$c in 20 s:" >&2
    tail -5 "$WORK/etcd.log" >&2
    return 1
}
