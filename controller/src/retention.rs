//! Pruning of old events and audit entries (`[retention]`), by the leader
//! (one controller on SQLite), a minute after it starts and hourly after.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::leader::Leadership;
use crate::metrics::ControllerMetrics;
use crate::store::Store;

const DAY_MS: i64 = 86_400_000;

/// `[retention]`: how many days to keep; 0 keeps everything.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Agents' events (they also live in the agents' metrics and logs).
    #[serde(default = "default_event_days")]
    pub events_days: u32,
    /// Audit entries: kept unless set, since an audit log's retention is
    /// its owner's decision.
    #[serde(default)]
    pub audit_days: u32,
}

fn default_event_days() -> u32 {
    30
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events_days: default_event_days(),
            audit_days: 0,
        }
    }
}

impl Retention {
    /// The times before which events and audit entries go, at `now_ms`.
    pub fn cutoffs(&self, now_ms: i64) -> (Option<i64>, Option<i64>) {
        let before = |days: u32| (days > 0).then(|| now_ms - i64::from(days) * DAY_MS);
        (before(self.events_days), before(self.audit_days))
    }
}

/// Prune while leading, for good.
pub fn spawn(
    store: Arc<dyn Store>,
    leadership: Leadership,
    retention: Retention,
    metrics: Arc<ControllerMetrics>,
) {
    if retention.cutoffs(0) == (None, None) {
        return;
    }
    tokio::spawn(async move {
        let mut next = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            tokio::time::sleep_until(next).await;
            next += Duration::from_secs(3600);
            if !leadership.is_leader() {
                continue;
            }
            let now_ms = crate::clock::now_ms();
            let (events, audit) = retention.cutoffs(now_ms);
            let store = store.clone();
            // The store's calls block: off the async workers.
            match tokio::task::spawn_blocking(move || store.prune(events, audit)).await {
                Ok(Ok(pruned)) => {
                    metrics.pruned(pruned, now_ms);
                    tracing::info!(
                        events = pruned.events,
                        audit = pruned.audit,
                        "pruned the store ([retention])"
                    );
                }
                Ok(Err(e)) => tracing::warn!("pruning the store: {e}; again in an hour"),
                Err(e) => tracing::warn!("pruning the store: {e}"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_cutoffs_and_zero_keeps_all() {
        let now = 100 * DAY_MS;
        assert_eq!(
            Retention::default().cutoffs(now),
            (Some(70 * DAY_MS), None),
            "events 30 days, audit kept"
        );
        let r = Retention {
            events_days: 0,
            audit_days: 365,
        };
        assert_eq!(r.cutoffs(now), (None, Some(now - 365 * DAY_MS)));
    }
}
