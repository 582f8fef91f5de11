//! What dockerd knows, through its API (bollard): containers, their
//! devicemapper devices and the size dockerd holds for each in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerInspectResponse, EventMessage};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::Stream;

use crate::error::AgentError;

/// The daemon-wide facts the devicemapper backend needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonInfo {
    /// `DockerRootDir`, where the devicemapper metadata files live.
    pub root_dir: PathBuf,
    /// Storage driver name.
    pub driver: String,
    /// Thin pool name (`Pool Name` in DriverStatus).
    pub pool: Option<String>,
    /// Whether Docker removes devices with deferred removal (F9).
    pub deferred_removal: bool,
}

impl DaemonInfo {
    /// Read the facts out of `DriverStatus` pairs.
    pub fn from_status(root_dir: PathBuf, driver: String, status: &[Vec<String>]) -> Self {
        let get = |key: &str| {
            status
                .iter()
                .find(|pair| pair.first().map(String::as_str) == Some(key))
                .and_then(|pair| pair.get(1).cloned())
        };
        DaemonInfo {
            root_dir,
            driver,
            pool: get("Pool Name"),
            deferred_removal: get("Deferred Removal Enabled").as_deref() == Some("true"),
        }
    }
}

/// One container as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    /// Full id.
    pub id: String,
    /// Name without the leading slash.
    pub name: String,
    /// Docker's state word.
    pub state: String,
    /// Whether it is running (or paused: its device is mounted either way).
    pub running: bool,
    /// Storage driver.
    pub driver: String,
    /// devicemapper: `DeviceName`.
    pub device_name: Option<String>,
    /// devicemapper: `DeviceId`.
    pub device_id: Option<u64>,
    /// devicemapper: `DeviceSize`, what dockerd holds in memory.
    pub docker_size: Option<u64>,
    /// Docker labels: policy selectors and overrides read them.
    pub labels: HashMap<String, String>,
}

impl ContainerView {
    /// Build from `docker inspect`.
    pub fn from_inspect(c: ContainerInspectResponse) -> Self {
        let state = c.state.as_ref();
        let running = state.and_then(|s| s.running).unwrap_or(false);
        let state_word = state
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let data: HashMap<String, String> = c
            .graph_driver
            .as_ref()
            .map(|g| g.data.clone())
            .unwrap_or_default();
        ContainerView {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            state: state_word,
            running,
            driver: c.driver.unwrap_or_default(),
            device_name: data.get("DeviceName").cloned(),
            device_id: data.get("DeviceId").and_then(|v| v.parse().ok()),
            docker_size: data.get("DeviceSize").and_then(|v| v.parse().ok()),
            labels: c
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default(),
        }
    }

    /// The layer's mount id: the hash Docker ends the device name with and
    /// names the metadata file after (F3).
    pub fn mount_id(&self, root: &Path) -> Option<String> {
        let file = root
            .join("image/devicemapper/layerdb/mounts")
            .join(&self.id)
            .join("mount-id");
        if let Ok(id) = std::fs::read_to_string(file) {
            let id = id.trim();
            if !id.is_empty() {
                return Some(id.to_string());
            }
        }
        // Same value, from the device name: docker-<maj>:<min>-<inode>-<hash>.
        self.device_name
            .as_deref()
            .and_then(|n| n.rsplit('-').next())
            .map(str::to_string)
    }
}

/// A connection to dockerd.
#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
}

impl DockerClient {
    /// Connect to `host` (`unix:///path`), or DOCKER_HOST / the default
    /// socket, and agree on an API version (Docker 20.10 speaks 1.41).
    pub async fn connect(host: Option<&str>) -> Result<Self, AgentError> {
        let docker = match host {
            Some(h) => Docker::connect_with_unix(h, 120, bollard::API_DEFAULT_VERSION)?,
            None => Docker::connect_with_local_defaults()?,
        };
        let docker = docker.negotiate_version().await?;
        Ok(DockerClient { docker })
    }

