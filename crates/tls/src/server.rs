//! The accepting side: a reloadable rustls server config, concurrent
//! handshakes, and connections that tell tonic who the client is.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig};
use rustls::{OtherError, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::{identity_of, kind_of, parse_certs, parse_key, parse_roots, provider, read_file};
use super::{Kind, PeerInfo, TlsError, TlsFiles, ALPN_H2};

/// How long a client may take to complete its handshake before it is dropped,
/// so half-open or idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Established connections waiting for tonic to pick them up.
const ACCEPT_BACKLOG: usize = 64;

/// Where refusals and reload outcomes are reported.
type LogHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Which client certificates a server lets in, beyond "issued by the CA":
/// the kinds it serves and, optionally, an allow-list of identities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRule {
    /// Empty: any kind, or none (the server authorizes per call).
    kinds: Vec<Kind>,
    /// Empty: any identity.
    identities: Vec<String>,
}

impl ClientRule {
    /// Any certificate the CA issued; the server decides per call.
    pub fn any() -> Self {
        Self::default()
    }

    /// Only certificates of one of `kinds` (see [`Kind`]) and, unless
    /// `identities` is empty, with one of those identities.
    pub fn only(kinds: &[Kind], identities: Vec<String>) -> Self {
        Self {
            kinds: kinds.to_vec(),
            identities,
        }
    }

    fn is_any(&self) -> bool {
        self.kinds.is_empty() && self.identities.is_empty()
    }

    /// Why a client with `identity` and `kind` is refused, if it is.
    fn refusal(&self, identity: &str, kind: Option<Kind>) -> Option<String> {
        if !self.kinds.is_empty() && !kind.is_some_and(|k| self.kinds.contains(&k)) {
            let wanted = self
                .kinds
                .iter()
                .map(|k| k.word())
                .collect::<Vec<_>>()
                .join(" or ");
            return Some(match kind {
                Some(kind) => format!(
                    "{identity:?} holds a {kind} certificate and only {wanted} certificates may connect here"
                ),
                None => format!(
                    "{identity:?} holds a certificate without a Roomy kind (URI SAN {}…) and only {wanted} certificates may connect here; reissue it with `roomyctl certs issue`",
                    super::KIND_URI_PREFIX
                ),
            });
        }
        if !self.identities.is_empty() && !self.identities.iter().any(|a| a == identity) {
            return Some(format!("identity {identity:?} is not on the allow-list"));
        }
        None
    }
}

/// Server-side TLS: TLS 1.3 only, ALPN `h2`, a client certificate is
/// required and verified against the CA (rustls `WebPkiClientVerifier`), and
/// the client's certificate must pass the server's [`ClientRule`].
///
/// Certificate, key and CA are re-read when their files change (see
/// [`spawn_reloader`](Self::spawn_reloader)) or on [`reload`](Self::reload),
/// without restarting the listener: each new handshake uses the latest
/// config, established connections keep theirs. A reload that fails keeps
/// the previous config.
pub struct ServerTls {
    files: TlsFiles,
    rule: Arc<ClientRule>,
    current: RwLock<Loaded>,
    /// File modification stamps seen at the last reload attempt.
    stamps: Mutex<Stamps>,
    log: RwLock<LogHook>,
}

/// The config in use and the file contents it was built from, so a reload of
/// unchanged files is a no-op.
struct Loaded {
    config: Arc<ServerConfig>,
    pem: [Vec<u8>; 3],
}

