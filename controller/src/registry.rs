//! The host registry: which agents exist (durable, in the store), how each
//! last answered (in memory), and one lazily-connected mTLS channel per
//! agent. Fan-out asks every agent at once, each within the deadline, and
//! turns a slow or dead host into an error row, never a hang.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use roomy_proto::v1::agent_client::AgentClient;
use roomy_proto::v1::{Host, HostState};
use tonic::transport::Channel;

use crate::clock::now_s;
use crate::error::ControllerError;
use crate::store::{HostRecord, Store};

/// How to reach agents.
pub trait Connector: Send + Sync + 'static {
    /// A (lazy) channel to the agent at `address` whose certificate
    /// carries `server_name`.
    fn channel(&self, server_name: &str, address: &str) -> Result<Channel, ControllerError>;
}

/// mTLS to agents: the agent's certificate must carry the host's name.
pub struct TlsConnector {
    /// Client config with the controller's certificate.
    pub config: Arc<rustls::ClientConfig>,
    /// Connect timeout.
    pub timeout: Duration,
}

impl Connector for TlsConnector {
    fn channel(&self, server_name: &str, address: &str) -> Result<Channel, ControllerError> {
        roomy_tls::channel(address, server_name, self.config.clone(), self.timeout)
            .map_err(|e| ControllerError::Invalid(format!("agent {server_name} at {address}: {e}")))
    }
}

#[derive(Clone)]
struct Entry {
    record: HostRecord,
    client: AgentClient<Channel>,
    state: HostState,
    unreachable_since: i64,
    last_error: String,
    last_seen: i64,
}

/// Hosts and their agents.
pub struct Registry {
    store: Arc<dyn Store>,
    connector: Box<dyn Connector>,
    hosts: RwLock<BTreeMap<String, Entry>>,
    /// Held by each change and by a re-read of the store, so a re-read
    /// that started before a change cannot undo it.
    changing: std::sync::Mutex<()>,
    /// Per-host deadline.
    pub deadline: Duration,
}

impl Registry {
    /// Load hosts from the store.
    pub fn new(
        store: Arc<dyn Store>,
        connector: Box<dyn Connector>,
        deadline: Duration,
    ) -> Result<Self, ControllerError> {
        let registry = Registry {
            store,
            connector,
            hosts: RwLock::new(BTreeMap::new()),
            changing: std::sync::Mutex::new(()),
            deadline,
        };
        for record in registry.store.hosts()? {
            registry.insert(record)?;
        }
        Ok(registry)
    }

    /// Take in what another controller changed in the shared store: new
    /// and re-addressed hosts get fresh entries, removed ones go, unchanged
    /// ones keep their state.
    pub fn sync_from_store(&self) -> Result<(), ControllerError> {
        let _changing = self.changing.lock().expect("registry poisoned");
        let records = self.store.hosts()?;
        let stale: Vec<HostRecord> = {
            let hosts = self.hosts.read().expect("registry poisoned");
            records
                .iter()
                .filter(|r| hosts.get(&r.name).is_none_or(|e| e.record != **r))
                .cloned()
                .collect()
        };
        for record in stale {
            self.insert(record)?;
        }
        let names: std::collections::HashSet<&str> =
            records.iter().map(|r| r.name.as_str()).collect();
        self.hosts
            .write()
            .expect("registry poisoned")
            .retain(|name, _| names.contains(name.as_str()));
        Ok(())
    }

    /// A fresh entry for `record`: its channel is built here, so a bad
    /// address fails before anything is stored.
    fn entry(&self, record: HostRecord) -> Result<Entry, ControllerError> {
        let client = AgentClient::new(
            self.connector
                .channel(&record.server_name, &record.address)?,
        )
        .max_decoding_message_size(roomy_proto::MAX_RESPONSE_BYTES);
        Ok(Entry {
            record,
            client,
            state: HostState::Unknown,
            unreachable_since: 0,
            last_error: String::new(),
            last_seen: 0,
        })
    }

    fn insert(&self, record: HostRecord) -> Result<(), ControllerError> {
        let entry = self.entry(record)?;
        self.hosts
            .write()
            .expect("registry poisoned")
            .insert(entry.record.name.clone(), entry);
        Ok(())
    }

