//! roomyctl: inspect and grow Docker containers' disks, on one host (through
//! its agent's unix socket) or across a fleet (through the controller, over
//! mutual TLS).
//!
//! Exit codes: 0 done, 1 failed, 2 usage error, 3 refused (bad size,
//! shrink, unknown host or container, permission denied, pool too full),
//! 4 agent or controller unreachable.

#[macro_use]
mod print;

mod certs;
mod output;
mod settings;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use roomy_proto::v1::agent_client::AgentClient;
use roomy_proto::v1::controller_client::ControllerClient;
use roomy_proto::v1::{
    AddHostRequest, ContainerStorage, EventsRequest, GrowPoolRequest, HostError,
    HostGrowPoolRequest, InspectPoolRequest, InspectRequest, ListAuditRequest,
    ListContainersRequest, ListHostsRequest, ListPoliciesRequest, Policy, PoolStatus,
    RemoveHostRequest, RemovePolicyRequest, RepairRequest, ResizeRequest, TargetRequest,
    TargetResizeRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

use settings::{pick, FileSettings};

const DEFAULT_AGENT: &str = "unix:///run/roomy/agent.sock";

/// Inspect and grow Docker containers' disks, online.
#[derive(Parser, Debug)]
#[command(name = "roomyctl", version, propagate_version = true)]
struct Cli {
    /// The controller, host:port (fleet mode, mutual TLS); several,
    /// comma-separated (a:7443,b:7443), are tried in turn until one
    /// answers.
    #[arg(long, global = true, env = "ROOMY_CONTROLLER")]
    controller: Option<String>,
    /// Name on the controller's certificate.
    #[arg(long, global = true, env = "ROOMY_SERVER_NAME")]
    server_name: Option<String>,
    /// Your client certificate (PEM).
    #[arg(long, global = true, env = "ROOMY_CERT")]
    cert: Option<PathBuf>,
    /// Your client key (PEM).
    #[arg(long, global = true, env = "ROOMY_KEY")]
    key: Option<PathBuf>,
    /// The fleet's CA (PEM).
    #[arg(long, global = true, env = "ROOMY_CA")]
    ca: Option<PathBuf>,
    /// One agent directly, no controller: unix:///run/roomy/agent.sock.
    #[arg(long, global = true, env = "ROOMY_AGENT")]
    agent: Option<String>,
    /// Config file (default ~/.config/roomy/roomyctl.toml).
    #[arg(long, global = true, env = "ROOMY_CONFIG")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table, env = "ROOMY_OUTPUT")]
    output: Format,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 120)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Readable table.
    Table,
    /// JSON, for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One row per container: host, name, driver, size, used %, health.
    Ls {
        /// Only this host (fleet mode).
        host: Option<String>,
        /// Order rows: full (soonest full first), used, size, rate, name.
        #[arg(long, value_enum)]
        sort: Option<top::SortKey>,
        /// Fleet mode: ask every agent now. Without it the controller
        /// answers from the lists the agents keep current (a change within
        /// a second, use within about 10 s of writes).
        #[arg(long)]
        fresh: bool,
    },
    /// Who fills next: every container and pool with use, fill rate, time
    /// to full (up to its policy's cap) and the policy that applies,
    /// soonest full first; refreshes on a terminal, one shot otherwise.
    Top {
        /// Only this host (fleet mode).
        host: Option<String>,
        /// Order containers (see ls --sort).
        #[arg(long, value_enum, default_value_t = top::SortKey::Full)]
        sort: top::SortKey,
        /// Seconds between refreshes.
        #[arg(short = 'n', long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
        /// Print once and exit (also with -o json, or when stdout is not a terminal).
        #[arg(long)]
        once: bool,
    },
    /// Everything known about one container's disk: HOST/CONTAINER (CONTAINER with --agent).
    Inspect {
        /// HOST/CONTAINER, or CONTAINER with --agent.
        target: String,
    },
    /// Grow a container's disk, running or stopped: `resize host1/node 16G`, `resize host1/node +4G`.
    Resize {
        /// HOST/CONTAINER, or CONTAINER with --agent.
        target: String,
        /// New size (16G) or growth (+4G); K, M, G, T are powers of 1024.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Make an `at_risk` container (grown by hand with dmsetup) startable again.
    Repair {
        /// HOST/CONTAINER, or CONTAINER with --agent.
        target: String,
    },
    /// Thin pools: `pool ls [HOST]`, `pool grow [HOST] --data +4G [--metadata +64M]`.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// The controller's hosts.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// The audit log, newest first.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Auto-grow policies, enforced by every agent: `policy set grow80 --at 80% --grow 50% --max 50G`.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Policy decisions fleet-wide (grown, would_grow, skipped, failed) and
    /// pools' changes of mode (health).
    Events {
        /// How many past events to show first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Keep streaming new events as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Certificates for a fleet.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print shell completions: `roomyctl completions bash > /etc/bash_completion.d/roomyctl`.
    Completions {
        /// bash, zsh, fish, elvish, powershell.
        shell: clap_complete::Shell,
    },
    /// Man pages from these very definitions, so they never drift from
    /// --help: roomyctl(1) on stdout, or with --dir one page per subcommand.
    Man {
        /// An existing directory for roomyctl.1 and roomyctl-SUBCOMMAND.1
        /// (e.g. /usr/share/man/man1).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum PoolCommand {
    /// One row per host: data and metadata use, mode, backing, overcommit.
    Ls {
        /// Only this host (fleet mode).
        host: Option<String>,
    },
    /// Grow a pool online, without stopping Docker or any container.
    Grow {
        /// The host (fleet mode; omit with --agent).
        host: Option<String>,
        /// New data size (8G) or growth (+4G).
        #[arg(long, allow_hyphen_values = true)]
        data: Option<String>,
        /// New metadata size or growth (+64M).
        #[arg(long, allow_hyphen_values = true)]
        metadata: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Create or replace a policy by name.
    Set(Box<PolicyArgs>),
    /// Every policy, with where it came from.
    Ls,
    /// Remove a policy; agents stop enforcing it at once.
    Rm {
        /// Policy name.
        name: String,
    },
    /// Which policy applies to HOST/CONTAINER (or HOST/pool) and what it would do now, with the numbers.
    Explain {
        /// HOST/CONTAINER or HOST/pool.
        target: String,
    },
}

/// A policy, as `policy set` takes it (the same words as the controller's
/// `[[policies]]`).
#[derive(clap::Args, Debug)]
struct PolicyArgs {
    /// Unique name: events and the audit log name it.
    name: String,
    /// A pool policy: grows the host's thin pool instead of containers.
    #[arg(long)]
    pool: bool,
    /// Host glob (web*, host[1-3]); default all.
    #[arg(long, default_value = "")]
    hosts: String,
    /// Container name glob; default all.
    #[arg(long, default_value = "")]
    containers: String,
    /// Docker label the container must carry: key=value or key (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Grow when the filesystem (pool: data) is this full: 80%.
    #[arg(long)]
    at: Option<String>,
    /// Grow when less than this is free: 1G.
    #[arg(long)]
    free: Option<String>,
    /// Grow when this share of inodes is used: 90%.
    #[arg(long)]
    inodes: Option<String>,
    /// Pool policies: grow metadata when it is this full: 80%.
    #[arg(long)]
    metadata_at: Option<String>,
    /// Grow when the fill rate would fill the disk within this: 20s (default); 0 turns it off.
    #[arg(long)]
    horizon: Option<String>,
    /// Step: 50% of the current size, or 1G.
    #[arg(long, allow_hyphen_values = true)]
    grow: Option<String>,
    /// Least step: 256M.
    #[arg(long)]
    min_step: Option<String>,
    /// Pool policies: metadata step: 64M.
    #[arg(long)]
    grow_metadata: Option<String>,
    /// Cap: never grow past this (a container label roomy.max-size overrides it).
    #[arg(long)]
    max: Option<String>,
    /// Least time between two growths of one target, unless it would fill within the horizon: 30s (default), 5m.
    #[arg(long)]
    cooldown: Option<String>,
    /// Never grow a container when the pool's data use could then pass this: 95% (default); 0 turns it off.
    #[arg(long)]
    pool_guard: Option<String>,
    /// Same for the pool's metadata: 95% (default).
    #[arg(long)]
    pool_guard_metadata: Option<String>,
    /// Record what it would do (events), change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl PolicyArgs {
    fn spec(self) -> roomy_policy::PolicySpec {
        roomy_policy::PolicySpec {
            name: self.name,
            pool: self.pool,
            hosts: self.hosts,
            containers: self.containers,
            labels: self.labels,
            at: self.at,
            free: self.free,
            inodes: self.inodes,
            metadata_at: self.metadata_at,
            horizon: self.horizon,
            grow: self.grow,
            min_step: self.min_step,
            grow_metadata: self.grow_metadata,
            max: self.max,
            cooldown: self.cooldown,
            pool_guard: self.pool_guard,
            pool_guard_metadata: self.pool_guard_metadata,
            dry_run: self.dry_run,
        }
    }
}

#[derive(Subcommand, Debug)]
enum HostsCommand {
    /// Hosts with their state: up, unreachable (since when), last error.
    Ls,
    /// Register an agent: `hosts add host1 10.0.0.2:7444`.
    Add {
        /// Host name (the agent's certificate name unless --agent-name).
        name: String,
        /// host:port of the agent's TLS listener.
        address: String,
        /// Name on the agent's certificate, when not NAME.
        #[arg(long)]
        agent_name: Option<String>,
    },
    /// Forget a host.
    Rm {
        /// Host name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// A CA and certificates for the controller, named agents and users,
    /// plus a controller config with the users' roles.
    Init {
        /// Directory to write (must not hold a CA already).
        #[arg(long)]
        out: PathBuf,
        /// Host names, each gets an agent certificate: --host host1 --host host2.
        /// (Not --agent: that global flag names an agent socket.)
        #[arg(long = "host")]
        agents: Vec<String>,
        /// Users as NAME:ROLE (viewer, operator, admin): --user alice:admin.
        #[arg(long = "user")]
        users: Vec<String>,
    },
    /// One more certificate from an existing CA (made by `certs init`):
    /// `certs issue --dir DIR agent host4`, `... user eve`, `... controller`
    /// (replaces DIR/controller.pem|.key; a running controller picks it up).
    Issue {
        /// The directory `certs init` wrote (holds ca.pem and ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// agent, user or controller.
        #[arg(value_enum)]
        kind: IssueKind,
        /// The agent's host name or the user's name (not for controller).
        name: Option<String>,
        /// Valid until (RFC 3339, e.g. 2027-01-01T00:00:00Z); default one year.
        #[arg(long)]
        not_after: Option<String>,
    },
}

/// What `certs issue` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IssueKind {
    /// An agent (server) certificate, DIR/agents/NAME.pem.
    Agent,
    /// A user (client) certificate, DIR/users/NAME.pem.
    User,
    /// The controller's certificate, DIR/controller.pem.
    Controller,
}

/// How roomyctl ends.
enum Failure {
    Refused(String),
    Unreachable(String),
    Failed(String),
}

/// The status message with its whole source chain: in TLS 1.3 the server
/// judges the client certificate after the client's handshake is done, so
/// its refusal (a TLS alert) only shows deep in the chain of the first call.
fn full_message(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let mut message = full_message(&status);
        if message.is_empty() {
            // Some servers answer with a bare code: say what it means here.
            message = match status.code() {
                Code::Unimplemented => "the server does not offer this call (Unimplemented): is --controller pointing at an agent's port, or at another gRPC service?".into(),
                code => format!("the server answered {code:?} without a message"),
            };
        }
        if message.contains("received fatal alert") {
            return Failure::Refused(format!(
                "the server refused this client's certificate ({message}): check that --cert and --key come from the fleet's CA, are not expired, and that the server allows this identity"
            ));
        }
        match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated => Failure::Refused(message),
            Code::Unavailable | Code::DeadlineExceeded => Failure::Unreachable(message),
            // The connection broke mid-request: the agent, or the
            // controller routing to it, died half-way. An agent finishes a
            // resize it started (at once, or when it restarts), so the
            // next step is to look, then ask again: the same size again
            // changes nothing.
            Code::Unknown if message.contains("transport error") => Failure::Unreachable(format!(
                "lost the connection during the request ({message}): the agent or the controller went away; a resize the agent had started is finished by the agent: check with `roomyctl inspect`, then ask again if needed (the same size again changes nothing)"
            )),
            _ => Failure::Failed(message),
        }
    }
}

/// Where requests go.
enum Conn {
    Agent(AgentClient<Channel>),
    Controller(ControllerClient<Channel>),
}

fn unreachable(what: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::Unreachable(format!("cannot reach {what}: {e}"))
}

async fn connect_agent(agent: &str, timeout: Duration) -> Result<AgentClient<Channel>, Failure> {
    let hint = format!("the agent at {agent} (is roomy-agent running, and is --agent right?)");
    let channel = if let Some(path) = agent.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        // The URI is a placeholder: the connector below ignores it.
        Endpoint::try_from("http://[::1]:1")
            .map_err(|e| unreachable(&hint, &e))?
            .timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| unreachable(&hint, &e))?
    } else {
        return Err(Failure::Refused(format!(
            "--agent {agent:?} is not unix:///path: talk to remote agents through the controller (--controller)"
        )));
    };
    Ok(AgentClient::new(channel).max_decoding_message_size(roomy_proto::MAX_RESPONSE_BYTES))
}

