//! What every engine must do, as tests run against each: SQLite always,
//! etcd against a member this module starts (the `etcd` binary of Debian's
//! `etcd-server`, which the test command installs).

use std::time::{Duration, Instant};

use roomy_proto::v1::{Event, Policy};

use super::etcd_member::{free_port, EtcdMember};
use super::{AuditRecord, EtcdOptions, EtcdStore, HostRecord, SqliteStore, Store, WebhookCursor};

/// Opens the engine under test on the same state each time.
type Open<'a> = &'a dyn Fn() -> Box<dyn Store>;

fn hosts_and_audit_survive_reopening(open: Open) {
    {
        let store = open();
        let h = HostRecord {
            name: "host1".into(),
            address: "10.0.0.2:7444".into(),
            source: "cli".into(),
            server_name: "host1".into(),
        };
        store.put_host(&h).unwrap();
        store
            .put_host(&HostRecord {
                address: "10.0.0.3:7444".into(),
                ..h
            })
            .unwrap();
        store
            .put_host(&HostRecord {
                name: "host2".into(),
                address: "x:1".into(),
                source: "config".into(),
                server_name: "h2".into(),
            })
            .unwrap();
        assert!(store.remove_host("host2").unwrap());
        assert!(!store.remove_host("host2").unwrap());
        for i in 0..3 {
            store
                .append_audit(&AuditRecord {
                    time_ms: i,
                    principal: "alice".into(),
                    action: "resize".into(),
                    target: "host1/node".into(),
                    from_bytes: 2 << 30,
                    to_bytes: 4 << 30,
                    result: "ok".into(),
                    message: format!("m{i}"),
                })
                .unwrap();
        }
    }
    let store = open();
    let hosts = store.hosts().unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].address, "10.0.0.3:7444");
    let audit = store.audit(2).unwrap();
    assert_eq!(
        audit.iter().map(|a| a.message.as_str()).collect::<Vec<_>>(),
        ["m2", "m1"]
    );
    assert_eq!(audit[0].to_bytes, 4 << 30);
}

fn events_are_stored_once_with_their_audit_entry(open: Open) {
    let store = open();
    let event = |host: &str, seq| Event {
        host: host.into(),
        seq,
        message: format!("{host}-{seq}"),
        ..Default::default()
    };
    let audit = AuditRecord {
        principal: "policy:grow80@host1".into(),
        ..Default::default()
    };
    assert!(store
        .record_event(&event("host1", 1), Some(&audit))
        .unwrap());
    // The agent resends before it saw the ack: not stored, not audited twice.
    assert!(!store
        .record_event(&event("host1", 1), Some(&audit))
        .unwrap());
    assert!(store.record_event(&event("host2", 1), None).unwrap());
    assert!(store.record_event(&event("host1", 2), None).unwrap());
    // host1's events must not show under host10's prefix, nor the reverse.
    assert!(store.record_event(&event("host10", 7), None).unwrap());
    assert_eq!(store.audit(10).unwrap().len(), 1);
    let all: Vec<_> = store
        .events(10, None)
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(all, ["host1-1", "host2-1", "host1-2", "host10-7"]);
    let last: Vec<_> = store
        .events(1, Some("host1"))
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(last, ["host1-2"]);
    assert_eq!(store.events(10, Some("host1")).unwrap().len(), 2);
}

fn a_batch_is_stored_in_one_go_and_resends_in_it_are_skipped(open: Open) {
    let store = open();
    let event = |seq| Event {
        host: "host1".into(),
        seq,
        ..Default::default()
    };
    let audit = |target: &str| AuditRecord {
        principal: "policy:grow80@host1".into(),
        target: target.into(),
        ..Default::default()
    };
    store.record_event(&event(2), Some(&audit("a"))).unwrap();
    // 2 again (a resend after a lost ack), then new ones, one twice.
    let added = store
        .record_events(&[
            (event(1), Some(audit("b"))),
            (event(2), Some(audit("a"))),
            (event(3), None),
            (event(4), Some(audit("c"))),
            (event(4), Some(audit("c"))),
        ])
        .unwrap();
    assert_eq!(added, [true, false, true, true, false]);
    let targets: Vec<_> = store
        .audit(10)
        .unwrap()
        .into_iter()
        .map(|a| a.target)
        .collect();
    assert_eq!(targets.len(), 3, "{targets:?}");
    assert_eq!(store.events(10, None).unwrap().len(), 4);
}

fn a_backlog_larger_than_one_transaction_is_stored_in_order(open: Open) {
    let store = open();
    let batch: Vec<_> = (1..=250)
        .map(|seq| {
            let e = Event {
                host: "host1".into(),
                seq,
                ..Default::default()
            };
            (e, Some(AuditRecord::default()))
        })
        .collect();
    assert!(store.record_events(&batch).unwrap().iter().all(|&a| a));
    let seqs: Vec<u64> = store
        .events(1000, Some("host1"))
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=250).collect::<Vec<_>>());
    assert_eq!(store.audit(1000).unwrap().len(), 250);
    assert!(store.record_events(&batch).unwrap().iter().all(|&a| !a));
}

