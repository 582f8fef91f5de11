//! Every agent's container list, kept current by its `WatchInventory`
//! stream: `roomyctl ls` answers from here.
//!
//! Why: asking every agent at every `ls` is one call per host; at 10,000
//! hosts that was 1.9 s of this controller's CPU per listing (and as much
//! again on the agents), p99 4.8 s. A host's list changes far less often
//! than people list.
//!
//! 1. Every controller (leader or not: any of them answers `ls`) keeps one
//!    stream per registered host, opened again with backoff when it ends.
//!    The agent sends its list at once, then whenever it changes
//!    (`agent/src/inventory.rs` says when).
//! 2. A list replaces the kept one when its generation (the agent's change
//!    count when it was read) is not lower: an answer asked directly and a
//!    list still on its way in the stream cannot undo one another.
//! 3. A resize or repair routed here returns the agent's count after it;
//!    the host's kept list serves `ls` again only once it is at least that
//!    new. Until then `ls` asks the host, and keeps the answer. So what
//!    someone just did through this controller shows in their next `ls`.
//! 4. When a stream ends, its list is dropped: `ls` asks that host
//!    directly (and shows its error if it does not answer), as it does for
//!    an agent too old to have the stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomy_proto::v1::{ContainerStorage, InspectResponse, WatchInventoryRequest};
use tonic::Status;

use crate::error::ControllerError;
use crate::registry::Registry;
use crate::reopen::PerHost;

#[derive(Debug, Default)]
struct Entry {
    /// The last list, while the stream that keeps it current is open.
    list: Option<Arc<Vec<ContainerStorage>>>,
    /// Its generation.
    generation: u64,
    /// The generation a list needs to show what was routed here.
    needed: u64,
}

impl Entry {
    /// Keep `list`, read at `generation`, unless the one kept is newer.
    fn offer(&mut self, generation: u64, list: Arc<Vec<ContainerStorage>>) {
        if self.list.is_none() || generation >= self.generation {
            self.generation = generation;
            self.list = Some(list);
        }
    }

    /// A direct answer, read at `generation`: offered as a list, unless
    /// it holds the same rows as the kept one (most answers: nothing
    /// moved). The kept list then stays, shared with its stream's, and the
    /// answer is dropped; kept instead, it would be a second copy of the
    /// host's rows after each `ls --fresh` until the host's next change.
    /// Returns the list that holds the answer's rows.
    fn answer(
        &mut self,
        generation: u64,
        rows: Vec<ContainerStorage>,
    ) -> Arc<Vec<ContainerStorage>> {
        if let Some(kept) = self.list.as_ref().filter(|k| ***k == rows) {
            let kept = kept.clone();
            self.generation = self.generation.max(generation);
            return kept;
        }
        let list = Arc::new(rows);
        self.offer(generation, list.clone());
        list
    }

    fn current(&self) -> Option<&Arc<Vec<ContainerStorage>>> {
        self.list
            .as_ref()
            .filter(|_| self.generation >= self.needed)
    }
}

/// The kept lists, and the streams that keep them.
pub struct Inventory {
    registry: Arc<Registry>,
    pacing: WatchInventoryRequest,
    entries: Mutex<HashMap<String, Entry>>,
    /// Messages received by host: whole lists, changes only (for the
    /// metrics: what the streams carry).
    received: Mutex<HashMap<String, [u64; 2]>>,
    streams: PerHost<()>,
}

