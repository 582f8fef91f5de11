//! A standing stream to an agent, opened again with backoff whenever it
//! ends: the Sync link (`distribute.rs`) and the inventory stream
//! (`inventory.rs`) both live this way.

use std::future::Future;
use std::time::Duration;

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
