//! Mutual TLS for every Roomy connection (`roomyctl → controller → agent`).
//!
//! tonic's built-in `ServerTlsConfig` cannot swap certificates without a
//! restart, so this module builds the rustls configuration itself and feeds
//! tonic established connections through
//! [`Server::serve_with_incoming`](tonic::transport::Server::serve_with_incoming).
//!
//! Both sides speak TLS 1.3 only, offer ALPN `h2`, and use the `ring` crypto
//! provider explicitly, so rustls never panics for lack of a process-wide
//! default provider.
//!
//! # API
//!
//! ```text
//! pub struct TlsFiles { pub cert: PathBuf, pub key: PathBuf, pub ca: PathBuf }   // PEM files
//!
//! // server side: client certificate required and verified against `ca`
//! ServerTls::load(files: TlsFiles, rule: ClientRule) -> Result<Arc<ServerTls>, TlsError>
//! ClientRule::any()                                             // any certificate from the CA
//! ClientRule::only(kinds: &[Kind], identities: Vec<String>)     // e.g. agents: controllers only
//! ServerTls::reload(&self) -> Result<bool, TlsError>            // true when something changed
//! ServerTls::spawn_reloader(self: &Arc<Self>, every: Duration)  // polls mtimes, reloads on SIGHUP
//! ServerTls::set_log(&self, hook: impl Fn(&str) + Send + Sync + 'static)
//! ServerTls::incoming(self: Arc<Self>, listener: TcpListener)
//!     -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static
//! ServerTls::files(&self) -> &TlsFiles
//! TlsConn: AsyncRead + AsyncWrite + Unpin + Send + Connected<ConnectInfo = PeerInfo>
//! TlsConn::peer(&self) -> &PeerInfo
//! pub struct PeerInfo { pub identity: String, pub kind: Option<Kind>, pub addr: Option<SocketAddr> }
//! peer<T>(request: &tonic::Request<T>) -> Option<&PeerInfo>    // in handlers and interceptors
//!
//! // client side: presents `cert`/`key`, verifies the server against `ca`
//! client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError>
//! channel(addr: &str, server_name: &str, config: Arc<rustls::ClientConfig>, connect_timeout: Duration)
//!     -> Result<tonic::transport::Channel, TlsError>
//! channel_to_any(addrs: &[String], server_name, config, connect_timeout, deadline: Option<Duration>)
//!     -> Result<tonic::transport::Channel, TlsError>   // the first of several that answers
//!
//! Kind { Controller, Agent, User }                                   // URI SAN urn:roomy:kind:<word>
//! kind_of(der: &[u8]) -> Option<Kind>
//! ```
//!
//! # Refusals, as each side sees them
//!
//! The server drops a connection whose handshake fails (plaintext, no
//! certificate, unknown CA, expired, identity not allowed) and reports it to
//! its log hook ([`ServerTls::set_log`]); `incoming` never yields it. In
//! TLS 1.3 the client finishes its handshake before the server has judged
//! the client certificate, so a client learns of its refusal only on first
//! use: with [`channel`] the call fails with `Code::Unknown`, "transport
//! error", whose error source reads e.g. `received fatal alert:
//! CertificateRequired`. A server the client does not trust fails in the
//! connector, as `Code::Unavailable` naming the address and the reason.
//!
//! # Identities
//!
//! A peer's identity is its certificate's common name, or when it has none
//! its first DNS subject alternative name. `roomy-certs` issues certificates whose
//! CN and DNS SAN are both the name, so the identity is simply that name:
//! `roomy-controller`, the agent's host name, or the user's name.
//!
//! A name says who, not what the holder may do: any name can be put on a
//! certificate. What a certificate is for is its [`Kind`], a URI SAN
//! `urn:roomy:kind:controller|agent|user` that `roomy_certs::issue` writes and
//! that no user certificate carries for another kind. Agents accept only
//! [`Kind::Controller`] ([`ClientRule::only`]); the controller serves only
//! [`Kind::User`] (checked per call, so a refusal is audited). A certificate
//! with no kind, or two, has none ([`kind_of`]) and is refused by both.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use roomy_tls::{self as tls, ServerTls};
//!
//! let pem = |name: &str, ext: &str| format!("/etc/roomy/pki/{name}.{ext}").into();
//! let files = |name: &str| tls::TlsFiles { cert: pem(name, "pem"), key: pem(name, "key"), ca: pem("ca", "pem") };
//! let server = ServerTls::load(files("controller"), tls::ClientRule::any())?;
//! server.spawn_reloader(Duration::from_secs(30));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7443").await?;
//! let incoming = server.incoming(listener);
//! // tonic::transport::Server::builder().add_service(..).serve_with_incoming(incoming).await?;
//! # let _ = incoming;
//!
//! let config = tls::client_config(&files("users/alice"))?;
//! let channel = tls::channel("controller.example:7443", "roomy-controller", config, Duration::from_secs(5))?;
//! # let _ = channel;
//! # Ok(())
//! # }
//! ```

mod client;
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{channel, channel_to_any, channel_with_deadline, client_config, diagnose};
pub use server::{ClientRule, ServerTls, TlsConn};

