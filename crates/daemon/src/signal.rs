//! How Roomy's daemons learn to stop.
//!
//! The first SIGTERM (systemd's stop) or Ctrl-C marks the process as
//! stopping: [`shutdown`] resolves everywhere, servers stop accepting, and
//! long-lived streams (the agents' Sync streams, `events --follow`) end so
//! that graceful shutdown can finish. Whatever still runs after
//! [`GRACE`] is cut short: a stop must never hang.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;

/// How long a stopping daemon may take to finish in-flight work.
pub const GRACE: Duration = Duration::from_secs(10);

fn flag() -> &'static watch::Sender<bool> {
    static FLAG: OnceLock<watch::Sender<bool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let sender = watch::Sender::new(false);
        tokio::spawn(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            flag().send_replace(true);
            tokio::time::sleep(GRACE).await;
            eprintln!(
                "still busy {}s after the stop signal: exiting now",
                GRACE.as_secs()
            );
            std::process::exit(0);
        });
        sender
    })
}

/// Resolves once the process is stopping. The first call (inside the
/// runtime) installs the signal handlers.
pub async fn shutdown() {
    let mut rx = flag().subscribe();
    let _ = rx.wait_for(|stopping| *stopping).await;
}
