//! Intent records: one small fsync'd file per resize in flight, written
//! before the first change and removed after the last. An agent that was
//! killed finds them at start and finishes the work (every step is safe to
//! re-run).

use std::fs;
use std::path::{Path, PathBuf};

use roomy_proto::format_bytes;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::sys::atomic::write_atomically;

/// One resize in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Container id.
    pub container_id: String,
    /// Container name, for messages.
    pub container_name: String,
    /// Thin device name.
    pub device: String,
    /// Size before, in bytes.
    pub from_bytes: u64,
    /// Size asked for, in bytes.
    pub to_bytes: u64,
    /// Seconds since the epoch when it started.
    pub started: u64,
}

/// The directory of intent records.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Use (and create) `dir`.
    pub fn open(dir: &Path) -> Result<Self, AgentError> {
        fs::create_dir_all(dir).map_err(|e| AgentError::io("create journal", dir, e))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(format!("{container_id}.json"))
    }

    /// Record an intent durably before acting on it.
    pub fn record(&self, intent: &Intent) -> Result<(), AgentError> {
        let path = self.path(&intent.container_id);
        let bytes =
            serde_json::to_vec_pretty(intent).map_err(|e| AgentError::Internal(e.to_string()))?;
        write_atomically(&path, &bytes).map_err(|e| AgentError::io("write intent", &path, e))
    }

    /// Forget an intent once its work is done.
    pub fn clear(&self, container_id: &str) -> Result<(), AgentError> {
        let path = self.path(container_id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AgentError::io("remove intent", &path, e)),
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| AgentError::io("sync journal", &self.dir, e))
    }

    /// Start-up recovery, the same for every backend: each intent left by an
    /// earlier agent is handed to `finish` (the backend's re-run of its
    /// protocol, which clears the record when done), oldest first. A
    /// container that is gone has its record dropped; any other failure
    /// keeps it for the next start. Returns one line per record, for the log.
    pub async fn recover<F, Fut>(&self, mut finish: F) -> Vec<String>
    where
        F: FnMut(Intent) -> Fut,
        Fut: std::future::Future<Output = Result<(), AgentError>>,
    {
        let pending = match self.pending() {
            Ok(p) => p,
            Err(e) => return vec![format!("cannot read intent records: {e}")],
        };
        let mut report = Vec::new();
        for record in pending {
            let intent = match record {
                Ok(i) => i,
                Err(e) => {
                    report.push(format!("skipped: {e}"));
                    continue;
                }
            };
            let (id, name, to) = (
                intent.container_id.clone(),
                intent.container_name.clone(),
                format_bytes(intent.to_bytes),
            );
            report.push(match finish(intent).await {
                Ok(()) => format!(
                    "finished the resize of {name} to {to} that an earlier agent left unfinished"
                ),
                Err(AgentError::NotFound(_)) => {
                    let _ = self.clear(&id);
                    format!("dropped the resize of {name}: the container is gone")
                }
                Err(e) => format!(
                    "could not finish the resize of {name} to {to}: {e}; the intent record stays for the next start"
                ),
            });
        }
        report
    }

    /// Intents left by an agent that stopped in the middle, oldest first.
    /// Unreadable records are reported, not dropped.
    pub fn pending(&self) -> Result<Vec<Result<Intent, AgentError>>, AgentError> {
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(|e| AgentError::io("read journal", &self.dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| AgentError::io("read journal", &self.dir, e))?
                .path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            out.push(
                fs::read(&path)
                    .map_err(|e| AgentError::io("read intent", &path, e))
                    .and_then(|b| {
                        serde_json::from_slice(&b).map_err(|e| AgentError::Metadata {
                            path: path.display().to_string(),
                            detail: format!("unreadable intent record: {e}"),
                        })
                    }),
            );
        }
        out.sort_by_key(|r: &Result<Intent, AgentError>| {
            r.as_ref().map(|i| i.started).unwrap_or(0)
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("intents")).unwrap();
        let intent = Intent {
            container_id: "abc".into(),
            container_name: "node".into(),
            device: "docker-8:0-1-x".into(),
            from_bytes: 2 << 30,
            to_bytes: 4 << 30,
            started: 7,
        };
        journal.record(&intent).unwrap();
        let reopened = Journal::open(&dir.path().join("intents")).unwrap();
        let pending = reopened.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].as_ref().unwrap(), &intent);
        reopened.clear("abc").unwrap();
        reopened.clear("abc").unwrap();
        assert!(reopened.pending().unwrap().is_empty());
    }

    #[test]
    fn unreadable_records_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        fs::write(dir.path().join("bad.json"), "{").unwrap();
        fs::write(dir.path().join(".tmp.json"), "{").unwrap();
        let pending = journal.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert!(pending[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("unreadable intent"));
    }
}
