//! What the policy engine costs on a busy host (issue: agent footprint),
//! without Docker or a kernel in the way: the engine's two loops over the
//! sim backend's N running containers under one container policy, at the
//! default cadence (statvfs every 250 ms, list every 2 s), for a while.
//! Prints the process's CPU as a share of one core and per container
//! sample, beside the anchor measured in the same run: the sim backend's
//! reads alone, of every container at every pass (what a sampler that
//! reads everything must do), so the ratio is the engine's cost against
//! that. The host writes nothing here, so the engine reads each
//! filesystem once per `Cadence::idle` (it prints how many reads it made).
//!
//!   cargo bench -p roomy-agent --bench sampler [-- N SECONDS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use roomy_agent::backend::StorageBackend;
use roomy_agent::events::EventLog;
use roomy_agent::metrics::AgentMetrics;
use roomy_agent::policy::{Cadence, Engine};
use roomy_agent::sync::PolicyStore;
use roomy_agent::SimBackend;
use roomy_policy::PolicySpec;
use roomy_proto::v1::PolicySet;

/// User plus system CPU time of this process so far.
fn cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let u = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0, "getrusage");
        u
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// What bench-host.sh sets on its 200 containers, as people write it
/// (the rate-aware horizon at its default).
fn policy() -> PolicySet {
    let spec = PolicySpec {
        name: "grow80".into(),
        containers: "c*".into(),
        at: Some("80%".into()),
        grow: Some("50%".into()),
        max: Some("4G".into()),
        ..Default::default()
    };
    PolicySet {
        host: "bench".into(),
        policies: vec![spec.to_policy().expect("a valid policy")],
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(|a| a.parse().expect("usage: sampler [N SECONDS]"))
        .collect();
    let n = args.first().copied().unwrap_or(200) as usize;
    let secs = args.get(1).copied().unwrap_or(20);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = SimBackend::demo("bench", n);
    let cadence = Cadence::default();

    // The anchor: the reads alone, as many as the engine makes in `secs`.
    let rows = rt.block_on(backend.running()).expect("sim rows");
    let passes = (secs as u128 * 1000 / cadence.sample.as_millis()) as u64;
    let t0 = cpu();
    for _ in 0..passes {
        for r in &rows {
            std::hint::black_box(backend.usage(r));
        }
    }
    let reads = cpu() - t0;

    let policies = Arc::new(PolicyStore::open(dir.path()).expect("policy store"));
    policies.replace(policy()).expect("policies");
    let events = Arc::new(EventLog::open(dir.path()).expect("event log"));
    let engine = Engine::new(
        backend.clone(),
        policies,
        events,
        Arc::new(AgentMetrics::default()),
        cadence,
    );
    let _guard = rt.enter();
    engine.spawn();
    // Past the first refresh, which lists everything.
    std::thread::sleep(Duration::from_secs(3));
    let (c0, w0, r0) = (cpu(), Instant::now(), backend.usage_reads());
    std::thread::sleep(Duration::from_secs(secs));
    let (used, wall) = (cpu() - c0, w0.elapsed());
    let engine_reads = backend.usage_reads() - r0;

    let samples = passes * n as u64;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / samples as f64;
    println!(
        "sampler: {n} containers, one policy, {} ms samples, {secs} s",
        cadence.sample.as_millis()
    );
    println!(
        "  engine (both loops):  {:6.2}% of one core, {:7.2} us per container sample",
        100.0 * used.as_secs_f64() / wall.as_secs_f64(),
        per(used)
    );
    println!(
        "  reads alone (anchor): {:6.2}% of one core, {:7.2} us per container sample",
        100.0 * reads.as_secs_f64() / wall.as_secs_f64(),
        per(reads)
    );
    println!(
        "  filesystem reads:     {engine_reads} by the engine, {samples} at every pass ({:.1}x fewer)",
        samples as f64 / engine_reads.max(1) as f64
    );
    println!(
        "  ratio engine/reads:   {:.2}x",
        used.as_secs_f64() / reads.as_secs_f64().max(1e-9)
    );
}
