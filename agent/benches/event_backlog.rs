//! The agent's event buffer under a controller outage and its recovery
//! (issue: fleet scale, event ingest): append a backlog, then drain it the
//! way the Sync stream does (batches out, an ack per 512 stored), while a
//! stand-in for the policy sampler keeps appending. Prints, per backlog
//! size, the drain's time and cost per event (flat when the drain is
//! linear) and how long the sampler's appends waited meanwhile.
//!
//!   cargo bench -p roomy-agent --bench event_backlog [-- [--ack-every K] SIZES...]
//!   cargo bench -p roomy-agent --bench event_backlog -- --seed DIR N
//!       writes a backlog of N events into the state directory DIR, for
//!       the end-to-end run in tests/fleet/bench.sh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomy_agent::events::EventLog;
use roomy_proto::v1::{Event, EventKind};

/// What the controller acknowledges at a time by default (its
/// INGEST_BATCH); `--ack-every 1` is an ack per event, as before it
/// batched.
const ACK_EVERY: usize = 512;

fn event(i: u64) -> Event {
    Event {
        time_ms: 1_700_000_000_000 + i as i64,
        policy: "grow80".into(),
        target: format!("web{}", i % 200),
        kind: EventKind::Grown as i32,
        reason: "used_percent".into(),
        from_bytes: 1 << 30,
        to_bytes: 3 << 29,
        message: format!("used 81% of 1 GiB (sample {i}): grew to 1.5 GiB"),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(n: u64, ack_every: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EventLog::open(dir.path()).expect("open"));
    let t0 = Instant::now();
    for i in 0..n {
        log.append(event(i)).expect("append");
    }
    let fill = t0.elapsed();

    // The sampler: one append every 10 ms while the drain runs.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            let mut waits = Vec::new();
            let mut i = n;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                log.append(event(i)).expect("append");
                waits.push(t.elapsed());
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            waits
        })
    };

    let t1 = Instant::now();
    let mut sent = 0;
    let mut drained = 0u64;
    loop {
        let batch = log.after(sent, 1024);
        if batch.is_empty() {
            break;
        }
        for chunk in batch.chunks(ack_every) {
            sent = chunk.last().expect("non-empty chunk").seq;
            drained += chunk.len() as u64;
            log.ack(sent).expect("ack");
        }
        if sent >= n {
            break;
        }
    }
    let drain = t1.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut waits = sampler.join().expect("sampler");
    waits.sort();
    println!(
        "{n:>8}  {:>9.0}  {:>9.1}  {:>9.0}  {:>8.2}  {:>8.2}  {:>8.2}  {:>5}",
        ms(fill),
        fill.as_secs_f64() * 1e6 / n as f64,
        ms(drain),
        drain.as_secs_f64() * 1e6 / drained as f64,
        ms(percentile(&waits, 0.99)),
        ms(*waits.last().unwrap_or(&Duration::ZERO)),
        log.segments(),
    );
}

fn main() {
    // cargo passes --bench to a harness-less bench; skip it.
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut ack_every = ACK_EVERY;
    if let Some(i) = args.iter().position(|a| a == "--ack-every") {
        ack_every = args
            .get(i + 1)
            .and_then(|k| k.parse().ok())
            .filter(|&k| k > 0)
            .expect("--ack-every takes a positive count");
        args.drain(i..i + 2);
    }
    if args.first().map(String::as_str) == Some("--seed") {
        let (Some(dir), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
        else {
            eprintln!("usage: event_backlog --seed DIR N");
            std::process::exit(2);
        };
        let log = EventLog::open(std::path::Path::new(dir)).expect("open the state directory");
        for i in 0..n {
            log.append(event(i)).expect("append");
        }
        return;
    }
    let sizes: Vec<u64> = if args.is_empty() {
        vec![10_000, 30_000, 100_000]
    } else {
        args.iter()
            .map(|a| a.parse().expect("sizes are event counts"))
            .collect()
    };
    println!("event buffer: a backlog appended (each fsync'd), then drained with an ack per {ack_every}; a sampler appends every 10 ms meanwhile");
    println!(
        "{:>8}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}  {:>8}  {:>5}",
        "backlog", "fill_ms", "us/append", "drain_ms", "us/event", "wait_p99", "wait_max", "segs"
    );
    for n in sizes {
        run(n, ack_every);
    }
}