impl Inventory {
    /// Lists of the hosts in `registry`, streamed at `pacing` (zeros: the
    /// agent's defaults).
    pub fn new(registry: Arc<Registry>, pacing: WatchInventoryRequest) -> Arc<Self> {
        Arc::new(Inventory {
            registry,
            pacing,
            entries: Mutex::new(HashMap::new()),
            received: Mutex::new(HashMap::new()),
            streams: PerHost::default(),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Split `hosts`: the lists kept current for them, and the hosts to
    /// ask (no stream open, or what was routed here is newer than its
    /// list).
    #[allow(clippy::type_complexity)]
    pub fn split(
        &self,
        hosts: &[String],
    ) -> (HashMap<String, Arc<Vec<ContainerStorage>>>, Vec<String>) {
        let entries = self.entries();
        let mut kept = HashMap::new();
        let mut ask = Vec::new();
        for host in hosts {
            match entries.get(host).and_then(Entry::current) {
                Some(list) => {
                    kept.insert(host.clone(), list.clone());
                }
                None => ask.push(host.clone()),
            }
        }
        (kept, ask)
    }

    /// An answer asked of `host` directly: kept when its stream is open and
    /// nothing newer is kept. Returns its containers, shared with the kept
    /// list rather than copied.
    pub fn offer(&self, host: &str, answer: InspectResponse) -> Arc<Vec<ContainerStorage>> {
        match self.entries().get_mut(host).filter(|e| e.list.is_some()) {
            Some(entry) => entry.answer(answer.generation, answer.containers),
            None => Arc::new(answer.containers),
        }
    }

    /// A resize or repair routed here ended at the agent's `generation`.
    pub fn changed(&self, host: &str, generation: u64) {
        // Kept even before the stream's first list: that list may have
        // been read before the change.
        let mut entries = self.entries();
        let entry = entries.entry(host.to_string()).or_default();
        entry.needed = entry.needed.max(generation);
    }

    /// Whether `host`'s list is kept current by its stream now.
    pub fn streaming(&self, host: &str) -> bool {
        self.entries().get(host).is_some_and(|e| e.list.is_some())
    }

    /// Messages `host`'s stream brought: whole lists and changes-only
    /// ones, since this controller started.
    pub fn received(&self, host: &str) -> [u64; 2] {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied()
            .unwrap_or_default()
    }

    /// Keep one stream per registered host, for good.
    pub fn spawn(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.reconcile();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Start streams for new hosts, stop those of removed ones (and drop
    /// their lists).
    fn reconcile(self: &Arc<Self>) {
        let names = self.registry.names();
        let registered: HashSet<&str> = names.iter().map(String::as_str).collect();
        self.entries()
            .retain(|host, _| registered.contains(host.as_str()));
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|host, _| registered.contains(host.as_str()));
        self.streams.reconcile(&names, |host| {
            let this = self.clone();
            let h = host.to_string();
            (tokio::spawn(async move { this.follow(h).await }), ())
        });
    }

    async fn follow(self: Arc<Self>, host: String) {
        crate::reopen::forever(
            &self.registry,
            &host,
            "inventory stream",
            || self.session(&host),
            // The list is no longer kept current, nor are the counts of a
            // restarted agent comparable with the old ones.
            || {
                self.entries().remove(&host);
            },
        )
        .await;
    }

    /// One stream, until it ends. It asks for changes only: after the
    /// first list, the agent sends the rows that changed, applied here to
    /// the stream's own list (not to the kept one, which a direct answer
    /// may have replaced).
    async fn session(&self, host: &str) -> Result<(), Status> {
        let mut client = self.registry.client(host)?;
        let pacing = WatchInventoryRequest {
            changes_only: true,
            ..self.pacing
        };
        let mut stream = client.watch_inventory(pacing).await?.into_inner();
        let mut rows = None;
        while let Some(msg) = stream.message().await? {
            let generation = msg.generation;
            let first = rows.is_none();
            self.received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(host.to_string())
                .or_default()[usize::from(msg.changes_only)] += 1;
            // The stream's list is the kept one, shared, not a second
            // copy of it (at 10,000 hosts the copies cost 80 MiB of RSS):
            // changes are applied to a copy taken only then, a whole list
            // replaces it.
            let mut list = if msg.changes_only {
                rows.take().map(Arc::unwrap_or_clone)
            } else {
                None
            };
            roomy_proto::inventory::apply(&mut list, msg).map_err(|e| {
                Status::from(ControllerError::Agent {
                    host: host.to_string(),
                    code: tonic::Code::Internal,
                    message: e.to_string(),
                })
            })?;
            let list = Arc::new(list.expect("applied above"));
            rows = Some(list.clone());
            self.entries()
                .entry(host.to_string())
                .or_default()
                .offer(generation, list);
            if first {
                self.registry.observe(host, Ok(()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `e` is offered a list of containers `names`, read at `generation`.
    fn offer(e: &mut Entry, generation: u64, names: &[&str]) {
        let list = names
            .iter()
            .map(|n| ContainerStorage {
                name: n.to_string(),
                ..Default::default()
            })
            .collect();
        e.offer(generation, Arc::new(list));
    }

    fn names(e: &Entry) -> Vec<String> {
        e.current()
            .map(|l| l.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn an_older_list_does_not_replace_a_newer_one() {
        let mut e = Entry::default();
        offer(&mut e, 3, &["a"]);
        offer(&mut e, 5, &["a", "b"]);
        // Still on its way in the stream when a direct answer came.
        offer(&mut e, 4, &["a"]);
        assert_eq!(names(&e), ["a", "b"]);
        // The same count again: the later read wins (use moved).
        offer(&mut e, 5, &["a", "b", "c"]);
        assert_eq!(names(&e), ["a", "b", "c"]);
    }

    #[test]
    fn a_routed_change_hides_the_list_until_one_shows_it() {
        let mut e = Entry::default();
        offer(&mut e, 3, &["a"]);
        e.needed = 4;
        assert!(e.current().is_none());
        offer(&mut e, 4, &["a", "grown"]);
        assert_eq!(names(&e), ["a", "grown"]);
    }

    /// An `ls --fresh` answer with the rows kept: the kept list (shared
    /// with the stream's) stays and serves the answer, at the answer's
    /// generation; one with other rows replaces it.
    #[test]
    fn an_answer_with_the_kept_rows_keeps_the_kept_list() {
        let mut e = Entry::default();
        offer(&mut e, 3, &["a", "b"]);
        let kept = e.current().unwrap().clone();
        e.needed = 4;
        let same = kept.to_vec();
        let served = e.answer(4, same);
        assert!(Arc::ptr_eq(&served, &kept), "a second copy was kept");
        assert!(Arc::ptr_eq(
            e.current().expect("generation 4 shows it"),
            &kept
        ));
        let mut other = kept.to_vec();
        other[0].fs_used_bytes = 7;
        let served = e.answer(5, other.clone());
        assert_eq!(*served, other);
        assert!(Arc::ptr_eq(e.current().unwrap(), &served));
    }
}
