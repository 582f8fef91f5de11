//! Test-only failpoints: with the `failpoints` feature and
//! `ROOMY_FAILPOINT=<step>`, the agent kills itself with SIGKILL when a
//! resize reaches `<step>`, so the real-kernel tier can prove that every
//! step is safe to crash in. Without the feature this compiles to nothing.

/// Die here if the test asked for it.
#[inline]
pub fn hit(step: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("ROOMY_FAILPOINT").as_deref() == Ok(step) {
        tracing::warn!(step, "failpoint: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = step;
}