    /// Daemon facts.
    pub async fn info(&self) -> Result<DaemonInfo, AgentError> {
        let info = self.docker.info().await?;
        Ok(DaemonInfo::from_status(
            PathBuf::from(info.docker_root_dir.unwrap_or_default()),
            info.driver.unwrap_or_default(),
            &info.driver_status.unwrap_or_default(),
        ))
    }

    /// One container by name or id (a unique id prefix works, as in the
    /// docker CLI).
    pub async fn container(&self, query: &str) -> Result<ContainerView, AgentError> {
        if query.is_empty() || query.contains('/') {
            return Err(AgentError::NotFound(query.to_string()));
        }
        match self.docker.inspect_container(query, None).await {
            Ok(c) => Ok(ContainerView::from_inspect(c)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(AgentError::NotFound(query.to_string())),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 400,
                message,
            }) if message.contains("ultiple") => Err(self.ambiguous(query).await),
            Err(e) => Err(e.into()),
        }
    }

    async fn ambiguous(&self, prefix: &str) -> AgentError {
        let candidates = match self.list().await {
            Ok(all) => all
                .into_iter()
                .filter(|c| c.id.starts_with(prefix))
                .map(|c| c.name)
                .collect(),
            Err(_) => vec![],
        };
        AgentError::Ambiguous {
            prefix: prefix.to_string(),
            candidates,
        }
    }

    /// Every container, running or not.
    pub async fn list(&self) -> Result<Vec<ContainerView>, AgentError> {
        self.list_where(true).await
    }

    /// Running (and paused) containers only.
    pub async fn running(&self) -> Result<Vec<ContainerView>, AgentError> {
        self.list_where(false).await
    }

    async fn list_where(&self, all: bool) -> Result<Vec<ContainerView>, AgentError> {
        let options = ListContainersOptions {
            all,
            ..Default::default()
        };
        let summaries = self.docker.list_containers(Some(options)).await?;
        let mut out = Vec::with_capacity(summaries.len());
        for s in summaries {
            let Some(id) = s.id else { continue };
            match self.docker.inspect_container(&id, None).await {
                Ok(c) => out.push(ContainerView::from_inspect(c)),
                // Removed between list and inspect.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Container lifecycle events (start, die, destroy, ...).
    pub fn container_events(
        &self,
    ) -> impl Stream<Item = Result<EventMessage, bollard::errors::Error>> {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        self.docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_driver_status_of_docker_20_10() {
        let status: Vec<Vec<String>> = [
            ("Pool Name", "docker-8:0-1234-pool"),
            ("Pool Blocksize", "65.54kB"),
            ("Data file", "/dev/loop0"),
            ("Deferred Removal Enabled", "true"),
            ("Deferred Deletion Enabled", "false"),
        ]
        .iter()
        .map(|(k, v)| vec![k.to_string(), v.to_string()])
        .collect();
        let info =
            DaemonInfo::from_status("/var/lib/docker".into(), "devicemapper".into(), &status);
        assert_eq!(info.pool.as_deref(), Some("docker-8:0-1234-pool"));
        assert!(info.deferred_removal);
        let info = DaemonInfo::from_status("/x".into(), "overlay2".into(), &[]);
        assert_eq!(info.pool, None);
        assert!(!info.deferred_removal);
    }

    #[test]
    fn mount_id_comes_from_layerdb_or_the_device_name() {
        let root = tempfile::tempdir().unwrap();
        let mut c = ContainerView {
            id: "cid".into(),
            name: "node".into(),
            state: "running".into(),
            running: true,
            driver: "devicemapper".into(),
            device_name: Some("docker-8:0-1234-abcdef".into()),
            device_id: Some(4),
            docker_size: Some(2 << 30),
            labels: HashMap::new(),
        };
        assert_eq!(c.mount_id(root.path()).as_deref(), Some("abcdef"));
        let dir = root.path().join("image/devicemapper/layerdb/mounts/cid");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mount-id"), "fromfile").unwrap();
        assert_eq!(c.mount_id(root.path()).as_deref(), Some("fromfile"));
        c.id = "other".into();
        c.device_name = None;
        assert_eq!(c.mount_id(root.path()), None);
    }
}