/// (mtime, length) of cert, key and CA; `None` when a file cannot be stat'ed.
type Stamps = [Option<(SystemTime, u64)>; 3];

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and builds the first config; `rule` says which
    /// client certificates (kinds, identities) may connect.
    pub fn load(files: TlsFiles, rule: ClientRule) -> Result<Arc<Self>, TlsError> {
        let rule = Arc::new(rule);
        let stamps = stamps(&files);
        let pem = read_all(&files)?;
        let config = build_config(&files, &pem, &rule)?;
        Ok(Arc::new(Self {
            files,
            rule,
            current: RwLock::new(Loaded { config, pem }),
            stamps: Mutex::new(stamps),
            log: RwLock::new(Arc::new(|msg: &str| eprintln!("roomy tls: {msg}"))),
        }))
    }

    /// Replaces where refusals, handshake failures and reloads are reported
    /// (default: standard error). Binaries route this into their logger.
    pub fn set_log(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *self.log.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(hook);
    }

    /// The files this server reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files now. Returns `Ok(true)` when their contents changed
    /// and the new config is in use, `Ok(false)` when nothing changed. On
    /// error the previous config stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        // Stamp before reading: a write racing with the read then shows up
        // as a change at the next poll and is picked up.
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) = stamps(&self.files);
        let pem = read_all(&self.files)?;
        if self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pem
            == pem
        {
            return Ok(false);
        }
        let config = build_config(&self.files, &pem, &self.rule)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Loaded { config, pem };
        Ok(true)
    }

    /// Starts a task that reloads when the files' modification times or
    /// sizes change (checked every `every`) and on SIGHUP. Outcomes go to
    /// the log hook. The task ends once this `ServerTls` is dropped. Must be
    /// called within a tokio runtime.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) {
        let this = Arc::downgrade(self);
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                self.log(&format!("cannot listen for SIGHUP ({e}); certificates reload only when their files change"));
                None
            }
        };
        tokio::spawn(async move {
            // The first check is one period away: the files were just read.
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    got = next_hangup(&mut hangup) => got,
                };
                let Some(this) = Weak::upgrade(&this) else {
                    return;
                };
                if forced || this.files_changed() {
                    this.reload_and_log();
                }
            }
        });
    }

    /// Accepts TCP connections on `listener` and completes TLS handshakes
    /// concurrently, each in its own task with a timeout, so a slow or failing
    /// handshake never holds up others. Failed handshakes and clients not on
    /// the allow-list are dropped and reported to the log hook; established
    /// connections are yielded for
    /// [`Server::serve_with_incoming`](tonic::transport::Server::serve_with_incoming).
    ///
    /// The stream never yields `Err`: accept errors are logged and retried.
    /// Dropping the stream stops accepting and closes the listener. Must be
    /// called within a tokio runtime.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        tokio::spawn(self.accept_loop(listener, tx));
        ReceiverStream::new(rx).map(Ok)
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, tx: mpsc::Sender<TlsConn>) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // The server dropped the stream: stop, which closes the listener.
                () = tx.closed() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically out of file descriptors; pause rather than spin.
                    self.log(&format!("accepting a connection failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let config = self.config();
            tokio::spawn(Arc::clone(&self).handshake(tcp, addr, config, tx.clone()));
        }
    }

    async fn handshake(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        config: Arc<ServerConfig>,
        tx: mpsc::Sender<TlsConn>,
    ) {
        // gRPC sends many small frames; Nagle would delay them.
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                match not_allowed(&e) {
                    Some(why) => self.log(&format!("refused connection from {addr}: {why}")),
                    None => self.log(&format!(
                        "refused connection from {addr}: tls handshake failed: {e}"
                    )),
                }
                return;
            }
            Err(_) => {
                self.log(&format!(
                    "refused connection from {addr}: tls handshake not done within {HANDSHAKE_TIMEOUT:?}"
                ));
                return;
            }
        };
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        let Some(identity) = leaf.and_then(|c| identity_of(c)) else {
            // Unreachable with a mandatory client verifier, but never serve
            // a connection we cannot attribute.
            self.log(&format!(
                "refused connection from {addr}: client certificate names no identity"
            ));
            return;
        };
        let kind = leaf.and_then(|c| kind_of(c));
        // The verifier already enforced this; checked again so the
        // guarantee holds even if the verifier is ever changed.
        if let Some(why) = self.rule.refusal(&identity, kind) {
            self.log(&format!("refused connection from {addr}: {why}"));
            return;
        }
        let peer = PeerInfo {
            identity,
            kind,
            addr: Some(addr),
        };
        // A send error means the server is shutting down; the connection is dropped.
        let _ = tx
            .send(TlsConn {
                inner: stream,
                peer,
            })
            .await;
    }

    fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .config,
        )
    }

    fn log(&self, msg: &str) {
        let hook = Arc::clone(&self.log.read().unwrap_or_else(PoisonError::into_inner));
        hook(msg);
    }

    fn files_changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) != stamps(&self.files)
    }

    fn reload_and_log(&self) {
        match self.reload() {
            Ok(true) => self.log(&format!(
                "reloaded certificates from {}",
                self.files.cert.display()
            )),
            Ok(false) => {}
            Err(e) => self.log(&format!(
                "reload failed, keeping the previous certificates: {e}"
            )),
        }
    }
}

/// Waits for the next SIGHUP; pends forever when there is no handler.
async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> bool {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                *signal = None;
                return false;
            }
            true
        }
        None => std::future::pending().await,
    }
}

fn stamps(files: &TlsFiles) -> Stamps {
    [&files.cert, &files.key, &files.ca].map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
}

fn read_all(files: &TlsFiles) -> Result<[Vec<u8>; 3], TlsError> {
    Ok([
        read_file(&files.cert)?,
        read_file(&files.key)?,
        read_file(&files.ca)?,
    ])
}

fn build_config(
    files: &TlsFiles,
    pem: &[Vec<u8>; 3],
    rule: &Arc<ClientRule>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let [cert, key, ca] = pem;
    let certs = parse_certs(&files.cert, cert)?;
    let key = parse_key(&files.key, key)?;
    let roots = parse_roots(&files.ca, ca)?;
    let provider = provider();
    let webpki = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| TlsError::Ca {
            path: files.ca.clone(),
            detail: e.to_string(),
        })?;
    let verifier: Arc<dyn ClientCertVerifier> = if rule.is_any() {
        webpki
    } else {
        Arc::new(RuleVerifier {
            inner: webpki,
            rule: Arc::clone(rule),
        })
    };
    let config_error = |source| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: a resumed session skips client certificate
    // verification, which would let a connection outlive a reload of the CA
    // or the client certificate's expiry. gRPC connections are long-lived,
    // so full handshakes cost little.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Rejects, during the handshake, client certificates the [`ClientRule`]
/// refuses, so the client gets a TLS alert instead of a connection that
/// silently closes.
#[derive(Debug)]
struct RuleVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    rule: Arc<ClientRule>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotAllowed(String);

/// Why [`RuleVerifier`] refused, when that is why a handshake failed.
fn not_allowed(e: &io::Error) -> Option<&str> {
    // tokio-rustls hands back the rustls error inside the io::Error.
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
            other.downcast_ref::<NotAllowed>().map(|n| n.0.as_str())
        }
        _ => None,
    }
}

impl ClientCertVerifier for RuleVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity = identity_of(end_entity).unwrap_or_default();
        match self.rule.refusal(&identity, kind_of(end_entity)) {
            None => Ok(verified),
            // `Other` carries the reason back to the handshake task for the
            // log (`not_allowed`); the client sees a certificate_unknown
            // alert. `ApplicationVerificationFailure` would send the clearer
            // access_denied but lose who was refused and why.
            Some(why) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(NotAllowed(why))),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// An accepted, verified TLS connection, as yielded by [`ServerTls::incoming`].
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl TlsConn {
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
