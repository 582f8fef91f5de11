//! Who may do what: client identities map to roles in the controller's
//! config; each call names the role it needs.

use std::collections::HashMap;

use crate::error::ControllerError;

/// A role, each including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read: ls, inspect, hosts ls, audit.
    Viewer,
    /// Resize and repair.
    Operator,
    /// Hosts and policies.
    Admin,
}

impl Role {
    /// The role's word.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parse a role word.
    pub fn parse(word: &str) -> Option<Role> {
        match word {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Identity → role.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    map: HashMap<String, Role>,
}

impl Roles {
    /// From config pairs; unknown role words are refused.
    pub fn from_pairs(pairs: &HashMap<String, String>) -> Result<Self, ControllerError> {
        let mut map = HashMap::new();
        for (who, word) in pairs {
            let role = Role::parse(word).ok_or_else(|| {
                ControllerError::Config(format!(
                    "[roles] {who} = {word:?}: a role is viewer, operator or admin"
                ))
            })?;
            map.insert(who.clone(), role);
        }
        Ok(Roles { map })
    }

    /// Allow `identity` to do `action` if it has at least `needed`.
    pub fn check(
        &self,
        identity: &str,
        needed: Role,
        action: &'static str,
    ) -> Result<Role, ControllerError> {
        match self.map.get(identity) {
            Some(role) if *role >= needed => Ok(*role),
            other => Err(ControllerError::PermissionDenied {
                identity: identity.to_string(),
                role: other
                    .map(|r| r.name().to_string())
                    .unwrap_or_else(|| "no role".into()),
                action,
                needed: needed.name(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_includes_the_ones_before() {
        let pairs: HashMap<String, String> =
            [("alice", "admin"), ("olga", "operator"), ("vic", "viewer")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        let roles = Roles::from_pairs(&pairs).unwrap();
        assert!(roles.check("alice", Role::Admin, "hosts add").is_ok());
        assert!(roles.check("olga", Role::Operator, "resize").is_ok());
        assert!(roles.check("olga", Role::Viewer, "ls").is_ok());
        let err = roles.check("vic", Role::Operator, "resize").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            err.to_string(),
            "vic is viewer and resize needs operator: ask an admin to map vic to operator in the controller's [roles]"
        );
        assert!(roles
            .check("mallory", Role::Viewer, "ls")
            .unwrap_err()
            .to_string()
            .contains("no role"));
        let bad: HashMap<String, String> = [("x".to_string(), "root".to_string())].into();
        assert!(Roles::from_pairs(&bad).is_err());
    }
}