async fn connect(cli: &Cli, file: &FileSettings) -> Result<Conn, Failure> {
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let controller = pick(&cli.controller, &file.controller);
    // An explicit agent (flag or env) wins over a controller from the file.
    let agent = cli
        .agent
        .clone()
        .or_else(|| controller.is_none().then(|| file.agent.clone()).flatten());
    if let Some(agent) = agent {
        return Ok(Conn::Agent(connect_agent(&agent, timeout).await?));
    }
    let Some(controller) = controller else {
        return Ok(Conn::Agent(connect_agent(DEFAULT_AGENT, timeout).await?));
    };
    let need = |v: Option<PathBuf>, flag: &str| {
        v.ok_or_else(|| {
            Failure::Refused(format!(
                "talking to the controller needs --{flag} (or ROOMY_{}, or {flag} in the config file); `roomyctl certs init` makes them",
                flag.to_uppercase()
            ))
        })
    };
    let files = roomy_tls::TlsFiles {
        cert: need(pick(&cli.cert, &file.cert), "cert")?,
        key: need(pick(&cli.key, &file.key), "key")?,
        ca: need(pick(&cli.ca, &file.ca), "ca")?,
    };
    let config = roomy_tls::client_config(&files).map_err(|e| Failure::Refused(e.to_string()))?;
    let server_name =
        pick(&cli.server_name, &file.server_name).unwrap_or_else(|| "roomy-controller".into());
    // --timeout bounds each call here as on the agent path.
    let channel = roomy_tls::channel_to_any(
        &controller_list(&controller)?,
        &server_name,
        config,
        Duration::from_secs(5).min(timeout),
        Some(timeout),
    )
    .map_err(|e| unreachable(&format!("the controller at {controller}"), &e))?;
    Ok(Conn::Controller(
        ControllerClient::new(channel).max_decoding_message_size(roomy_proto::MAX_RESPONSE_BYTES),
    ))
}