/// The one application protocol Roomy speaks over TLS: gRPC needs HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// The controller's certificate name, which agents and `roomyctl` expect
/// (and which `roomy-certs` refuses to put on any other kind).
pub const CONTROLLER_NAME: &str = "roomy-controller";

/// The PEM files one side of a connection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key belonging to `cert`.
    pub key: PathBuf,
    /// The certificate authority that the other side's certificate must chain to.
    pub ca: PathBuf,
}

/// What a Roomy certificate is for. Carried in the certificate as a URI
/// subject alternative name, [`Kind::uri`]; it decides the extended key
/// usages `roomy_certs::issue` gives too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// serverAuth + clientAuth: a server to `roomyctl`, a client of agents.
    Controller,
    /// serverAuth: agents only accept connections.
    Agent,
    /// clientAuth: people running `roomyctl`.
    User,
}

/// The start of every kind URI.
pub const KIND_URI_PREFIX: &str = "urn:roomy:kind:";

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Controller, Kind::Agent, Kind::User];

    /// The kind's word: `controller`, `agent`, `user`.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Controller => "controller",
            Kind::Agent => "agent",
            Kind::User => "user",
        }
    }

    /// The URI SAN that marks a certificate of this kind.
    pub fn uri(self) -> String {
        format!("{KIND_URI_PREFIX}{}", self.word())
    }

    fn from_uri(uri: &str) -> Option<Kind> {
        let word = uri.strip_prefix(KIND_URI_PREFIX)?;
        Kind::ALL.into_iter().find(|k| k.word() == word)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// Who is on the other end of an accepted connection.
///
/// tonic inserts it into every request's extensions; read it with [`peer`].
/// (tonic's own `Request::remote_addr()` knows only its built-in
/// connection types and returns `None` here: use `addr`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The verified client identity: certificate CN, else first DNS SAN.
    pub identity: String,
    /// What the certificate is for ([`kind_of`]); `None` when it carries no
    /// Roomy kind, or more than one.
    pub kind: Option<Kind>,
    /// The client's address, when the socket could tell.
    pub addr: Option<SocketAddr>,
}

/// In a handler: the verified client identity of the connection the request
/// arrived on, or `None` when the server was not fed by [`ServerTls::incoming`].
pub fn peer<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
    // tonic puts the value of `Connected::connect_info` itself (not a
    // wrapper) into the request extensions.
    request.extensions().get::<PeerInfo>()
}

/// Everything that can go wrong setting up TLS or the PKI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}; check the path and that this user may read it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but holds no usable PEM item of the expected kind.
    #[error("{} holds no usable {what}: {detail}; it must be PEM, as written by `roomyctl certs init`", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What it should hold, e.g. "certificate" or "private key".
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// rustls refused the certificate and key (e.g. the key is not the certificate's).
    #[error("cannot use certificate {} with key {}: {source}; check that the key belongs to the certificate", cert.display(), key.display())]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// The certificate authority is unusable.
    #[error("cannot use the certificate authority in {}: {detail}", path.display())]
    Ca {
        /// The CA certificate or key file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The name a client expects the server's certificate to carry is not a DNS name or IP.
    #[error("{name:?} is not a valid tls server name: {detail}; use the name the server's certificate was issued for")]
    ServerName {
        /// The name given.
        name: String,
        /// Why it is invalid.
        detail: String,
    },
    /// The address to connect to does not make a URI.
    #[error("invalid server address {addr:?}: {detail}; expected host:port")]
    Address {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        detail: String,
    },
}

/// The crypto provider for every config we build; passing it explicitly
/// means rustls never looks for (and panics without) a process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a whole file, naming it in the error (also for `roomy-certs`).
pub fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file's contents, at least one.
pub fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |detail: String| TlsError::Pem {
        path: path.to_owned(),
        what: "certificate",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file's contents.
fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: "private key",
        detail: e.to_string(),
    })
}

/// The trust anchors in a CA file's contents.
fn parse_roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots.add(cert).map_err(|e| TlsError::Ca {
            path: path.to_owned(),
            detail: format!("{e}; it must hold the Roomy CA certificate (ca.pem)"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A certificate's [`Kind`], from its URI SANs: exactly one kind URI, or
/// `None` (no kind, two different kinds, or a certificate that does not
/// parse). Other URIs (SPIFFE IDs, say) are ignored.
pub fn kind_of(cert: &[u8]) -> Option<Kind> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found = None;
    for name in &san.value.general_names {
        let x509_parser::extensions::GeneralName::URI(uri) = name else {
            continue;
        };
        if !uri.starts_with(KIND_URI_PREFIX) {
            continue;
        }
        // An unknown word under our prefix, or a second kind: not trusted.
        let kind = Kind::from_uri(uri)?;
        if found.is_some_and(|k| k != kind) {
            return None;
        }
        found = Some(kind);
    }
    found
}

/// A certificate's identity: its common name, else its first DNS SAN.
pub fn identity_of(cert: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty());
    if let Some(cn) = cn {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })
}
