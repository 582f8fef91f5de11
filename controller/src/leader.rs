//! Which controller does the work that must happen once: the agents' Sync
//! streams (policies down, events up, their acknowledgements and the
//! webhooks that follow). Every controller serves reads and routes
//! resizes; only the leader holds the streams (an agent keeps one stream,
//! a new one ends the old, so two leaders would take it from each other).
//!
//! One controller on SQLite always leads. On etcd, controllers campaign
//! through etcd's election API with a lease (`EtcdStore::campaign`): the
//! leader is the holder of the oldest key under the election's name, and
//! steps down on its own once it cannot renew its lease in time, before
//! etcd lets the lease expire and elects another.

use tokio::sync::watch;

/// Whether this controller leads now, and a way to wait for changes.
#[derive(Clone)]
pub struct Leadership {
    state: watch::Receiver<bool>,
}

impl Leadership {
    /// The only controller: it always leads.
    pub fn always() -> Self {
        // The sender is dropped: the value never changes.
        Leadership {
            state: watch::channel(true).1,
        }
    }

    /// Follows `state`, which the campaign updates.
    pub fn from_watch(state: watch::Receiver<bool>) -> Self {
        Leadership { state }
    }

    /// True while this controller leads.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves at the next change (never, for [`Leadership::always`]).
    pub async fn changed(&mut self) {
        if self.state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