fn man_pages(dir: Option<&std::path::Path>) -> Result<(), Failure> {
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .map_err(|e| Failure::Failed(format!("rendering roomyctl(1): {e}")))?;
        out!("{}", String::from_utf8_lossy(&page));
        return Ok(());
    };
    // generate_to would create files under a path that is not a directory's
    // only to fail halfway; say so before writing anything.
    if !dir.is_dir() {
        return Err(Failure::Refused(format!(
            "{} is not a directory: create it first (mkdir -p {})",
            dir.display(),
            dir.display()
        )));
    }
    clap_mangen::generate_to(Cli::command(), dir).map_err(|e| {
        Failure::Refused(format!(
            "writing man pages to {}: {e}; give a directory you can write to",
            dir.display()
        ))
    })?;
    outln!(
        "wrote roomyctl.1 and a page per subcommand to {}",
        dir.display()
    );
    Ok(())
}

fn fleet_only(what: &str) -> Failure {
    Failure::Refused(format!(
        "`{what}` needs the controller: give --controller (or ROOMY_CONTROLLER) with --cert, --key and --ca"
    ))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "roomyctl", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            return Ok(());
        }
        Command::Man { dir } => return man_pages(dir.as_deref()),
        Command::Certs {
            command: CertsCommand::Init { out, agents, users },
        } => return certs::init(out, agents, users).map_err(Failure::Refused),
        Command::Certs {
            command:
                CertsCommand::Issue {
                    dir,
                    kind,
                    name,
                    not_after,
                },
        } => {
            let kind = match kind {
                IssueKind::Agent => certs::Issue::Agent,
                IssueKind::User => certs::Issue::User,
                IssueKind::Controller => certs::Issue::Controller,
            };
            return certs::issue(dir, kind, name.as_deref(), not_after.as_deref())
                .map_err(Failure::Refused);
        }
        _ => {}
    }
    let file = FileSettings::load(cli.config.as_deref()).map_err(Failure::Refused)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.timeout.max(1));
    let conn = connect(&cli, &file).await?;
    let diagnosis = tls_target(&cli, &file);
    match dispatch(cli, conn).await {
        // A closed connection from the controller may be its TLS refusal of
        // our certificate: ask once more and say so plainly.
        Err(failure @ (Failure::Failed(_) | Failure::Unreachable(_))) if diagnosis.is_some() => {
            let (addr, name, config) = diagnosis.expect("checked");
            // Within what is left of --timeout: a silent server gets no
            // second wait.
            let probe = async move {
                for addr in controller_list(&addr).unwrap_or_default() {
                    if let Some(why) = roomy_tls::diagnose(&addr, &name, config.clone()).await {
                        return Some(why);
                    }
                }
                None
            };
            match tokio::time::timeout_at(deadline, probe).await.ok().flatten() {
                Some(why) if why.contains("alert") => Err(Failure::Refused(format!(
                    "{why}: the controller refused this client's certificate; check that --cert and --key come from the fleet's CA, are not expired, and name a user in the controller's [roles]"
                ))),
                _ => Err(failure),
            }
        }
        other => other,
    }
}

