//! The controller's config file (TOML).
//!
//! ```toml
//! listen = "0.0.0.0:7443"
//! store = "/var/lib/roomy/controller.db"   # or, for several controllers:
//! # [etcd]
//! # endpoints = ["https://10.0.0.5:2379", "https://10.0.0.6:2379", "https://10.0.0.7:2379"]
//! # ca = "/etc/roomy/etcd-ca.pem"
//! # cert = "/etc/roomy/etcd-client.pem"
//! # key = "/etc/roomy/etcd-client.key"
//! agent_timeout_ms = 2000
//! agent_call_timeout_ms = 120000
//! [tls]
//! cert = "/etc/roomy/controller.pem"
//! key = "/etc/roomy/controller.key"
//! ca = "/etc/roomy/ca.pem"
//! [roles]
//! alice = "admin"
//! [[hosts]]
//! name = "host1"
//! address = "10.0.0.2:7444"
//! [[policies]]
//! name = "grow80"
//! containers = "web-*"
//! at = "80%"
//! grow = "50%"
//! max = "50G"
//! [[webhooks]]
//! url = "https://chat.example.com/hooks/roomy"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ControllerError;
use crate::store::{EtcdOptions, EtcdTls};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address for roomyctl (mutual TLS).
    pub listen: std::net::SocketAddr,
    /// SQLite file (one controller); exclusive with `[etcd]`.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// etcd (several controllers); exclusive with `store`.
    #[serde(default)]
    pub etcd: Option<EtcdSection>,
    /// Per-host deadline for fan-out reads (ls) and for connecting.
    #[serde(default = "default_timeout")]
    pub agent_timeout_ms: u64,
    /// Bound on one routed call (resize, repair, inspect).
    #[serde(default = "default_call_timeout")]
    pub agent_call_timeout_ms: u64,
    /// Certificate, key and CA, PEM.
    pub tls: TlsSection,
    /// Identity → role word.
    #[serde(default)]
    pub roles: HashMap<String, String>,
    /// Hosts known from the file.
    #[serde(default)]
    pub hosts: Vec<HostSection>,
    /// Policies from the file (source "config"): written to the store at
    /// every start; `roomyctl policy set|rm` leaves them alone.
    #[serde(default)]
    pub policies: Vec<roomy_policy::PolicySpec>,
    /// Where policy events are POSTed.
    #[serde(default)]
    pub webhooks: Vec<crate::webhook::WebhookConfig>,
    /// How long events and audit entries are kept.
    #[serde(default)]
    pub retention: crate::retention::Retention,
    /// Serve Prometheus metrics over plain HTTP here (e.g. 0.0.0.0:9788).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn default_timeout() -> u64 {
    2000
}

fn default_call_timeout() -> u64 {
    120_000
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The controller's certificate (server to roomyctl, client to agents).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The fleet's CA.
    pub ca: PathBuf,
}

/// `[etcd]`: the store on an etcd cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs of the members, all `https://` (with ca, cert and key)
    /// or all `http://`.
    pub endpoints: Vec<String>,
    /// Key prefix, so several fleets (or other users) can share a cluster.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// Deadline of one store call; a call to an etcd without a quorum
    /// fails after it.
    #[serde(default = "default_etcd_timeout")]
    pub timeout_ms: u64,
    /// The leader's lease, whole seconds: a leader that died or lost etcd
    /// is replaced about this long after.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_s: u64,
    /// CA of etcd's server certificates (PEM).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The controller's client certificate for etcd (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_etcd_prefix() -> String {
    "/roomy/".into()
}

fn default_etcd_timeout() -> u64 {
    5000
}

fn default_lease_ttl() -> u64 {
    3
}

/// Where the controller keeps its state, checked.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// One SQLite file.
    Sqlite(PathBuf),
    /// An etcd cluster.
    Etcd(EtcdOptions),
}

