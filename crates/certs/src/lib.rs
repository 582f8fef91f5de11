//! A small PKI for standing up a fleet by hand: one CA, a controller
//! certificate, one certificate per agent and per user.
//!
//! Layout written by [`init`] (and expected by [`pki_files`]):
//!
//! ```text
//! DIR/ca.pem  DIR/ca.key                      the CA (10 years)
//! DIR/controller.pem  DIR/controller.key      "roomy-controller" (1 year)
//! DIR/agents/<name>.pem  DIR/agents/<name>.key
//! DIR/users/<name>.pem   DIR/users/<name>.key
//! ```
//!
//! Keys are ECDSA P-256, PKCS#8 PEM, mode 0600. Every leaf has CN = name and
//! DNS SAN = name, so its identity (see `roomy_tls::PeerInfo`) is
//! the name, and a URI SAN naming its [`Kind`], which is what decides what
//! it may do. `roomy-controller` is the controller's name and is refused
//! for agents and users. Serial numbers derive from each fresh key, so
//! reissuing gives a new serial.
//!
//! A crate of its own so that only `roomyctl` and the controller, which
//! issue certificates, link rcgen: agents only verify them (`roomy-tls`).
#![warn(missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use roomy_tls::{read_file, TlsError, TlsFiles};
pub use roomy_tls::{Kind, CONTROLLER_NAME};

#[cfg(test)]
mod tests;

/// Everything that can go wrong issuing certificates or writing a PKI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A PEM file could not be read or used (the CA, when issuing from one).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A name cannot be used for a certificate (or as a file name in the PKI directory).
    #[error("invalid certificate name {name:?}: {detail}")]
    Name {
        /// The name given.
        name: String,
        /// Why it is invalid.
        detail: &'static str,
    },
    /// rcgen could not make a key or certificate.
    #[error("cannot issue a certificate for {name:?}: {source}")]
    Issue {
        /// The subject name.
        name: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A PKI file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// [`init`] found a CA key already in place.
    #[error("{} already exists; refusing to overwrite a certificate authority key: use a new directory, or `load_ca` to issue more certificates from this one", path.display())]
    CaExists {
        /// The existing `ca.key`.
        path: PathBuf,
    },
}

/// How long leaves from [`init`] are valid.
const LEAF_VALIDITY: Duration = Duration::days(365);
/// How long the CA from [`new_ca`] is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Certificates start this far in the past so hosts whose clocks lag a
/// little accept them right away.
const BACKDATE: Duration = Duration::hours(1);

/// A certificate authority: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// The CA certificate, PEM (what goes in `ca.pem`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (what goes in `ca.key`; keep it secret).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Makes a new CA named `name`, valid for 10 years.
pub fn new_ca(name: &str) -> Result<Ca, CertError> {
    if name.trim().is_empty() {
        return Err(CertError::Name {
            name: name.to_owned(),
            detail: "a certificate authority needs a non-empty name",
        });
    }
    let issue_error = |source| CertError::Issue {
        name: name.to_owned(),
        source,
    };
    let key = KeyPair::generate().map_err(issue_error)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    // Path length 0: the CA signs leaves directly, never intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(issue_error)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        issuer: Issuer::new(params, key),
    })
}

