//! roomyctl: inspect and grow Docker containers' disks.
//!
//! Today it talks to one agent over its Unix socket (single host, no
//! certificates). Exit codes: 0 done, 1 failed, 2 usage error, 3 refused
//! (bad size, shrink, unknown container, pool too full), 4 agent unreachable.

mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use roomy_proto::v1::agent_client::AgentClient;
use roomy_proto::v1::{InspectRequest, RepairRequest, ResizeRequest};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

/// Inspect and grow Docker containers' disks, online.
#[derive(Parser, Debug)]
#[command(name = "roomyctl", version, propagate_version = true)]
struct Cli {
    /// The agent to talk to: unix:///path/to/agent.sock or http://host:port.
    #[arg(
        long,
        global = true,
        env = "ROOMY_AGENT",
        default_value = "unix:///run/roomy/agent.sock"
    )]
    agent: String,

    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table, env = "ROOMY_OUTPUT")]
    output: Format,

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
    /// One row per container: size, use, health.
    Ls,
    /// Everything the agent knows about one container's disk.
    Inspect {
        /// Container name or id.
        container: String,
    },
    /// Grow a container's disk, running or stopped: `resize node 16G`, `resize node +4G`.
    Resize {
        /// Container name or id.
        container: String,
        /// New size (16G) or growth (+4G); K, M, G, T are powers of 1024.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Make an `at_risk` container (grown by hand with dmsetup) startable again.
    Repair {
        /// Container name or id.
        container: String,
    },
}

/// How roomyctl ends.
enum Failure {
    Refused(String),
    Unreachable(String),
    Failed(String),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated => Failure::Refused(message),
            Code::Unavailable | Code::DeadlineExceeded => Failure::Unreachable(message),
            // The connection broke mid-request: the agent may have died
            // half-way; it finishes interrupted resizes when it restarts.
            Code::Unknown if message.contains("transport error") => Failure::Unreachable(format!(
                "lost the connection to the agent during the request ({message}); a resize it had started is finished when the agent restarts: check with `roomyctl inspect`"
            )),
            _ => Failure::Failed(message),
        }
    }
}

async fn connect(agent: &str) -> Result<AgentClient<Channel>, Failure> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Failure::Unreachable(format!(
            "cannot reach the agent at {agent}: {e}; is roomy-agent running, and is --agent right?"
        ))
    };
    let channel = if let Some(path) = agent.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        // The URI is a placeholder: the connector below ignores it.
        Endpoint::try_from("http://[::1]:1")
            .map_err(|e| unreachable(&e))?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| unreachable(&e))?
    } else {
        Endpoint::try_from(agent.to_string())
            .map_err(|e| unreachable(&e))?
            .connect()
            .await
            .map_err(|e| unreachable(&e))?
    };
    Ok(AgentClient::new(channel))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let mut client = connect(&cli.agent).await?;
    let json = cli.output == Format::Json;
    match cli.command {
        Command::Ls => {
            let rows = client
                .inspect(InspectRequest::default())
                .await?
                .into_inner()
                .containers;
            if json {
                output::print_json(&serde_json::Value::Array(
                    rows.iter().map(output::storage_json).collect(),
                ));
            } else {
                print!("{}", output::table(&rows));
            }
        }
        Command::Inspect { container } => {
            let rows = client
                .inspect(InspectRequest { container })
                .await?
                .into_inner()
                .containers;
            for row in &rows {
                if json {
                    output::print_json(&output::storage_json(row));
                } else {
                    print!("{}", output::details(row));
                }
            }
        }
        Command::Resize { container, size } => {
            let reply = client
                .resize(ResizeRequest { container, size })
                .await?
                .into_inner();
            if json {
                output::print_json(&output::resize_json(&reply));
            } else {
                println!("{}", reply.message);
            }
        }
        Command::Repair { container } => {
            let reply = client
                .repair(RepairRequest { container })
                .await?
                .into_inner();
            if json {
                output::print_json(&output::repair_json(&reply));
            } else {
                println!("{}", reply.message);
            }
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
