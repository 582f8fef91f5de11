//! Test-only failpoints: with the `failpoints` feature and
//! `ROOMY_FAILPOINT=<step>`, the agent kills itself with SIGKILL when a
//! resize reaches `<step>`, so the real-kernel tier can prove that every
//! step is safe to crash in. `ROOMY_FAILPOINT=<step>=pause` holds the
//! resize there for 4 s instead, long enough for a test to cancel its
//! client and send another. `ROOMY_FAILPOINT=events-lost` makes the agent
//! drop every Docker event it is sent, as dockerd does to a subscriber
//! that falls behind ([`active`]). Without the feature this compiles to
//! nothing.

/// How long `<step>=pause` holds a resize.
#[cfg(feature = "failpoints")]
const PAUSE: std::time::Duration = std::time::Duration::from_secs(4);

/// Die (or pause) here if the test asked for it.
#[inline]
pub fn hit(step: &str) {
    #[cfg(feature = "failpoints")]
    {
        let wanted = std::env::var("ROOMY_FAILPOINT").unwrap_or_default();
        if wanted == step {
            tracing::warn!(step, "failpoint: SIGKILL");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        } else if wanted.strip_suffix("=pause") == Some(step) {
            // A blocking sleep, as the kernel work it stands for would be.
            tracing::warn!(step, "failpoint: pause");
            std::thread::sleep(PAUSE);
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = step;
}

/// Whether the test set `ROOMY_FAILPOINT` to this condition (not a step:
/// nothing dies or waits).
#[inline]
pub fn active(condition: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        std::env::var("ROOMY_FAILPOINT").is_ok_and(|w| w == condition)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = condition;
        false
    }
}

/// `hit` for a step that stands for waiting rather than kernel work (the
/// sim backend's resize): `<step>=pause` sleeps on the runtime, so the rest
/// of the agent (Inspect, the Sync stream) goes on meanwhile.
pub async fn hit_async(step: &str) {
    #[cfg(feature = "failpoints")]
    {
        let wanted = std::env::var("ROOMY_FAILPOINT").unwrap_or_default();
        if wanted.strip_suffix("=pause") == Some(step) {
            tracing::warn!(step, "failpoint: pause");
            tokio::time::sleep(PAUSE).await;
            return;
        }
    }
    hit(step);
}