/// Loads the CA from `dir/ca.pem` and `dir/ca.key`, to issue more certificates.
pub fn load_ca(dir: &Path) -> Result<Ca, CertError> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let cert_pem = String::from_utf8_lossy(&read_file(&cert_path)?).into_owned();
    let key_pem = String::from_utf8_lossy(&read_file(&key_path)?).into_owned();
    let ca_error = |path: &Path, detail: String| {
        CertError::Tls(TlsError::Ca {
            path: path.to_owned(),
            detail,
        })
    };
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        ca_error(
            &key_path,
            format!("{e}; it must be the PEM private key written with ca.pem"),
        )
    })?;
    let der = roomy_tls::parse_certs(&cert_path, cert_pem.as_bytes())?.swap_remove(0);
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| ca_error(&cert_path, format!("not a valid certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(ca_error(&cert_path, "this is not a CA certificate".into()));
    }
    // rcgen would happily sign with a mismatched key, producing leaves
    // nobody can verify; catch it here.
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(ca_error(
            &key_path,
            "this key does not belong to ca.pem; restore the matching pair".into(),
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| ca_error(&cert_path, format!("cannot sign with it: {e}")))?;
    Ok(Ca { cert_pem, issuer })
}

/// Issues a leaf certificate signed by `ca`: CN = `name`, DNS SAN = `name`
/// (plus `localhost` and IP 127.0.0.1 for controllers and agents, so
/// loopback connections verify), valid from `not_before` to `not_after`.
/// Returns the certificate and its new private key, both PEM.
///
/// `name` must be a host name or IP address (letters, digits, `-`, `.`, `_`),
/// since it is also the certificate's DNS SAN and a file name in the PKI;
/// [`CONTROLLER_NAME`] is only for [`Kind::Controller`].
pub fn issue(
    ca: &Ca,
    name: &str,
    kind: Kind,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(String, String), CertError> {
    check_name(name)?;
    check_reserved(name, kind)?;
    leaf(ca, name, kind, &[kind], not_before, not_after)
}

/// A certificate `issue` would refuse to make: `name` unchecked, the key
/// usages of `usage`, and the kind URIs of `marked` (any number). For tests of
/// what servers do with a certificate made by other tools or older Roomy.
#[cfg(test)]
pub(crate) fn forge(
    ca: &Ca,
    name: &str,
    usage: Kind,
    marked: &[Kind],
) -> Result<(String, String), CertError> {
    let now = OffsetDateTime::now_utc();
    leaf(ca, name, usage, marked, now - BACKDATE, now + LEAF_VALIDITY)
}

fn leaf(
    ca: &Ca,
    name: &str,
    kind: Kind,
    marked: &[Kind],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(String, String), CertError> {
    let issue_error = |source| CertError::Issue {
        name: name.to_owned(),
        source,
    };
    let mut sans = vec![name.to_owned()];
    if kind != Kind::User {
        for extra in ["localhost", "127.0.0.1"] {
            if name != extra {
                sans.push(extra.to_owned());
            }
        }
    }
    // `new` turns the IP-looking entries into IP SANs.
    let mut params = CertificateParams::new(sans).map_err(issue_error)?;
    params.distinguished_name = common_name(name);
    for marked in marked {
        let uri = marked.uri().try_into().map_err(issue_error)?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match kind {
        Kind::Controller => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Kind::Agent => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Kind::User => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(issue_error)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(issue_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `dir/<name>.pem` and `dir/<name>.key` (mode 0600), replacing
/// existing files, and returns their paths.
pub fn write_leaf(
    dir: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(PathBuf, PathBuf), CertError> {
    check_name(name)?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    write_file(&key, key_pem, 0o600, false)?;
    write_file(&cert, cert_pem, 0o644, false)?;
    Ok((cert, key))
}

/// The [`TlsFiles`] of one member of a PKI written by [`init`]. `name` is
/// ignored for [`Kind::Controller`].
pub fn pki_files(dir: &Path, kind: Kind, name: &str) -> TlsFiles {
    let base = match kind {
        Kind::Controller => dir.join("controller"),
        Kind::Agent => dir.join("agents").join(name),
        Kind::User => dir.join("users").join(name),
    };
    TlsFiles {
        cert: base.with_extension("pem"),
        key: base.with_extension("key"),
        ca: dir.join("ca.pem"),
    }
}

/// Writes a whole PKI into `dir` (see the module docs for the layout): a new
/// CA valid 10 years, the controller (`roomy-controller`), each agent and
/// each user, valid 1 year. Refuses to touch a directory that already has a
/// `ca.key`. Returns every file written.
pub fn init(dir: &Path, agents: &[String], users: &[String]) -> Result<Vec<PathBuf>, CertError> {
    // Validate everything before writing anything.
    for name in agents {
        check_name(name)?;
        check_reserved(name, Kind::Agent)?;
    }
    for name in users {
        check_name(name)?;
        check_reserved(name, Kind::User)?;
    }
    let ca_key = dir.join("ca.key");
    if ca_key.exists() {
        return Err(CertError::CaExists { path: ca_key });
    }
    // A distinct name per fleet: a certificate from another fleet's CA
    // then fails as "unknown issuer" rather than a puzzling bad signature.
    let ca = new_ca(&format!(
        "Roomy CA {}",
        OffsetDateTime::now_utc().unix_timestamp()
    ))?;
    for sub in [dir.to_owned(), dir.join("agents"), dir.join("users")] {
        std::fs::create_dir_all(&sub).map_err(|source| CertError::Write { path: sub, source })?;
    }
    // create_new makes the refusal race-free: of two concurrent inits,
    // only one gets to own the CA.
    write_file(&ca_key, &ca.key_pem(), 0o600, true)?;
    let ca_cert = dir.join("ca.pem");
    write_file(&ca_cert, ca.cert_pem(), 0o644, false)?;
    let mut written = vec![ca_cert, ca_key];

    let now = OffsetDateTime::now_utc();
    let (from, until) = (now - BACKDATE, now + LEAF_VALIDITY);
    let members = std::iter::once((
        dir.to_owned(),
        CONTROLLER_NAME,
        "controller",
        Kind::Controller,
    ))
    .chain(
        agents
            .iter()
            .map(|a| (dir.join("agents"), a.as_str(), a.as_str(), Kind::Agent)),
    )
    .chain(
        users
            .iter()
            .map(|u| (dir.join("users"), u.as_str(), u.as_str(), Kind::User)),
    );
    for (sub, name, file, kind) in members {
        let (cert_pem, key_pem) = issue(&ca, name, kind, from, until)?;
        let (cert, key) = write_leaf(&sub, file, &cert_pem, &key_pem)?;
        written.extend([cert, key]);
    }
    Ok(written)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// The controller's name on anything but the controller's certificate would
/// pass for it wherever a name is checked (older agents, logs, people).
fn check_reserved(name: &str, kind: Kind) -> Result<(), CertError> {
    if kind != Kind::Controller && name.eq_ignore_ascii_case(CONTROLLER_NAME) {
        return Err(CertError::Name {
            name: name.to_owned(),
            detail: "this name is reserved for the controller's certificate (`certs issue controller`); pick another name",
        });
    }
    Ok(())
}

/// Leaf names become DNS SANs and file names: keep them to host-name
/// characters so neither can go wrong (no `/`, no `..`, no spaces).
fn check_name(name: &str) -> Result<(), CertError> {
    let bad = |detail| {
        Err(CertError::Name {
            name: name.to_owned(),
            detail,
        })
    };
    if name.is_empty() || name.len() > 253 {
        return bad("a name must be 1 to 253 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return bad(
            "use only letters, digits, '-', '.' and '_' (it becomes a host name and a file name)",
        );
    }
    if name.starts_with(['.', '-']) || name.ends_with(['.', '-']) || name.contains("..") {
        return bad("a name must not start or end with '.' or '-', nor contain '..'");
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, mode: u32, create_new: bool) -> Result<(), CertError> {
    let write_error = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let mut file = options.open(path).map_err(write_error)?;
    // `mode` only applies to new files; an existing key file must not keep
    // a looser mode.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(write_error)?;
    file.write_all(contents.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}
