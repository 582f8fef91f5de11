//! `HOST/CONTAINER` targets, as users type them: `roomyctl resize host1/node 16G`.

use std::fmt;
use std::str::FromStr;

/// A container on a host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host name as registered with the controller.
    pub host: String,
    /// Container name or id prefix, resolved by the host's agent.
    pub container: String,
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "target {0:?} is not HOST/CONTAINER: write e.g. host1/node (roomyctl hosts ls lists the hosts)"
)]
pub struct TargetError(pub String);

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || TargetError(text.to_string());
        let (host, container) = text.split_once('/').ok_or_else(err)?;
        let valid =
            |s: &str| !s.is_empty() && !s.contains('/') && !s.chars().any(char::is_whitespace);
        if !valid(host) || !valid(container) {
            return Err(err());
        }
        Ok(Target {
            host: host.to_string(),
            container: container.to_string(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.container)
    }
}

/// Whether `name` can be a host name: what DNS labels allow, plus dots.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        && !name.starts_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_slash_container() {
        let t: Target = "host1/node".parse().unwrap();
        assert_eq!((t.host.as_str(), t.container.as_str()), ("host1", "node"));
        assert_eq!(t.to_string(), "host1/node");
        for bad in ["node", "/node", "host1/", "a/b/c", "host 1/node", ""] {
            let err = bad.parse::<Target>().unwrap_err();
            assert!(err.to_string().contains("is not HOST/CONTAINER"), "{bad}");
        }
    }

    #[test]
    fn host_names() {
        assert!(valid_host_name("host1.example.com"));
        assert!(valid_host_name("db_2"));
        assert!(!valid_host_name(""));
        assert!(!valid_host_name("-x"));
        assert!(!valid_host_name("a b"));
        assert!(!valid_host_name("a/b"));
    }
}