    /// Add or re-address a host, durably.
    pub fn add(
        &self,
        name: &str,
        address: &str,
        server_name: &str,
        source: &str,
    ) -> Result<(), ControllerError> {
        if !roomy_proto::valid_host_name(name) {
            return Err(ControllerError::Invalid(format!(
                "{name:?} is not a host name: use letters, digits, '-', '.', '_'"
            )));
        }
        if address
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(ControllerError::Invalid(format!(
                "address {address:?} is not HOST:PORT, e.g. 10.0.0.2:7444"
            )));
        }
        let server_name = if server_name.is_empty() {
            name
        } else {
            server_name
        };
        let record = HostRecord {
            name: name.to_string(),
            address: address.to_string(),
            source: source.to_string(),
            server_name: server_name.to_string(),
        };
        // Build the channel first: a bad address changes nothing.
        let entry = self.entry(record)?;
        let _changing = self.changing.lock().expect("registry poisoned");
        self.store.put_host(&entry.record)?;
        self.hosts
            .write()
            .expect("registry poisoned")
            .insert(name.to_string(), entry);
        Ok(())
    }

    /// Forget a host, durably. Returns its record.
    pub fn remove(&self, name: &str) -> Result<HostRecord, ControllerError> {
        let _changing = self.changing.lock().expect("registry poisoned");
        let record = self
            .hosts
            .read()
            .expect("registry poisoned")
            .get(name)
            .map(|e| e.record.clone())
            .ok_or_else(|| ControllerError::UnknownHost(name.to_string()))?;
        self.store.remove_host(name)?;
        self.hosts.write().expect("registry poisoned").remove(name);
        Ok(record)
    }

    /// The client for one host.
    pub fn client(&self, name: &str) -> Result<AgentClient<Channel>, ControllerError> {
        self.hosts
            .read()
            .expect("registry poisoned")
            .get(name)
            .map(|e| e.client.clone())
            .ok_or_else(|| ControllerError::UnknownHost(name.to_string()))
    }

    /// Host names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.hosts
            .read()
            .expect("registry poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Record how a call to `name` went: unreachable on transport errors
    /// and deadlines, up on any answer from the agent.
    pub fn observe(&self, name: &str, outcome: Result<(), &tonic::Status>) {
        let mut hosts = self.hosts.write().expect("registry poisoned");
        let Some(entry) = hosts.get_mut(name) else {
            return;
        };
        match outcome {
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                if entry.state != HostState::Unreachable {
                    entry.unreachable_since = now_s();
                }
                entry.state = HostState::Unreachable;
                entry.last_error = status.message().to_string();
            }
            _ => {
                entry.state = HostState::Up;
                entry.unreachable_since = 0;
                entry.last_seen = now_s();
            }
        }
    }

    /// Every host as the wire shows it.
    pub fn list(&self) -> Vec<Host> {
        self.hosts
            .read()
            .expect("registry poisoned")
            .values()
            .map(|e| Host {
                name: e.record.name.clone(),
                address: e.record.address.clone(),
                state: e.state as i32,
                unreachable_since: e.unreachable_since,
                last_error: e.last_error.clone(),
                last_seen: e.last_seen,
                source: e.record.source.clone(),
                server_name: e.record.server_name.clone(),
            })
            .collect()
    }

    /// Call `f` on every host in `names` at once, each bounded by the
    /// deadline; results in the order of `names`.
    pub async fn fan_out<T, F, Fut>(
        &self,
        names: &[String],
        f: F,
    ) -> Vec<(String, Result<T, tonic::Status>)>
    where
        F: Fn(AgentClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let calls = names.iter().map(|name| {
            let client = self.client(name);
            let call = client.map(&f);
            async move {
                let result = match call {
                    Ok(fut) => match tokio::time::timeout(self.deadline, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                            "no answer within {} ms",
                            self.deadline.as_millis()
                        ))),
                    },
                    Err(e) => Err(tonic::Status::from(e)),
                };
                self.observe(name, result.as_ref().map(|_| ()));
                (name.clone(), result)
            }
        });
        join_all(calls).await
    }
}
