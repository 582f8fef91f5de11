//! The controller's Prometheus metrics: hosts (from the registry at scrape
//! time), events received, audit entries, webhook deliveries.

use std::sync::Arc;

use roomy_metrics::{CounterVec, Exposition, Kind};
use roomy_proto::v1::HostState;

use crate::distribute::Distributor;
use crate::inventory::Inventory;
use crate::registry::Registry;
use crate::webhook::Webhooks;

/// Counters kept as things happen.
pub struct ControllerMetrics {
    events: CounterVec,
    audit: CounterVec,
    pruned: CounterVec,
    last_prune_s: std::sync::atomic::AtomicI64,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            events: CounterVec::new(
                "roomy_events_total",
                "Policy events received from agents, by host, kind and reason.",
                &["host", "kind", "reason"],
            ),
            audit: CounterVec::new(
                "roomy_audit_entries_total",
                "Audit log entries by action and result.",
                &["action", "result"],
            ),
            pruned: CounterVec::new(
                "roomy_store_pruned_total",
                "Events and audit entries deleted by [retention], by kind.",
                &["kind"],
            ),
            last_prune_s: std::sync::atomic::AtomicI64::new(0),
        }
    }
}

impl ControllerMetrics {
    /// Count an event.
    pub fn event(&self, host: &str, kind: &str, reason: &str) {
        self.events.inc(&[host, kind, reason]);
    }

    /// Count an audit entry.
    pub fn audit(&self, action: &str, result: &str) {
        self.audit.inc(&[action, result]);
    }

    /// Count what a prune deleted, at `now_ms`.
    pub fn pruned(&self, pruned: crate::store::Pruned, now_ms: i64) {
        self.pruned.add(&["events"], pruned.events);
        self.pruned.add(&["audit"], pruned.audit);
        self.last_prune_s
            .store(now_ms / 1000, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The whole /metrics page.
pub fn render(
    metrics: &ControllerMetrics,
    registry: &Registry,
    distributor: &Distributor,
    inventory: &Inventory,
    webhooks: &Webhooks,
) -> String {
    let mut out = Exposition::new();
    let hosts = registry.list();
    out.family(
        "roomy_host_up",
        Kind::Gauge,
        "1 when the host's agent answered last time, 0 when unreachable.",
    );
    for h in &hosts {
        let up = h.state == HostState::Up as i32;
        out.sample(
            "roomy_host_up",
            &[("host", &h.name)],
            f64::from(u8::from(up)),
        );
    }
    out.family(
        "roomy_host_last_seen_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the agent's last answer.",
    );
    for h in hosts.iter().filter(|h| h.last_seen > 0) {
        out.sample(
            "roomy_host_last_seen_timestamp_seconds",
            &[("host", &h.name)],
            h.last_seen as f64,
        );
    }
    out.family(
        "roomy_host_sync_connected",
        Kind::Gauge,
        "1 while the policy and event stream to the host's agent is open.",
    );
    for h in &hosts {
        let on = distributor.connected(&h.name);
        out.sample(
            "roomy_host_sync_connected",
            &[("host", &h.name)],
            f64::from(u8::from(on)),
        );
    }
    out.family(
        "roomy_host_inventory_streaming",
        Kind::Gauge,
        "1 while the host's container list is kept current by its agent's stream (ls answers from it).",
    );
    for h in &hosts {
        out.sample(
            "roomy_host_inventory_streaming",
            &[("host", &h.name)],
            f64::from(u8::from(inventory.streaming(&h.name))),
        );
    }
    out.family(
        "roomy_host_inventory_messages_total",
        Kind::Counter,
        "Messages the host's inventory stream brought: whole lists, and lists of only the rows that changed.",
    );
    for h in &hosts {
        let [whole, changes] = inventory.received(&h.name);
        for (kind, n) in [("whole", whole), ("changes", changes)] {
            out.sample(
                "roomy_host_inventory_messages_total",
                &[("host", &h.name), ("kind", kind)],
                n as f64,
            );
        }
    }
    out.family(
        "roomy_controller_leader",
        Kind::Gauge,
        "1 while this controller leads: it holds the agents' sync links (always 1 on SQLite).",
    );
    out.sample(
        "roomy_controller_leader",
        &[],
        f64::from(u8::from(distributor.leading())),
    );
    out.family(
        "roomy_policies",
        Kind::Gauge,
        "Policies the controller holds.",
    );
    out.sample("roomy_policies", &[], distributor.policies().len() as f64);
    metrics.events.render(&mut out);
    metrics.audit.render(&mut out);
    metrics.pruned.render(&mut out);
    out.family(
        "roomy_store_last_prune_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the last prune by [retention] (0: none yet).",
    );
    out.sample(
        "roomy_store_last_prune_timestamp_seconds",
        &[],
        metrics
            .last_prune_s
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    out.family(
        "roomy_webhook_deliveries_total",
        Kind::Counter,
        "Webhook deliveries by webhook and result (ok, retried, dropped).",
    );
    for (name, result, n) in webhooks.counts() {
        out.sample(
            "roomy_webhook_deliveries_total",
            &[("webhook", &name), ("result", result)],
            n as f64,
        );
    }
    out.finish()
}

/// The renderer the HTTP endpoint calls.
pub fn renderer(
    metrics: Arc<ControllerMetrics>,
    registry: Arc<Registry>,
    distributor: Arc<Distributor>,
    inventory: Arc<Inventory>,
    webhooks: Webhooks,
) -> Arc<dyn Fn() -> String + Send + Sync> {
    Arc::new(move || render(&metrics, &registry, &distributor, &inventory, &webhooks))
}
