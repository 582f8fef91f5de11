//! `roomyctl certs init`: a CA and certificates for a fleet, plus a
//! controller config naming the users' roles and a roomyctl config per
//! user, so a fleet can be stood up by hand.

use std::fmt::Write as _;
use std::path::Path;

/// Write the PKI and configs into `out`; print what was made and what next.
pub fn init(out: &Path, agents: &[String], users: &[String]) -> Result<(), String> {
    let mut names = Vec::new();
    let mut roles = String::new();
    for spec in users {
        let (name, role) = spec
            .split_once(':')
            .ok_or_else(|| format!("--user {spec:?} is not NAME:ROLE, e.g. alice:admin"))?;
        if !["viewer", "operator", "admin"].contains(&role) {
            return Err(format!(
                "--user {spec:?}: a role is viewer, operator or admin"
            ));
        }
        if !roomy_proto::valid_host_name(name) {
            return Err(format!(
                "--user {spec:?}: use letters, digits, '-', '.', '_' in names"
            ));
        }
        names.push(name.to_string());
        let _ = writeln!(roles, "{name} = \"{role}\"");
    }
    for a in agents {
        if !roomy_proto::valid_host_name(a) {
            return Err(format!("--host {a:?} is not a host name"));
        }
    }
    let written = roomy_certs::init(out, agents, &names).map_err(|e| e.to_string())?;
    let abs = std::fs::canonicalize(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let dir = abs.display();

    let mut controller = format!(
        "# roomy-controller config made by `roomyctl certs init`.\n\
         listen = \"0.0.0.0:7443\"\n\
         store = \"{dir}/controller.db\"\n\
         agent_timeout_ms = 2000\n\n\
         [tls]\ncert = \"{dir}/controller.pem\"\nkey = \"{dir}/controller.key\"\nca = \"{dir}/ca.pem\"\n\n\
         [roles]\n{roles}"
    );
    for a in agents {
        let _ = write!(
            controller,
            "\n# [[hosts]]\n# name = \"{a}\"\n# address = \"{a}:7444\"\n"
        );
    }
    write(&abs.join("controller.toml"), &controller)?;
    for u in &names {
        let text = format!(
            "# roomyctl config for {u}: copy to ~/.config/roomy/roomyctl.toml\n\
             controller = \"127.0.0.1:7443\"\n\
             cert = \"{dir}/users/{u}.pem\"\nkey = \"{dir}/users/{u}.key\"\nca = \"{dir}/ca.pem\"\n"
        );
        write(&abs.join("users").join(format!("{u}.toml")), &text)?;
    }
    for path in &written {
        outln!("wrote {}", path.display());
    }
    outln!("wrote {dir}/controller.toml (roles of the users above; add [[hosts]] or use `roomyctl hosts add`)");
    outln!(
        "next: roomy-controller --config {dir}/controller.toml; on each host: roomy-agent --listen 0.0.0.0:7444 \
         --tls-cert {dir}/agents/HOST.pem --tls-key {dir}/agents/HOST.key --tls-ca {dir}/ca.pem"
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What to issue.
pub enum Issue {
    /// An agent's certificate.
    Agent,
    /// A user's certificate.
    User,
    /// The controller's.
    Controller,
}

/// Issue one certificate from the CA in `dir`.
pub fn issue(
    dir: &Path,
    what: Issue,
    name: Option<&str>,
    not_after: Option<&str>,
) -> Result<(), String> {
    use roomy_certs::{issue, load_ca, Kind};
    let (name, kind, sub) =
        match (what, name) {
            (Issue::Agent, Some(n)) => (n, Kind::Agent, Some("agents")),
            (Issue::User, Some(n)) => (n, Kind::User, Some("users")),
            (Issue::Controller, None) => ("roomy-controller", Kind::Controller, None),
            (Issue::Controller, Some(_)) => {
                return Err(
                    "the controller's certificate takes no NAME (it is roomy-controller)".into(),
                )
            }
            (_, None) => return Err(
                "give the agent's host name or the user's name: certs issue --dir DIR agent host4"
                    .into(),
            ),
        };
    if !roomy_proto::valid_host_name(name) {
        return Err(format!(
            "{name:?} is not a valid name: use letters, digits, '-', '.', '_'"
        ));
    }
    let now = time::OffsetDateTime::now_utc();
    let until = match not_after {
        Some(text) => {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    format!("--not-after {text:?} is not RFC 3339 (e.g. 2027-01-01T00:00:00Z): {e}")
                })?
        }
        None => now + time::Duration::days(365),
    };
    // An already-expired certificate must also start in the past.
    let from = (now - time::Duration::days(1)).min(until - time::Duration::days(1));
    let ca = load_ca(dir).map_err(|e| e.to_string())?;
    let (cert, key) = issue(&ca, name, kind, from, until).map_err(|e| e.to_string())?;
    let (cert_path, key_path) = match sub {
        Some(sub) => {
            let base = dir.join(sub);
            std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
            (
                base.join(format!("{name}.pem")),
                base.join(format!("{name}.key")),
            )
        }
        None => (dir.join("controller.pem"), dir.join("controller.key")),
    };
    // Key first: a reloading server never pairs the new cert with the old key
    // for long, and refuses a mismatched pair (keeping its old config).
    write_private(&key_path, &key)?;
    write(&cert_path, &cert)?;
    outln!(
        "wrote {}\nwrote {}",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Write a key: created 0600, never readable by others, not even briefly.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}