fn events_after_reads_one_host_on_from_a_sequence(open: Open) {
    let store = open();
    for (host, seq) in [
        ("host1", 1),
        ("host1", 2),
        ("host10", 1),
        ("host1", 3),
        ("host1", 12),
    ] {
        let e = Event {
            host: host.into(),
            seq,
            ..Default::default()
        };
        store.record_event(&e, None).unwrap();
    }
    let seqs = |host: &str, after, limit| -> Vec<u64> {
        let events = store.events_after(host, after, limit).unwrap();
        assert!(events.iter().all(|e| e.host == host), "{events:?}");
        events.iter().map(|e| e.seq).collect()
    };
    assert_eq!(seqs("host1", 0, 10), [1, 2, 3, 12]);
    assert_eq!(seqs("host1", 1, 2), [2, 3]);
    // 12 after 3: a number, not the text "12" before "3".
    assert_eq!(seqs("host1", 3, 10), [12]);
    assert_eq!(seqs("host1", 12, 10), Vec::<u64>::new());
    assert_eq!(seqs("host10", 0, 10), [1]);
    assert_eq!(seqs("host", 0, 10), Vec::<u64>::new());
}

fn webhook_cursors_round_trip_and_survive_reopening(open: Open) {
    let mut cursor = WebhookCursor {
        since_ms: 1_700_000_000_000,
        ..Default::default()
    };
    {
        let store = open();
        assert_eq!(store.webhook_cursor("chat").unwrap(), None);
        store.put_webhook_cursor("chat", &cursor).unwrap();
        cursor.hosts.insert("host1".into(), 7);
        cursor.hosts.insert("host10".into(), u64::MAX);
        store.put_webhook_cursor("chat", &cursor).unwrap();
        store
            .put_webhook_cursor("pager", &WebhookCursor::default())
            .unwrap();
    }
    let store = open();
    assert_eq!(store.webhook_cursor("chat").unwrap(), Some(cursor.clone()));
    assert_eq!(
        store.webhook_cursors().unwrap(),
        [
            ("chat".to_string(), cursor),
            ("pager".to_string(), WebhookCursor::default())
        ]
    );
}

fn policies_replace_and_remove_by_name(open: Open) {
    let store = open();
    let p = Policy {
        name: "grow80".into(),
        max_bytes: 1,
        ..Default::default()
    };
    assert!(store.put_policy(&p).unwrap().is_none());
    let old = store
        .put_policy(&Policy {
            max_bytes: 2,
            ..p.clone()
        })
        .unwrap();
    assert_eq!(old.unwrap().max_bytes, 1);
    assert_eq!(store.policies().unwrap()[0].max_bytes, 2);
    assert!(store.remove_policy("grow80").unwrap().is_some());
    assert!(store.remove_policy("grow80").unwrap().is_none());
    assert!(store.policies().unwrap().is_empty());
}

fn prune_deletes_only_what_is_older(open: Open) {
    let store = open();
    for (seq, time_ms) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        let e = Event {
            host: "host1".into(),
            seq,
            time_ms,
            ..Default::default()
        };
        let a = AuditRecord {
            time_ms,
            message: format!("m{seq}"),
            ..Default::default()
        };
        store.record_event(&e, Some(&a)).unwrap();
    }
    let pruned = store.prune(Some(2_000), Some(3_000)).unwrap();
    assert_eq!((pruned.events, pruned.audit), (1, 2));
    let seqs: Vec<u64> = store
        .events(10, None)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [2, 3]);
    let audit: Vec<_> = store
        .audit(10)
        .unwrap()
        .into_iter()
        .map(|a| a.message)
        .collect();
    assert_eq!(audit, ["m3"]);
    // None keeps everything; a second run finds nothing more.
    assert_eq!(store.prune(None, None).unwrap(), super::Pruned::default());
    assert_eq!(
        store.prune(Some(2_000), Some(3_000)).unwrap(),
        super::Pruned::default()
    );
}

