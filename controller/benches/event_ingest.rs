//! The controller's event store under a backlog (issue: fleet scale, event
//! ingest): the same events written one transaction each (what the Sync
//! link did before it batched: an fsync per event) and in batches of 512
//! (what it does now), into SQLite with WAL and synchronous=FULL. Prints
//! events per second for both and the ratio; then the same batches into
//! etcd (one local member, started here, when Debian's etcd-server is
//! installed), against SQLite's batches.
//!
//!   cargo bench -p roomy-controller --bench event_ingest [-- EVENTS]

use std::time::Instant;

use roomy_controller::store::etcd_member::EtcdMember;
use roomy_controller::store::{AuditRecord, EtcdStore, SqliteStore, Store};
use roomy_proto::v1::{Event, EventKind};

const BATCH: usize = 512;

fn record(host: &str, seq: u64) -> (Event, Option<AuditRecord>) {
    let event = Event {
        seq,
        time_ms: 1_700_000_000_000 + seq as i64,
        host: host.into(),
        policy: "grow80".into(),
        target: format!("web{}", seq % 200),
        kind: EventKind::Grown as i32,
        reason: "used_percent".into(),
        from_bytes: 1 << 30,
        to_bytes: 3 << 29,
        message: format!("used 81% of 1 GiB (sample {seq}): grew to 1.5 GiB"),
        ..Default::default()
    };
    let audit = AuditRecord {
        time_ms: event.time_ms,
        principal: format!("policy:grow80@{host}"),
        action: "resize".into(),
        target: format!("{host}/{}", event.target),
        from_bytes: event.from_bytes,
        to_bytes: event.to_bytes,
        result: "ok".into(),
        message: event.message.clone(),
    };
    (event, Some(audit))
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .map(|a| a.parse().expect("EVENTS is a count"))
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");

    let single = SqliteStore::open(&dir.path().join("single.db")).expect("open");
    let t = Instant::now();
    for seq in 1..=n {
        let (event, audit) = record("host1", seq);
        single.record_event(&event, audit.as_ref()).expect("store");
    }
    let single_rate = n as f64 / t.elapsed().as_secs_f64();

    let batched = SqliteStore::open(&dir.path().join("batched.db")).expect("open");
    let records: Vec<_> = (1..=n).map(|seq| record("host1", seq)).collect();
    let t = Instant::now();
    for chunk in records.chunks(BATCH) {
        batched.record_events(chunk).expect("store");
    }
    let batched_rate = n as f64 / t.elapsed().as_secs_f64();

    println!("controller event store: {n} events, each with its audit entry (SQLite WAL, synchronous=FULL)");
    println!("  one transaction per event (anchor): {single_rate:>9.0} events/s");
    println!("  batches of {BATCH} (Roomy now):     {batched_rate:>9.0} events/s");
    println!("  ratio: {:.1}x", batched_rate / single_rate);

    let Some(member) = EtcdMember::start() else {
        return;
    };
    let etcd = EtcdStore::open(&member.options("/roomy-bench/")).expect("open etcd");
    let t = Instant::now();
    for chunk in records.chunks(BATCH) {
        etcd.record_events(chunk).expect("store");
    }
    let etcd_rate = n as f64 / t.elapsed().as_secs_f64();
    println!("  batches of {BATCH} into etcd (one local member, its fsync per transaction of up to 60 events): {etcd_rate:>9.0} events/s");
    println!("  etcd / SQLite batches: {:.2}x", etcd_rate / batched_rate);
}