/// `--controller a:7443,b:7443` as a list; an empty entry is a typo.
fn controller_list(value: &str) -> Result<Vec<String>, Failure> {
    let list: Vec<String> = value.split(',').map(|a| a.trim().to_string()).collect();
    if list.iter().any(String::is_empty) {
        return Err(Failure::Refused(format!(
            "--controller {value:?} has an empty address: give HOST:PORT, or several comma-separated (a:7443,b:7443)"
        )));
    }
    Ok(list)
}

/// Controller address, certificate name and client TLS config, when
/// roomyctl talks to a controller.
fn tls_target(
    cli: &Cli,
    file: &FileSettings,
) -> Option<(String, String, std::sync::Arc<rustls::ClientConfig>)> {
    if cli.agent.is_some() {
        return None;
    }
    let addr = pick(&cli.controller, &file.controller)?;
    let files = roomy_tls::TlsFiles {
        cert: pick(&cli.cert, &file.cert)?,
        key: pick(&cli.key, &file.key)?,
        ca: pick(&cli.ca, &file.ca)?,
    };
    let config = roomy_tls::client_config(&files).ok()?;
    let name =
        pick(&cli.server_name, &file.server_name).unwrap_or_else(|| "roomy-controller".into());
    Some((addr, name, config))
}

/// Every container of the fleet (or one host, or the one agent), with the
/// hosts that did not answer; `fresh`: asked of every agent now, not from
/// the controller's kept lists.
async fn containers(
    conn: &mut Conn,
    host: Option<String>,
    fresh: bool,
) -> Result<(Vec<(String, ContainerStorage)>, Vec<HostError>), Failure> {
    Ok(match conn {
        Conn::Agent(c) => {
            let rows = c.inspect(InspectRequest::default()).await?.into_inner();
            let rows = rows.containers.into_iter().map(|c| (String::new(), c));
            (rows.collect(), Vec::new())
        }
        Conn::Controller(c) => {
            let reply = c
                .list_containers(ListContainersRequest {
                    host: host.unwrap_or_default(),
                    fresh,
                })
                .await?
                .into_inner();
            let rows = reply.rows.into_iter();
            let rows = rows.filter_map(|r| r.container.map(|c| (r.host, c)));
            (rows.collect(), reply.errors)
        }
    })
}

