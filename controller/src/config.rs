//! The controller's config file (TOML).
//!
//! ```toml
//! listen = "0.0.0.0:7443"
//! store = "/var/lib/roomy/controller.db"
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

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address for roomyctl (mutual TLS).
    pub listen: std::net::SocketAddr,
    /// SQLite file.
    pub store: PathBuf,
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

    /// Parse config text; relative paths stay relative to the working dir.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
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
}
