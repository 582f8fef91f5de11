//! What roomy-agent and roomy-controller share at their edges: how they
//! learn to stop ([`signal`]), how they log ([`init_logging`]) and how they
//! print their man page ([`print_man_page`]), and what their gRPC
//! servers serve beside their own service ([`grpc`]).
#![warn(missing_docs)]

pub mod grpc;
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

/// Writes `cmd`'s man page (roff, from the same clap definitions as
/// `--help`, so the two never drift) to stdout; packages install it as
/// section 8, where daemons live.
pub fn print_man_page(cmd: clap::Command) -> std::io::Result<()> {
    use std::io::Write;
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).section("8").render(&mut page)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)?;
    out.flush()
}
