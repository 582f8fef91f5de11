//! Where roomyctl's settings come from: flags, then `ROOMY_*` environment
//! variables (clap reads both), then the config file
//! (`~/.config/roomy/roomyctl.toml`, or `--config`/`ROOMY_CONFIG`).
//!
//! ```toml
//! controller = "controller.example:7443"
//! server_name = "roomy-controller"
//! cert = "/home/alice/.config/roomy/alice.pem"
//! key = "/home/alice/.config/roomy/alice.key"
//! ca = "/home/alice/.config/roomy/ca.pem"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Controller address, host:port.
    pub controller: Option<String>,
    /// Name on the controller's certificate.
    pub server_name: Option<String>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
    /// The fleet's CA.
    pub ca: Option<PathBuf>,
    /// Agent (single-host mode) instead of a controller.
    pub agent: Option<String>,
}

impl FileSettings {
    /// Read `path`; a missing default file is no error, a missing named one is.
    pub fn load(path: Option<&Path>) -> Result<FileSettings, String> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => match std::env::var_os("HOME") {
                Some(home) => (
                    PathBuf::from(home).join(".config/roomy/roomyctl.toml"),
                    false,
                ),
                None => return Ok(FileSettings::default()),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(FileSettings::default())
            }
            Err(e) => Err(format!("config file {}: {e}", path.display())),
        }
    }
}

/// First of flag/env (already merged by clap) and file.
pub fn pick<T: Clone>(flag_or_env: &Option<T>, file: &Option<T>) -> Option<T> {
    flag_or_env.clone().or_else(|| file.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_optional_unless_named_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        assert!(FileSettings::load(Some(&path))
            .unwrap_err()
            .contains("r.toml"));
        std::fs::write(&path, "controller = \"c:7443\"\nca = \"/ca.pem\"\n").unwrap();
        let file = FileSettings::load(Some(&path)).unwrap();
        assert_eq!(file.controller.as_deref(), Some("c:7443"));
        assert_eq!(
            pick(&Some("flag:1".to_string()), &file.controller).as_deref(),
            Some("flag:1")
        );
        assert_eq!(pick(&None, &file.controller).as_deref(), Some("c:7443"));
        std::fs::write(&path, "controler = \"typo\"\n").unwrap();
        assert!(FileSettings::load(Some(&path))
            .unwrap_err()
            .contains("controler"));
    }
}