impl EtcdSection {
    fn options(&self) -> Result<EtcdOptions, String> {
        if self.endpoints.is_empty() {
            return Err("[etcd] endpoints is empty: list the members' client URLs, e.g. [\"https://10.0.0.5:2379\"]".into());
        }
        let mut schemes = std::collections::BTreeSet::new();
        for e in &self.endpoints {
            let url = url::Url::parse(e).map_err(|err| {
                format!("[etcd] endpoint {e:?}: {err}: write it as https://HOST:PORT")
            })?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host().is_none()
                || url.port().is_none()
            {
                return Err(format!("[etcd] endpoint {e:?} is not http(s)://HOST:PORT (etcd's client URL, e.g. https://10.0.0.5:2379)"));
            }
            schemes.insert(url.scheme().to_string());
        }
        let files = [&self.ca, &self.cert, &self.key];
        let tls = match (schemes.len(), schemes.contains("https")) {
            (2, _) => return Err("[etcd] endpoints mix http:// and https://: use one scheme for all members".into()),
            (_, true) => match (&self.ca, &self.cert, &self.key) {
                (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => return Err("[etcd] https:// endpoints need ca, cert and key (the controller's client certificate for etcd)".into()),
            },
            (_, false) if files.iter().any(|f| f.is_some()) => {
                return Err("[etcd] has ca/cert/key but the endpoints are http://: write them as https:// to use TLS".into())
            }
            _ => None,
        };
        if !self.prefix.starts_with('/') || self.prefix.chars().any(char::is_whitespace) {
            return Err(format!(
                "[etcd] prefix {:?} must start with / and have no spaces, e.g. \"/roomy/\"",
                self.prefix
            ));
        }
        let mut prefix = self.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(EtcdOptions {
            endpoints: self.endpoints.clone(),
            prefix,
            tls,
            timeout: std::time::Duration::from_millis(self.timeout_ms.max(100)),
            lease_ttl: std::time::Duration::from_secs(self.lease_ttl_s.clamp(2, 60)),
        })
    }
}

/// `[[hosts]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Host name (its agent's certificate name).
    pub name: String,
    /// host:port of the agent.
    pub address: String,
    /// Name the agent's certificate carries, when not `name`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl Config {
    /// Read and check the file.
    pub fn load(path: &Path) -> Result<Config, ControllerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ControllerError::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ControllerError::Config(format!("{}: {e}", path.display())))
    }

    /// Which store, checked at parse.
    pub fn store(&self) -> StoreChoice {
        match (&self.store, &self.etcd) {
            (Some(path), None) => StoreChoice::Sqlite(path.clone()),
            (None, Some(etcd)) => StoreChoice::Etcd(etcd.options().expect("checked by parse")),
            _ => unreachable!("parse refuses both and neither"),
        }
    }

    /// Parse config text; relative paths stay relative to the working dir.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        match (&config.store, &config.etcd) {
            (Some(_), Some(_)) => return Err("both store = and [etcd] are set: choose one (store = a SQLite file, for one controller; [etcd] for several)".into()),
            (None, None) => return Err("no store: set store = \"/var/lib/roomy-controller/controller.db\" (one controller) or an [etcd] section (several)".into()),
            (None, Some(etcd)) => {
                etcd.options()?;
            }
            (Some(_), None) => {}
        }
        for h in &config.hosts {
            if !roomy_proto::valid_host_name(&h.name) {
                return Err(format!("[[hosts]] name {:?} is not a host name", h.name));
            }
        }
        let mut names = std::collections::HashSet::new();
        for p in &config.policies {
            p.to_policy().map_err(|e| format!("[[policies]] {e}"))?;
            if !names.insert(&p.name) {
                return Err(format!("[[policies]] name {:?} appears twice", p.name));
            }
        }
        for w in &config.webhooks {
            w.validate().map_err(|e| e.to_string())?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_refuses_typos() {
        let text = "listen = \"127.0.0.1:7443\"\nstore = \"/tmp/x.db\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n[roles]\nalice = \"admin\"\n[[hosts]]\nname = \"host1\"\naddress = \"10.0.0.2:7444\"\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.agent_timeout_ms, 2000);
        assert_eq!(c.hosts[0].name, "host1");
        assert_eq!(c.roles["alice"], "admin");
        assert!(Config::parse(&text.replace("listen", "listne"))
            .unwrap_err()
            .contains("listne"));
        assert!(Config::parse(&text.replace("host1", "host 1")).is_err());
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = Config::parse(include_str!("../../deploy/config/controller.example.toml")).unwrap();
        assert_eq!(c.policies.len(), 2);
        assert_eq!(c.webhooks.len(), 1);
        assert!(c.metrics_listen.is_some());
    }

    #[test]
    fn policies_in_the_file_are_checked_at_load() {
        let base = "listen = \"127.0.0.1:7443\"\nstore = \"/tmp/x.db\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n";
        let good = format!(
            "{base}[[policies]]\nname = \"grow80\"\nat = \"80%\"\ngrow = \"50%\"\nmax = \"4G\"\n"
        );
        let c = Config::parse(&good).unwrap();
        assert_eq!(c.policies[0].to_policy().unwrap().max_bytes, 4 << 30);
        let err = Config::parse(&good.replace("80%", "180%")).unwrap_err();
        assert!(
            err.contains("[[policies]]") && err.contains("at most 100"),
            "{err}"
        );
        let err = Config::parse(&good.replace("grow =", "grwo =")).unwrap_err();
        assert!(err.contains("grwo"), "{err}");
    }

    #[test]
    fn an_etcd_store_is_checked_at_load() {
        let base = "listen = \"127.0.0.1:7443\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n";
        let etcd = |body: &str| Config::parse(&format!("{base}[etcd]\n{body}"));
        let tls = "ca = \"a\"\ncert = \"c\"\nkey = \"k\"\n";
        let c = etcd(&format!(
            "endpoints = [\"https://10.0.0.5:2379\", \"https://10.0.0.6:2379\"]\nprefix = \"/fleet1\"\n{tls}"
        ))
        .unwrap();
        let StoreChoice::Etcd(o) = c.store() else {
            panic!("not etcd");
        };
        assert_eq!(o.prefix, "/fleet1/");
        assert_eq!(o.endpoints.len(), 2);
        assert!(o.tls.is_some());
        assert_eq!(o.timeout.as_millis(), 5000);
        assert_eq!(o.lease_ttl.as_secs(), 3);
        for (body, says) in [
            ("endpoints = []\n", "endpoints is empty"),
            ("endpoints = [\"10.0.0.5:2379\"]\n", "10.0.0.5:2379"),
            (
                "endpoints = [\"https://10.0.0.5:2379\"]\n",
                "need ca, cert and key",
            ),
            (
                "endpoints = [\"http://10.0.0.5:2379\"]\nca = \"a\"\n",
                "write them as https://",
            ),
            (
                "endpoints = [\"http://a:1\", \"https://b:2\"]\n",
                "mix http:// and https://",
            ),
            (
                "endpoints = [\"http://a:1\"]\nprefix = \"roomy\"\n",
                "must start with /",
            ),
            ("endpoints = [\"http://a:1\"]\nendpoint = 1\n", "endpoint"),
        ] {
            let err = etcd(body).unwrap_err();
            assert!(err.contains(says), "{body}: {err}");
        }
        let err = Config::parse(base).unwrap_err();
        assert!(err.contains("no store"), "{err}");
        let err = Config::parse(&format!(
            "store = \"/x.db\"\n{base}[etcd]\nendpoints = [\"http://a:1\"]\n"
        ))
        .unwrap_err();
        assert!(err.contains("choose one"), "{err}");
    }
}
