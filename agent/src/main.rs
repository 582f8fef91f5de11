//! roomy-agent binary: flags, start-up recovery, the guard, and the gRPC
//! listeners (root-only unix socket; mutual TLS on TCP for the controller).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, ValueEnum};
use roomy_agent::docker::DockerClient;
use roomy_agent::policy::Cadence;
use roomy_agent::{
    AgentService, Overlay2Backend, Overlay2Config, SimBackend, StorageBackend, ThinBackend,
    ThinConfig,
};
use roomy_proto::v1::agent_server::AgentServer;
use roomy_tls::{ClientRule, Kind, ServerTls, TlsFiles};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Grows Docker containers' disks online. Runs as root on each Docker host.
#[derive(Parser, Debug)]
#[command(name = "roomy-agent", version)]
struct Args {
    /// Print this man page (roff, section 8) on stdout and exit; the
    /// Debian package installs it as roomy-agent(8).
    #[arg(long)]
    man: bool,
    /// Unix socket for local clients (root only).
    #[arg(
        long,
        env = "ROOMY_AGENT_SOCKET",
        default_value = "/run/roomy/agent.sock"
    )]
    socket: PathBuf,
    /// Serve no unix socket (TCP with mutual TLS only).
    #[arg(long)]
    no_socket: bool,

    /// Listen on this TCP address for the controller, with mutual TLS
    /// (needs --tls-cert, --tls-key, --tls-ca).
    #[arg(long, env = "ROOMY_AGENT_LISTEN")]
    listen: Option<SocketAddr>,

    /// This agent's certificate (PEM); `roomyctl certs init` makes one.
    #[arg(long, env = "ROOMY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, env = "ROOMY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The fleet's CA (PEM).
    #[arg(long, env = "ROOMY_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client identities allowed on TCP (repeatable). Whatever the name, only
    /// controller certificates (kind URI SAN urn:roomy:kind:controller) get in.
    #[arg(long = "allow-client", default_value = "roomy-controller")]
    allow_client: Vec<String>,

    /// Storage backend: auto (the one for dockerd's storage driver),
    /// devicemapper, overlay2 (on XFS with prjquota), or sim (in memory,
    /// for tests and fleet benchmarks; never touches a disk).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// sim: containers per simulated host.
    #[arg(long, default_value_t = 10)]
    sim_containers: usize,
    /// sim: serve this many simulated hosts, on consecutive ports from
    /// --listen (host0, host1, ...), for fleet benchmarks.
    #[arg(long, default_value_t = 1)]
    sim_hosts: usize,

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

    /// Serve Prometheus metrics over plain HTTP on this address
    /// (e.g. 0.0.0.0:9787); off unless given.
    #[arg(long, env = "ROOMY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Milliseconds between policy samples of every running container's
    /// filesystem use (statvfs).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    sample_interval_ms: u64,

    /// Longest time, in milliseconds, a filesystem goes unread while this
    /// host has written too little since to bring it to its policy's
    /// trigger (the kernel's write counters bound that). Set it to the
    /// sample interval to read every filesystem at every sample.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    idle_read_interval_ms: u64,

    /// Milliseconds between re-reads of the pool while policies are in
    /// force; the container list is re-read then too when Docker or a
    /// resize changed something, and at least every 10 s (or this, if
    /// longer).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    refresh_interval_ms: u64,

    /// sim: every running container writes this much per second ("50M"),
    /// so that policies have something to act on.
    #[arg(long, value_parser = parse_size)]
    sim_fill_rate: Option<u64>,
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<roomy_proto::ByteSize>()
        .map(|b| b.0)
        .map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Auto,
    Devicemapper,
    Overlay2,
    Sim,
}

