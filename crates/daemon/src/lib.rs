//! What roomy-agent and roomy-controller share at their edges: how they
//! learn to stop ([`signal`]) and how they log ([`init_logging`]).
#![warn(missing_docs)]

pub mod signal;

/// Logs to stderr (journald picks it up under systemd), filtered by
/// `RUST_LOG` (default `info`), in colour only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