/// Every pool, like `containers`.
async fn pools(
    conn: &mut Conn,
    host: Option<String>,
) -> Result<(Vec<(String, PoolStatus)>, Vec<HostError>), Failure> {
    Ok(match conn {
        // A pool that cannot be read is a row of errors, as for a host,
        // not the end of `top`: the containers are still worth showing.
        Conn::Agent(c) => match c.inspect_pool(InspectPoolRequest {}).await {
            Ok(pool) => (vec![(String::new(), pool.into_inner())], Vec::new()),
            Err(status) => {
                let e = HostError {
                    host: String::new(),
                    code: format!("{:?}", status.code()),
                    message: status.message().into(),
                };
                (Vec::new(), vec![e])
            }
        },
        Conn::Controller(c) => {
            let reply = c
                .list_pools(ListContainersRequest {
                    host: host.unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rows = reply.rows.into_iter();
            let rows = rows.filter_map(|r| r.pool.map(|p| (r.host, p)));
            (rows.collect(), reply.errors)
        }
    })
}

/// The controller's policies; an agent alone has none to show (it enforces
/// what its controller sent, and serves no list of them).
async fn policies(conn: &mut Conn) -> Result<Vec<Policy>, Failure> {
    Ok(match conn {
        Conn::Agent(_) => Vec::new(),
        Conn::Controller(c) => {
            c.list_policies(ListPoliciesRequest {})
                .await?
                .into_inner()
                .policies
        }
    })
}

async fn dispatch(cli: Cli, conn: Conn) -> Result<(), Failure> {
    let json = cli.output == Format::Json;
    match (cli.command, conn) {
        (Command::Ls { host: Some(_), .. }, Conn::Agent(_)) => return Err(fleet_only("ls HOST")),
        (Command::Ls { host, sort, fresh }, mut conn) => {
            let (mut rows, errors) = containers(&mut conn, host, fresh).await?;
            if let Some(key) = sort {
                // Only time to full needs the policies (their caps).
                let policies = if key == top::SortKey::Full {
                    policies(&mut conn).await?
                } else {
                    Vec::new()
                };
                top::sort(&mut rows, key, &policies);
            }
            output::print_rows(&rows, &errors, json);
        }
        (Command::Top { host: Some(_), .. }, Conn::Agent(_)) => return Err(fleet_only("top HOST")),
        (
            Command::Top {
                host,
                sort,
                interval,
                once,
            },
            mut conn,
        ) => {
            use std::io::IsTerminal;
            let refresh = !(once || json || !std::io::stdout().is_terminal());
            loop {
                // A live view: every agent's figures of now.
                let (mut rows, errors) = containers(&mut conn, host.clone(), true).await?;
                let (pools, pool_errors) = pools(&mut conn, host.clone()).await?;
                let policies = policies(&mut conn).await?;
                top::sort(&mut rows, sort, &policies);
                if json {
                    output::print_json(&top::top_json(&rows, &pools, &policies, &errors));
                    break;
                }
                let mut screen = String::new();
                if refresh {
                    // Home and clear, as top(1) redraws.
                    screen.push_str("\x1b[H\x1b[2J");
                    screen.push_str(&format!(
                        "roomyctl top: {} containers, {} pools, every {interval}s (Ctrl-C ends)\n\n",
                        rows.len(),
                        pools.len()
                    ));
                }
                screen.push_str(&top::container_table(&rows, &policies));
                if !pools.is_empty() {
                    screen.push('\n');
                    screen.push_str(&top::pool_table(&pools, &policies));
                }
                let mut unanswered: Vec<&HostError> = errors.iter().collect();
                unanswered.extend(
                    pool_errors
                        .iter()
                        .filter(|p| !errors.iter().any(|e| e.host == p.host)),
                );
                for e in unanswered {
                    let line = if e.host.is_empty() {
                        format!("the agent's pool could not be read: {}", e.message)
                    } else {
                        format!("host {} did not answer: {}", e.host, e.message)
                    };
                    if refresh {
                        screen.push_str(&format!("{line}\n"));
                    } else {
                        eprintln!("roomyctl: {line}");
                    }
                }
                out!("{screen}");
                if !refresh {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(interval)).await;
            }
        }
        (Command::Inspect { target }, conn) => {
            let rows = match conn {
                Conn::Agent(mut c) => {
                    c.inspect(InspectRequest { container: target })
                        .await?
                        .into_inner()
                        .containers
                }
                Conn::Controller(mut c) => c
                    .inspect_container(TargetRequest { target })
                    .await?
                    .into_inner()
                    .container
                    .into_iter()
                    .collect(),
            };
            for row in &rows {
                if json {
                    output::print_json(&output::storage_json(row));
                } else {
                    out!("{}", output::details(row));
                }
            }
        }
        (Command::Resize { target, size }, conn) => {
            let reply = match conn {
                Conn::Agent(mut c) => {
                    c.resize(ResizeRequest {
                        container: target,
                        size,
                    })
                    .await?
                }
                Conn::Controller(mut c) => c.resize(TargetResizeRequest { target, size }).await?,
            }
            .into_inner();
            if json {
                output::print_json(&output::resize_json(&reply));
            } else {
                outln!("{}", reply.message);
            }
        }
        (Command::Repair { target }, conn) => {
            let reply = match conn {
                Conn::Agent(mut c) => c.repair(RepairRequest { container: target }).await?,
                Conn::Controller(mut c) => c.repair(TargetRequest { target }).await?,
            }
            .into_inner();
            if json {
                output::print_json(&output::repair_json(&reply));
            } else {
                outln!("{}", reply.message);
            }
        }
        (Command::Pool { command }, conn) => match (command, conn) {
            (PoolCommand::Ls { host: None }, Conn::Agent(mut c)) => {
                let pool = c.inspect_pool(InspectPoolRequest {}).await?.into_inner();
                output::print_pools(&[(String::new(), pool)], &[], json);
            }
            (PoolCommand::Ls { host }, Conn::Controller(mut c)) => {
                let reply = c
                    .list_pools(ListContainersRequest {
                        host: host.unwrap_or_default(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let rows: Vec<_> = reply
                    .rows
                    .into_iter()
                    .filter_map(|r| r.pool.map(|p| (r.host, p)))
                    .collect();
                output::print_pools(&rows, &reply.errors, json);
            }
            (PoolCommand::Grow { data, metadata, .. }, _)
                if data.is_none() && metadata.is_none() =>
            {
                return Err(Failure::Refused(
                    "pool grow needs --data SIZE and/or --metadata SIZE, e.g. --data +4G".into(),
                ));
            }
            (
                PoolCommand::Grow {
                    host: None,
                    data,
                    metadata,
                },
                Conn::Agent(mut c),
            ) => {
                let reply = c
                    .grow_pool(GrowPoolRequest {
                        data_size: data.unwrap_or_default(),
                        metadata_size: metadata.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                output::print_grow_pool(&reply, json);
            }
            (
                PoolCommand::Grow {
                    host: Some(host),
                    data,
                    metadata,
                },
                Conn::Controller(mut c),
            ) => {
                let reply = c
                    .grow_pool(HostGrowPoolRequest {
                        host,
                        data_size: data.unwrap_or_default(),
                        metadata_size: metadata.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                output::print_grow_pool(&reply, json);
            }
            (
                PoolCommand::Ls { host: Some(_) } | PoolCommand::Grow { host: Some(_), .. },
                Conn::Agent(_),
            ) => return Err(fleet_only("pool ... HOST")),
            (PoolCommand::Grow { host: None, .. }, Conn::Controller(_)) => {
                return Err(Failure::Refused(
                    "pool grow needs the HOST: roomyctl pool grow host1 --data +4G".into(),
                ))
            }
        },
        (Command::Hosts { command }, Conn::Controller(mut c)) => match command {
            HostsCommand::Ls => {
                let hosts = c.list_hosts(ListHostsRequest {}).await?.into_inner().hosts;
                output::print_hosts(&hosts, json);
            }
            HostsCommand::Add {
                name,
                address,
                agent_name,
            } => {
                let host = c
                    .add_host(AddHostRequest {
                        name,
                        address,
                        server_name: agent_name.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                outln!("added {} at {}", host.name, host.address);
            }
            HostsCommand::Rm { name } => {
                outln!(
                    "{}",
                    c.remove_host(RemoveHostRequest { name })
                        .await?
                        .into_inner()
                        .message
                );
            }
        },
        (Command::Audit { limit }, Conn::Controller(mut c)) => {
            let entries = c
                .list_audit(ListAuditRequest { limit })
                .await?
                .into_inner()
                .entries;
            output::print_audit(&entries, json);
        }
        (Command::Policy { command }, Conn::Controller(mut c)) => match command {
            PolicyCommand::Set(args) => {
                // Parsed and checked here too, so a typo is refused before
                // anything is sent; the controller checks again.
                let policy = args
                    .spec()
                    .to_policy()
                    .map_err(|e| Failure::Refused(e.to_string()))?;
                let reply = c.set_policy(policy).await?.into_inner();
                output::print_set_policy(&reply, json);
            }
            PolicyCommand::Ls => {
                let policies = c
                    .list_policies(ListPoliciesRequest {})
                    .await?
                    .into_inner()
                    .policies;
                output::print_policies(&policies, json);
            }
            PolicyCommand::Rm { name } => {
                let reply = c.remove_policy(RemovePolicyRequest { name }).await?;
                outln!("{}", reply.into_inner().message);
            }
            PolicyCommand::Explain { target } => {
                let reply = c
                    .explain_policy(TargetRequest { target })
                    .await?
                    .into_inner();
                output::print_explanation(&reply, json);
            }
        },
        (
            Command::Events {
                limit,
                follow,
                host,
            },
            Conn::Controller(mut c),
        ) => {
            let mut stream = c
                .events(EventsRequest {
                    limit,
                    follow,
                    host: host.unwrap_or_default(),
                })
                .await?
                .into_inner();
            while let Some(event) = stream.message().await? {
                output::print_event(&event, json);
            }
        }
        (Command::Policy { .. }, Conn::Agent(_)) => return Err(fleet_only("policy")),
        (Command::Events { .. }, Conn::Agent(_)) => return Err(fleet_only("events")),
        (Command::Hosts { .. }, Conn::Agent(_)) => return Err(fleet_only("hosts")),
        (Command::Audit { .. }, Conn::Agent(_)) => return Err(fleet_only("audit")),
        (Command::Certs { .. } | Command::Completions { .. } | Command::Man { .. }, _) => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("roomyctl: refused: {m}");
            ExitCode::from(3)
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("roomyctl: {m}");
            ExitCode::from(4)
        }
        Err(Failure::Failed(m)) => {
            eprintln!("roomyctl: failed: {m}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (duplicate flags and the like), which
    /// release builds skip.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Each status becomes the failure (and so the exit code) a script
    /// can act on.
    #[test]
    fn statuses_map_to_failures() {
        use tonic::Status;
        let cases = [
            (Status::invalid_argument("size"), "refused"),
            (Status::permission_denied("role"), "refused"),
            (Status::failed_precondition("pool"), "refused"),
            (Status::unavailable("store unavailable"), "unreachable"),
            (Status::deadline_exceeded("slow"), "unreachable"),
            (
                Status::unknown("h2 protocol error: transport error"),
                "unreachable",
            ),
            (Status::unknown("something else"), "failed"),
            (Status::internal("bug"), "failed"),
        ];
        for (status, want) in cases {
            let got = match Failure::from(status.clone()) {
                Failure::Refused(_) => "refused",
                Failure::Unreachable(_) => "unreachable",
                Failure::Failed(_) => "failed",
            };
            assert_eq!(got, want, "{status:?}");
        }
        // A broken connection mid-request says what to do next, whichever
        // end went away.
        let Failure::Unreachable(text) = Failure::from(Status::unknown("transport error")) else {
            panic!("not unreachable");
        };
        assert!(
            text.contains("the agent or the controller went away"),
            "{text}"
        );
        assert!(text.contains("roomyctl inspect"), "{text}");
    }
}
