//! roomy-agent binary: flags, start-up recovery, the guard, and the gRPC
//! listeners.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use roomy_agent::docker::DockerClient;
use roomy_agent::{AgentService, ThinBackend, ThinConfig};
use roomy_proto::v1::agent_server::AgentServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Grows Docker containers' disks online. Runs as root on each Docker host.
#[derive(Parser, Debug)]
#[command(name = "roomy-agent", version)]
struct Args {
    /// Unix socket for local clients (root only).
    #[arg(
        long,
        env = "ROOMY_AGENT_SOCKET",
        default_value = "/run/roomy/agent.sock"
    )]
    socket: PathBuf,

    /// Also listen on this TCP address, for the controller. Unauthenticated
    /// until mutual TLS lands: bind it to a trusted network only.
    #[arg(long, env = "ROOMY_AGENT_LISTEN")]
    listen: Option<std::net::SocketAddr>,

    /// dockerd's socket (unix:///var/run/docker.sock by default).
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,

    /// Where intent records and private mount points live.
    #[arg(long, env = "ROOMY_STATE_DIR", default_value = "/var/lib/roomy")]
    state_dir: PathBuf,

    /// Refuse growth that would leave the pool with less free data space
    /// than this percentage of its size.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=90))]
    pool_margin_percent: u64,

    /// Seconds between the guard's sweeps (it also acts on Docker events).
    #[arg(long, default_value_t = 5)]
    guard_interval: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let docker = DockerClient::connect(args.docker_host.as_deref())
        .await
        .context("cannot reach dockerd; is it running, and is --docker-host right?")?;
    let backend = ThinBackend::new(
        docker,
        ThinConfig {
            state_dir: args.state_dir.clone(),
            pool_margin_percent: args.pool_margin_percent,
        },
    )?;

    for line in backend.recover().await {
        tracing::warn!("{line}");
    }
    tokio::spawn(
        backend
            .clone()
            .run_guard(Duration::from_secs(args.guard_interval.max(1))),
    );

    let service = AgentServer::new(AgentService::new(backend));

    if let Some(addr) = args.listen {
        tracing::warn!(%addr, "serving on TCP without TLS: mutual TLS is not built yet");
        let svc = service.clone();
        tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve(addr)
                .await
            {
                tracing::error!(error = %e, "TCP listener failed");
            }
        });
    }

    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // A socket file left by an earlier agent refuses the bind.
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("bind {}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %args.socket.display(), "roomy-agent ready");

    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown())
        .await?;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