/// A case, named for the test output.
type Case = (&'static str, fn(Open));

const CASES: &[Case] = &[
    (
        "hosts_and_audit_survive_reopening",
        hosts_and_audit_survive_reopening,
    ),
    (
        "events_are_stored_once_with_their_audit_entry",
        events_are_stored_once_with_their_audit_entry,
    ),
    (
        "a_batch_is_stored_in_one_go_and_resends_in_it_are_skipped",
        a_batch_is_stored_in_one_go_and_resends_in_it_are_skipped,
    ),
    (
        "a_backlog_larger_than_one_transaction_is_stored_in_order",
        a_backlog_larger_than_one_transaction_is_stored_in_order,
    ),
    (
        "policies_replace_and_remove_by_name",
        policies_replace_and_remove_by_name,
    ),
    (
        "events_after_reads_one_host_on_from_a_sequence",
        events_after_reads_one_host_on_from_a_sequence,
    ),
    (
        "webhook_cursors_round_trip_and_survive_reopening",
        webhook_cursors_round_trip_and_survive_reopening,
    ),
    (
        "prune_deletes_only_what_is_older",
        prune_deletes_only_what_is_older,
    ),
];

#[test]
fn sqlite_passes_every_case() {
    for (name, case) in CASES {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roomy.db");
        eprintln!("sqlite: {name}");
        case(&|| Box::new(SqliteStore::open(&path).unwrap()));
    }
}

#[test]
fn etcd_passes_every_case() {
    let Some(etcd) = EtcdMember::start() else {
        return;
    };
    for (name, case) in CASES {
        // One prefix per case: the cases share the member, not their keys.
        let options = etcd.options(&format!("/roomy-test/{name}/"));
        eprintln!("etcd: {name}");
        case(&|| Box::new(EtcdStore::open(&options).unwrap()));
    }
}

#[test]
fn a_deposed_leaders_writes_are_refused_and_the_follower_takes_over() {
    let Some(etcd) = EtcdMember::start() else {
        return;
    };
    let options = etcd.options("/roomy-test/leader/");
    let (a, b) = (
        EtcdStore::open(&options).unwrap(),
        EtcdStore::open(&options).unwrap(),
    );
    let ttl = Duration::from_secs(3);
    let lead_a = a.campaign("a".into(), ttl);
    assert!(
        wait(Duration::from_secs(10), || lead_a.is_leader()),
        "a never led"
    );
    let lead_b = b.campaign("b".into(), ttl);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!lead_b.is_leader(), "two leaders at once");
    let event = |seq| Event {
        host: "host1".into(),
        seq,
        ..Default::default()
    };
    assert_eq!(a.record_events(&[(event(1), None)]).unwrap(), [true]);

    // What a partition does, at once: a's lease ends on etcd's side (as
    // if it had expired) while a still believes it leads.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.url.as_str()], None)
            .await
            .unwrap();
        let leader = c.leader("/roomy-test/leader/leader").await.unwrap();
        let lease = leader.kv().unwrap().lease();
        c.lease_revoke(lease).await.unwrap();
    });
    let err = a
        .record_events(&[(event(2), None)])
        .expect_err("a deposed leader's write must be refused")
        .to_string();
    assert!(err.contains("no longer leads"), "{err}");
    assert!(
        wait(Duration::from_secs(10), || lead_b.is_leader()),
        "b never took over"
    );
    assert!(
        wait(Duration::from_secs(10), || !lead_a.is_leader()),
        "a never stepped down"
    );
    assert_eq!(b.record_events(&[(event(2), None)]).unwrap(), [true]);
    let seqs: Vec<u64> = b.events(10, None).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2], "the refused write left nothing behind");
    // A late webhook delivery of the deposed leader cannot move the cursor.
    let mut cursor = WebhookCursor::default();
    cursor.hosts.insert("host1".into(), 2);
    b.put_webhook_cursor("chat", &cursor).unwrap();
    let late = WebhookCursor::default();
    let err = a
        .put_webhook_cursor("chat", &late)
        .expect_err("a deposed leader's cursor must be refused")
        .to_string();
    assert!(err.contains("no longer leads"), "{err}");
    assert_eq!(b.webhook_cursor("chat").unwrap(), Some(cursor));
    // Nor prune what the new leader keeps.
    let err = a
        .prune(Some(i64::MAX), Some(i64::MAX))
        .expect_err("a deposed leader's prune must be refused")
        .to_string();
    assert!(err.contains("no longer leads"), "{err}");
    assert_eq!(b.events(10, None).unwrap().len(), 2, "nothing pruned");
}

