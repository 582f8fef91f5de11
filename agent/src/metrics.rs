//! The agent's Prometheus metrics: counters kept as things happen, gauges
//! read at scrape time from the policy engine's last samples (so a scrape
//! never touches Docker or the kernel).

use roomy_metrics::{CounterVec, Exposition, HistogramVec, Kind, DURATION_BUCKETS};
use roomy_proto::v1::PoolStatus;
use tonic::Code;

use crate::error::AgentError;

/// Where a mutation came from, as the `source` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A gRPC call (roomyctl, the controller).
    Api,
    /// A policy on this agent.
    Policy,
}

impl Source {
    fn word(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Policy => "policy",
        }
    }
}

/// Counters and histograms.
pub struct AgentMetrics {
    resizes: CounterVec,
    pool_grows: CounterVec,
    resize_seconds: HistogramVec,
    /// Policy actions by policy and action word.
    pub actions: CounterVec,
    /// Policy skips by policy and reason.
    pub skips: CounterVec,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let resizes = CounterVec::new(
            "roomy_resizes_total",
            "Container resizes by result (grown, unchanged, refused, failed) and source (api, policy).",
            &["result", "source"],
        );
        let pool_grows = CounterVec::new(
            "roomy_pool_grows_total",
            "Thin pool grows by result and source.",
            &["result", "source"],
        );
        // Zero series exist from the start, so rate() and alerts see them.
        for source in ["api", "policy"] {
            for result in ["grown", "unchanged", "refused", "failed"] {
                resizes.init(&[result, source]);
                pool_grows.init(&[result, source]);
            }
        }
        AgentMetrics {
            resizes,
            pool_grows,
            resize_seconds: HistogramVec::new(
                "roomy_resize_duration_seconds",
                "Time to grow a container (device, filesystem, Docker's metadata).",
                &["source"],
                DURATION_BUCKETS,
            ),
            actions: CounterVec::new(
                "roomy_policy_actions_total",
                "Policy actions by policy and action (grown, would_grow, failed).",
                &["policy", "action"],
            ),
            skips: CounterVec::new(
                "roomy_policy_skips_total",
                "Times a policy fired but did not act, by policy and reason.",
                &["policy", "reason"],
            ),
        }
    }
}

/// The result word of a mutation.
pub fn result_word<T>(
    result: &Result<T, AgentError>,
    changed: impl Fn(&T) -> bool,
) -> &'static str {
    match result {
        Ok(v) if changed(v) => "grown",
        Ok(_) => "unchanged",
        Err(e) => match e.code() {
            Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss => "failed",
            _ => "refused",
        },
    }
}

impl AgentMetrics {
    /// Count a container resize and, when it grew, its duration.
    pub fn resize(&self, source: Source, result: &'static str, seconds: f64) {
        self.resizes.inc(&[result, source.word()]);
        if result == "grown" {
            self.resize_seconds.observe(&[source.word()], seconds);
        }
    }

    /// Count a pool grow.
    pub fn pool_grow(&self, source: Source, result: &'static str) {
        self.pool_grows.inc(&[result, source.word()]);
    }

    /// Write the counters.
    pub fn render(&self, out: &mut Exposition) {
        self.resizes.render(out);
        self.pool_grows.render(out);
        self.resize_seconds.render(out);
        self.actions.render(out);
        self.skips.render(out);
    }
}

/// One container's gauges.
pub struct ContainerGauges<'a> {
    /// Name and id: the labels.
    pub name: &'a str,
    /// Full id.
    pub id: &'a str,
    /// Device size.
    pub size: u64,
    /// statvfs.
    pub fs_size: u64,
    /// Used bytes.
    pub fs_used: u64,
    /// Available bytes.
    pub fs_avail: u64,
    /// Inodes.
    pub inodes: u64,
    /// Inodes used.
    pub inodes_used: u64,
    /// Bytes per second.
    pub fill_rate: f64,
    /// The policy in force and its cap.
    pub cap: Option<(&'a str, u64)>,
}

/// Write per-container gauges, one family at a time as the format wants.
pub fn render_containers(out: &mut Exposition, rows: &[ContainerGauges<'_>]) {
    type Get = fn(&ContainerGauges<'_>) -> f64;
    let families: [(&str, &str, Get); 7] = [
        (
            "roomy_container_size_bytes",
            "Size of the container's thin device.",
            |r| r.size as f64,
        ),
        (
            "roomy_container_fs_size_bytes",
            "Size of its filesystem (statvfs).",
            |r| r.fs_size as f64,
        ),
        (
            "roomy_container_fs_used_bytes",
            "Bytes used in its filesystem.",
            |r| r.fs_used as f64,
        ),
        (
            "roomy_container_fs_avail_bytes",
            "Bytes available to its writers.",
            |r| r.fs_avail as f64,
        ),
        (
            "roomy_container_fs_inodes",
            "Inodes of its filesystem.",
            |r| r.inodes as f64,
        ),
        ("roomy_container_fs_inodes_used", "Inodes in use.", |r| {
            r.inodes_used as f64
        }),
        (
            "roomy_container_fill_rate_bytes_per_second",
            "Fill rate measured by the policy sampler (negative while freeing).",
            |r| r.fill_rate,
        ),
    ];
    for (name, help, get) in families {
        out.family(name, Kind::Gauge, help);
        for r in rows {
            out.sample(name, &[("container", r.name), ("id", r.id)], get(r));
        }
    }
    out.family(
        "roomy_container_max_size_bytes",
        Kind::Gauge,
        "Cap of the policy in force (or the roomy.max-size label).",
    );
    for r in rows {
        if let Some((policy, cap)) = r.cap {
            out.sample(
                "roomy_container_max_size_bytes",
                &[("container", r.name), ("id", r.id), ("policy", policy)],
                cap as f64,
            );
        }
    }
}

/// Write the pool's gauges.
pub fn render_pool(out: &mut Exposition, pool: &PoolStatus) {
    let l = [("pool", pool.name.as_str())];
    let gauges = [
        (
            "roomy_pool_data_size_bytes",
            "Thin pool data size.",
            pool.data_total_bytes,
        ),
        (
            "roomy_pool_data_used_bytes",
            "Thin pool data in use.",
            pool.data_used_bytes,
        ),
        (
            "roomy_pool_metadata_size_bytes",
            "Thin pool metadata size.",
            pool.metadata_total_bytes,
        ),
        (
            "roomy_pool_metadata_used_bytes",
            "Thin pool metadata in use.",
            pool.metadata_used_bytes,
        ),
        (
            "roomy_pool_backing_free_bytes",
            "Free space where the pool can grow (loop files' filesystem or the VG).",
            pool.backing_free_bytes,
        ),
    ];
    for (name, help, v) in gauges {
        out.family(name, Kind::Gauge, help);
        out.sample(name, &l, v as f64);
    }
    out.family(
        "roomy_pool_healthy",
        Kind::Gauge,
        "1 when the pool is rw; 0 when out of data space, read-only or failed.",
    );
    out.sample(
        "roomy_pool_healthy",
        &l,
        if pool.mode == "rw" { 1.0 } else { 0.0 },
    );
}
