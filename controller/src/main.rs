//! roomy-controller binary: config, store, registry, the mTLS listener.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use roomy_controller::config::{Config, StoreChoice};
use roomy_controller::distribute::Distributor;
use roomy_controller::inventory::Inventory;
use roomy_controller::leader::Leadership;
use roomy_controller::metrics::ControllerMetrics;
use roomy_controller::registry::{Registry, TlsConnector};
use roomy_controller::roles::Roles;
use roomy_controller::service::ControllerService;
use roomy_controller::store::{EtcdStore, HostRecord, SqliteStore, Store};
use roomy_controller::webhook::Webhooks;
use roomy_proto::v1::controller_server::ControllerServer;
use roomy_tls::{ClientRule, ServerTls, TlsFiles};

/// The fleet controller. Serves roomyctl over mutual TLS.
#[derive(Parser, Debug)]
#[command(name = "roomy-controller", version)]
struct Args {
    /// Print this man page (roff, section 8) on stdout and exit; the
    /// Debian package installs it as roomy-controller(8).
    #[arg(long)]
    man: bool,
    /// Config file (TOML); see deploy/controller.example.toml.
    #[arg(
        long,
        env = "ROOMY_CONTROLLER_CONFIG",
        default_value = "/etc/roomy/controller.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Copy a SQLite store (hosts, policies, audit, events) into the etcd
    /// store of --config's [etcd] section, then exit; run it once, with
    /// the old controller stopped, before starting controllers on etcd.
    Migrate {
        /// The SQLite file (the old config's `store`).
        #[arg(long)]
        from: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    roomy_daemon::init_logging();
    let args = Args::parse();
    if args.man {
        return Ok(roomy_daemon::print_man_page(Args::command())?);
    }
    let config = Config::load(&args.config)?;
    if let Some(Command::Migrate { from }) = &args.command {
        return migrate(from, &config);
    }
    let roles = Roles::from_pairs(&config.roles)?;
    let mut etcd_store = None;
    let (store, leadership): (Arc<dyn Store>, Leadership) = match config.store() {
        StoreChoice::Sqlite(path) => (Arc::new(SqliteStore::open(&path)?), Leadership::always()),
        StoreChoice::Etcd(options) => {
            let etcd = Arc::new(EtcdStore::open(&options)?);
            etcd_store = Some(etcd.clone());
            // Named for the logs and the election's value.
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let id = format!("{}@{}", host.trim(), config.listen);
            let leadership = etcd.campaign(id, options.lease_ttl);
            (etcd, leadership)
        }
    };
    // Hosts in the config file are (re)registered at every start.
    for h in &config.hosts {
        store.put_host(&HostRecord {
            name: h.name.clone(),
            address: h.address.clone(),
            source: "config".into(),
            server_name: h.server_name.clone().unwrap_or_else(|| h.name.clone()),
        })?;
    }
    let files = TlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        ca: config.tls.ca.clone(),
    };
    let client_config = roomy_tls::client_config(&files).context("controller TLS client config")?;
    let deadline = Duration::from_millis(config.agent_timeout_ms.max(1));
    let registry = Arc::new(Registry::new(
        store.clone(),
        Box::new(TlsConnector {
            config: client_config,
            timeout: deadline,
        }),
        deadline,
    )?);

    // Policies in the config file are (re)written at every start; config
    // policies dropped from the file are dropped from the store.
    let in_file: Vec<String> = config.policies.iter().map(|p| p.name.clone()).collect();
    for old in store.policies()? {
        if old.source == "config" && !in_file.contains(&old.name) {
            store.remove_policy(&old.name)?;
        }
    }
    for spec in &config.policies {
        let mut policy = spec.to_policy()?;
        policy.source = "config".into();
        policy.updated_by = args.config.display().to_string();
        store.put_policy(&policy)?;
    }

    let webhooks = Webhooks::start(config.webhooks.clone(), store.clone(), leadership.clone())
        .context("[[webhooks]]")?;
    let metrics = Arc::new(ControllerMetrics::default());
    let distributor = Distributor::new(
        registry.clone(),
        store.clone(),
        webhooks.clone(),
        metrics.clone(),
        leadership.clone(),
    )?;
    distributor.spawn();
    // Every controller, leading or not, answers `ls` from the agents' lists.
    let inventory = Inventory::new(registry.clone(), Default::default());
    inventory.spawn();
    if let Some(etcd) = &etcd_store {
        etcd.watch_events(distributor.event_sender());
    }
    roomy_controller::retention::spawn(
        store.clone(),
        leadership,
        config.retention,
        metrics.clone(),
    );
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind metrics on {addr}"))?;
        let render = roomy_controller::metrics::renderer(
            metrics.clone(),
            registry.clone(),
            distributor.clone(),
            inventory.clone(),
            webhooks.clone(),
        );
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        tokio::spawn(async move {
            if let Err(e) = roomy_metrics::serve(listener, render, shutdown()).await {
                tracing::error!("metrics endpoint stopped: {e}");
            }
        });
    }

    let server_tls =
        ServerTls::load(files, ClientRule::any()).context("controller TLS server config")?;
    server_tls.spawn_reloader(Duration::from_secs(2));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ControllerServer<ControllerService>>()
        .await;

    tracing::info!(listen = %config.listen, hosts = registry.names().len(), "roomy-controller ready");
    roomy_daemon::grpc::with_reflection(
        tonic::transport::Server::builder().add_service(health),
        roomy_proto::v1::controller_server::SERVICE_NAME,
    )?
    .add_service(ControllerServer::new(ControllerService::new(
        registry,
        store,
        distributor,
        inventory,
        metrics,
        roles,
        Duration::from_millis(config.agent_call_timeout_ms.max(1)),
    )))
    .serve_with_incoming_shutdown(server_tls.incoming(listener), shutdown())
    .await?;
    Ok(())
}

fn migrate(from: &std::path::Path, config: &Config) -> anyhow::Result<()> {
    let StoreChoice::Etcd(options) = config.store() else {
        anyhow::bail!(
            "migrate copies into etcd, and this config's store is a SQLite file: give --config a file with an [etcd] section"
        );
    };
    anyhow::ensure!(
        from.is_file(),
        "{} is not a file: give the SQLite store (the old config's store =)",
        from.display()
    );
    let source = SqliteStore::open(from)?;
    let target = EtcdStore::open(&options)?;
    let copied = roomy_controller::store::copy(&source, &target)?;
    println!(
        "copied {} hosts, {} policies, {} audit entries and {} events from {} into etcd at {} under {}",
        copied.hosts,
        copied.policies,
        copied.audit,
        copied.events,
        from.display(),
        options.endpoints.join(","),
        options.prefix
    );
    Ok(())
}

async fn shutdown() {
    roomy_daemon::signal::shutdown().await;
    tracing::info!("shutting down");
}