fn wait(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn a_sqlite_store_copies_into_etcd_whole_and_in_order() {
    let Some(etcd) = EtcdMember::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("roomy.db")).unwrap();
    sqlite
        .put_host(&HostRecord {
            name: "host1".into(),
            address: "10.0.0.2:7444".into(),
            source: "cli".into(),
            server_name: "host1".into(),
        })
        .unwrap();
    sqlite
        .put_policy(&Policy {
            name: "grow80".into(),
            ..Default::default()
        })
        .unwrap();
    for i in 0..3 {
        sqlite
            .append_audit(&AuditRecord {
                time_ms: 1000,
                message: format!("m{i}"),
                ..Default::default()
            })
            .unwrap();
    }
    for (host, seq) in [("host1", 1), ("host2", 1), ("host1", 2)] {
        let e = Event {
            host: host.into(),
            seq,
            message: format!("{host}-{seq}"),
            ..Default::default()
        };
        sqlite.record_event(&e, None).unwrap();
    }
    let mut cursor = WebhookCursor::default();
    cursor.hosts.insert("host1".into(), 1);
    sqlite.put_webhook_cursor("chat", &cursor).unwrap();
    let target = EtcdStore::open(&etcd.options("/roomy-test/copy/")).unwrap();
    let copied = super::copy(&sqlite, &target).unwrap();
    assert_eq!(
        copied,
        super::Copied {
            hosts: 1,
            policies: 1,
            audit: 3,
            events: 3
        }
    );
    assert_eq!(target.hosts().unwrap(), sqlite.hosts().unwrap());
    assert_eq!(target.policies().unwrap(), sqlite.policies().unwrap());
    // Same millisecond, still in order.
    assert_eq!(target.audit(10).unwrap(), sqlite.audit(10).unwrap());
    assert_eq!(
        target.events(10, None).unwrap(),
        sqlite.events(10, None).unwrap()
    );
    assert_eq!(target.webhook_cursors().unwrap(), [("chat".into(), cursor)]);
    let again = super::copy(&sqlite, &target).unwrap_err().to_string();
    assert!(again.contains("copy into an empty one"), "{again}");
    assert_eq!(
        target.audit(10).unwrap().len(),
        3,
        "a refused copy wrote nothing"
    );
}

#[test]
fn a_sqlite_store_from_before_event_times_gets_them_from_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roomy.db");
    {
        // The first release's events table, with one event in it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL,
                 seq INTEGER NOT NULL, body BLOB NOT NULL, UNIQUE (host, seq));",
        )
        .unwrap();
        let old = Event {
            host: "host1".into(),
            seq: 1,
            time_ms: 5_000,
            ..Default::default()
        };
        conn.execute(
            "INSERT INTO events (host, seq, body) VALUES ('host1', 1, ?1)",
            [prost::Message::encode_to_vec(&old)],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.prune(Some(5_000), None).unwrap().events,
        0,
        "its time was kept"
    );
    assert_eq!(store.prune(Some(5_001), None).unwrap().events, 1);
    drop(store);
    // Opening again does not redo it.
    SqliteStore::open(&path).unwrap();
}

#[test]
fn events_stored_by_one_controller_reach_anothers_followers() {
    let Some(etcd) = EtcdMember::start() else {
        return;
    };
    let options = etcd.options("/roomy-test/watch/");
    let (leader, follower) = (
        EtcdStore::open(&options).unwrap(),
        EtcdStore::open(&options).unwrap(),
    );
    let (tx, mut rx) = tokio::sync::broadcast::channel(16);
    follower.watch_events(tx);
    std::thread::sleep(Duration::from_millis(500)); // the watch is set up
    let batch: Vec<_> = (1..=3)
        .map(|seq| {
            let e = Event {
                host: "host1".into(),
                seq,
                ..Default::default()
            };
            (e, None)
        })
        .collect();
    leader.record_events(&batch).unwrap();
    leader.prune(Some(1), None).unwrap(); // deletes are not events
    let mut seqs = Vec::new();
    let t0 = Instant::now();
    while seqs.len() < 3 && t0.elapsed() < Duration::from_secs(10) {
        match rx.try_recv() {
            Ok(e) => seqs.push(e.seq),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert_eq!(seqs, [1, 2, 3]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_recv().is_err(),
        "nothing else: a prune sends no event"
    );
}

#[test]
fn a_member_that_is_down_costs_a_retry_not_the_call() {
    let Some(up) = EtcdMember::start() else {
        return;
    };
    // The client's balancer hands requests to every endpoint it was given,
    // reachable or not: with one of two down, half the calls failed before.
    let mut options = up.options("/roomy-test/down/");
    options
        .endpoints
        .push(format!("http://127.0.0.1:{}", free_port()));
    let store = EtcdStore::open(&options).unwrap();
    for i in 0..20 {
        store
            .put_host(&HostRecord {
                name: format!("h{i}"),
                address: "x:1".into(),
                source: "cli".into(),
                server_name: "x".into(),
            })
            .unwrap();
    }
    assert_eq!(store.hosts().unwrap().len(), 20);
}

#[test]
fn an_unreachable_etcd_is_refused_at_open_with_its_address() {
    // A port nothing listens on (bound, then closed).
    let port = free_port();
    let options = EtcdOptions {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        prefix: "/roomy/".into(),
        tls: None,
        timeout: Duration::from_millis(1500),
        lease_ttl: Duration::from_secs(3),
    };
    let t0 = Instant::now();
    let err = EtcdStore::open(&options)
        .err()
        .expect("nothing listens there");
    assert!(
        matches!(err, crate::error::ControllerError::StoreUnavailable(_)),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("endpoint health"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}