fn main() -> anyhow::Result<()> {
    roomy_daemon::init_logging();
    let args = Args::parse();
    if args.man {
        return Ok(roomy_daemon::print_man_page(Args::command())?);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // One host's agent: one worker. Its kernel work runs on the blocking
    // pool anyway, and with a second worker a timer's wake-up can also
    // wake the idle sibling to look for work (a futex and two context
    // switches, which under emulation showed in the idle agent's profile).
    // Simulated fleets keep a worker per core: they serve thousands of
    // hosts from one process.
    if args.backend != Backend::Sim {
        runtime.worker_threads(1);
    }
    runtime.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match (&args.listen, &args.tls_cert, &args.tls_key, &args.tls_ca) {
        (None, ..) => None,
        (Some(_), Some(cert), Some(key), Some(ca)) => {
            let files = TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            };
            let tls = ServerTls::load(
                files,
                ClientRule::only(&[Kind::Controller], args.allow_client.clone()),
            ).context("agent TLS")?;
            tls.spawn_reloader(Duration::from_secs(2));
            Some(tls)
        }
        (Some(_), ..) => bail!("--listen needs --tls-cert, --tls-key and --tls-ca (make them with `roomyctl certs init`)"),
    };

    let cadence = Cadence {
        sample: Duration::from_millis(args.sample_interval_ms),
        refresh: Duration::from_millis(args.refresh_interval_ms),
        idle: Duration::from_millis(args.idle_read_interval_ms),
        ..Cadence::default()
    };
    match args.backend {
        Backend::Sim => {
            let mut tasks = Vec::new();
            for i in 0..args.sim_hosts {
                let backend = SimBackend::demo(&format!("host{i}"), args.sim_containers)
                    .with_fill_rate(args.sim_fill_rate.unwrap_or(0));
                let shift = |a: SocketAddr| SocketAddr::new(a.ip(), a.port() + i as u16);
                let socket = (i == 0 && !args.no_socket).then(|| args.socket.clone());
                let state_dir = if args.sim_hosts > 1 {
                    args.state_dir.join(format!("host{i}"))
                } else {
                    args.state_dir.clone()
                };
                let listeners = Listeners {
                    socket,
                    tcp: args.listen.map(shift),
                    tls: tls.clone(),
                    metrics: args.metrics_listen.map(shift),
                };
                tasks.push(tokio::spawn(serve(backend, state_dir, cadence, listeners)));
            }
            tracing::info!(hosts = args.sim_hosts, "simulated agents ready");
            for t in tasks {
                t.await??;
            }
            Ok(())
        }
        real => {
            let docker = DockerClient::connect(args.docker_host.as_deref())
                .await
                .context("cannot reach dockerd; is it running, and is --docker-host right?")?;
            let backend = match real {
                Backend::Auto => {
                    let info = docker.info().await.context("docker info")?;
                    match info.driver.as_str() {
                        "devicemapper" => Backend::Devicemapper,
                        // The containerd image store too: the overlay2
                        // backend refuses every call with why and what to do.
                        "overlay2" | "overlayfs" => Backend::Overlay2,
                        other => bail!(
                            "dockerd's storage driver is {other:?}: Roomy grows devicemapper and overlay2 (on XFS with prjquota) containers"
                        ),
                    }
                }
                chosen => chosen,
            };
            tracing::info!(backend = ?backend, "serving dockerd's containers");
            let listeners = Listeners {
                socket: (!args.no_socket).then(|| args.socket.clone()),
                tcp: args.listen,
                tls,
                metrics: args.metrics_listen,
            };
            if backend == Backend::Overlay2 {
                let backend = Overlay2Backend::new(
                    docker,
                    Overlay2Config {
                        state_dir: args.state_dir.clone(),
                        pool_margin_percent: args.pool_margin_percent,
                    },
                )?;
                for line in backend.recover().await {
                    tracing::warn!("{line}");
                }
                return serve(backend, args.state_dir.clone(), cadence, listeners).await;
            }
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
            tokio::spawn(backend.clone().run_guard(
                Duration::from_secs(args.guard_interval.max(1)),
                cadence.beat(),
            ));
            serve(backend, args.state_dir.clone(), cadence, listeners).await
        }
    }
}

/// Where one agent serves.
struct Listeners {
    socket: Option<PathBuf>,
    tcp: Option<SocketAddr>,
    tls: Option<Arc<ServerTls>>,
    metrics: Option<SocketAddr>,
}

/// Serve one backend on the unix socket and, with TLS, on TCP, and its
/// metrics over HTTP, until SIGTERM or Ctrl-C.
async fn serve<B: StorageBackend + Clone>(
    backend: B,
    state_dir: PathBuf,
    cadence: Cadence,
    listeners: Listeners,
) -> anyhow::Result<()> {
    let Listeners {
        socket,
        tcp: listen,
        tls,
        metrics,
    } = listeners;
    let (service, render) = AgentService::start(backend, &state_dir, cadence)
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    let service = AgentServer::new(service);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<AgentService<B>>>()
        .await;
    let router = roomy_daemon::grpc::with_reflection(
        tonic::transport::Server::builder().add_service(health),
        roomy_proto::v1::agent_server::SERVICE_NAME,
    )?
    .add_service(service);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind metrics on {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        tasks.spawn(async move {
            roomy_metrics::serve(listener, render, shutdown())
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if let (Some(addr), Some(tls)) = (listen, tls) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let router = router.clone();
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), shutdown())
                .await
                .map_err(anyhow::Error::from)
        });
        tracing::info!(%addr, "serving the controller over mutual TLS");
    }
    if let Some(path) = socket.clone() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        // A socket file left by an earlier agent refuses the bind.
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        tracing::info!(socket = %path.display(), "roomy-agent ready");
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown())
                .await
                .map_err(anyhow::Error::from)
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn shutdown() {
    roomy_daemon::signal::shutdown().await;
    tracing::info!("shutting down");
}
