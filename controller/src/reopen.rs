//! A standing stream to each agent, one task per host, opened again with
//! backoff whenever it ends: the Sync link (`distribute.rs`) and the
//! inventory stream (`inventory.rs`) both live this way.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic::Status;

use crate::registry::Registry;

/// Backoff between attempts to reopen a stream.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Run `session` for `host` for good: after each end, `ended` (clean up
/// what the stream kept current), the host's state from the error, then a
/// pause that doubles from 0.5 s to 10 s while sessions keep failing.
pub async fn forever<F, Fut>(
    registry: &Registry,
    host: &str,
    what: &'static str,
    mut session: F,
    mut ended: impl FnMut(),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = session().await;
        ended();
        match result {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(status) => {
                tracing::debug!(%host, "{what}: {}", status.message());
                registry.observe(host, Err(&status));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One task per host, with what its owner keeps beside it (`T`): started
/// for hosts that appear, aborted for hosts that go.
pub struct PerHost<T> {
    tasks: Mutex<HashMap<String, (JoinHandle<()>, T)>>,
}

impl<T> Default for PerHost<T> {
    fn default() -> Self {
        PerHost {
            tasks: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> PerHost<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (JoinHandle<()>, T)>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Abort the tasks of hosts not in `names`; start `start(host)` for
    /// each host in `names` that has none.
    pub fn reconcile(&self, names: &[String], mut start: impl FnMut(&str) -> (JoinHandle<()>, T)) {
        // A set: this runs every second, and a scan of the list per task
        // was 10^8 string compares a second at 10,000 hosts.
        let registered: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut tasks = self.lock();
        tasks.retain(|host, (task, _)| {
            let keep = registered.contains(host.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        for host in names {
            if !tasks.contains_key(host) {
                tasks.insert(host.clone(), start(host));
            }
        }
    }

    /// Abort every task; how many there were.
    pub fn stop_all(&self) -> usize {
        let mut tasks = self.lock();
        let n = tasks.len();
        for (_, (task, _)) in tasks.drain() {
            task.abort();
        }
        n
    }

    /// What is kept beside `host`'s task, if it has one.
    pub fn with<R>(&self, host: &str, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.lock().get(host).map(|(_, kept)| f(kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_per_host_started_once_and_stopped_when_it_goes() {
        let tasks = PerHost::default();
        let mut started = Vec::new();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let idle = || tokio::spawn(std::future::pending::<()>());
        tasks.reconcile(&names(&["a", "b"]), |h| {
            started.push(h.to_string());
            (idle(), h.len())
        });
        tasks.reconcile(&names(&["b", "c"]), |h| {
            started.push(h.to_string());
            (idle(), h.len())
        });
        assert_eq!(started, ["a", "b", "c"], "b is not started again");
        assert_eq!(tasks.with("a", |_| ()), None, "a went");
        assert_eq!(tasks.with("c", |n| *n), Some(1));
        assert_eq!(tasks.stop_all(), 2);
        assert_eq!(tasks.with("b", |_| ()), None);
    }
}
