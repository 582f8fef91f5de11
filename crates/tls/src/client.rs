//! The connecting side: a rustls client config that presents our
//! certificate, and a tonic channel that dials through it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    parse_certs, parse_key, parse_roots, provider, read_file, TlsError, TlsFiles, ALPN_H2,
};

/// Client-side TLS: TLS 1.3 only, ALPN `h2`, presents `files.cert` with
/// `files.key`, and accepts only servers whose certificate chains to
/// `files.ca`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let certs = parse_certs(&files.cert, &read_file(&files.cert)?)?;
    let key = parse_key(&files.key, &read_file(&files.key)?)?;
    let roots = parse_roots(&files.ca, &read_file(&files.ca)?)?;
    let config_error = |source| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A lazily connecting tonic channel to `addr` (`host:port`) over `config`,
/// expecting the server's certificate to be valid for `server_name`.
/// Connecting (TCP and TLS handshake) gives up after `connect_timeout`;
/// the channel reconnects on demand after failures.
pub fn channel(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    channel_with_deadline(addr, server_name, config, connect_timeout, None)
}

/// [`channel`], and every call on it fails with `DeadlineExceeded` once
/// `deadline` has passed without an answer (for a stream: without its first
/// answer; the stream itself may run on).
pub fn channel_with_deadline(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    deadline: Option<Duration>,
) -> Result<Channel, TlsError> {
    channel_to_any(
        &[addr.to_owned()],
        server_name,
        config,
        connect_timeout,
        deadline,
    )
}

/// [`channel_with_deadline`] to the first of `addrs` that answers: each
/// connection tries them in turn (each within `connect_timeout`), starting
/// from the one that answered last, so with several controllers a dead one
/// costs a refused or timed-out dial, not the call.
pub fn channel_to_any(
    addrs: &[String],
    server_name: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    deadline: Option<Duration>,
) -> Result<Channel, TlsError> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| TlsError::ServerName {
        name: server_name.to_owned(),
        detail: e.to_string(),
    })?;
    let first = addrs.first().ok_or_else(|| TlsError::Address {
        addr: String::new(),
        detail: "no address given".into(),
    })?;
    // "http", not "https": TLS is done by our connector, and tonic, when
    // built with its own TLS features (feature unification elsewhere in the
    // workspace), refuses https URIs it has no TLS config for.
    let endpoint =
        Endpoint::from_shared(format!("http://{first}")).map_err(|e| TlsError::Address {
            addr: first.clone(),
            detail: e.to_string(),
        })?;
    for addr in addrs {
        Uri::try_from(format!("http://{addr}")).map_err(|e| TlsError::Address {
            addr: addr.clone(),
            detail: e.to_string(),
        })?;
    }
    let connector = tokio_rustls::TlsConnector::from(config);
    let addrs: Arc<[String]> = addrs.into();
    let last_good = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, name, addrs, last_good) = (
            connector.clone(),
            name.clone(),
            addrs.clone(),
            last_good.clone(),
        );
        async move {
            let start = last_good.load(std::sync::atomic::Ordering::Relaxed);
            let mut errors = Vec::new();
            for i in (0..addrs.len()).map(|k| (start + k) % addrs.len()) {
                match dial(&addrs[i], &connector, &name, connect_timeout).await {
                    Ok(tls) => {
                        last_good.store(i, std::sync::atomic::Ordering::Relaxed);
                        return Ok(tls);
                    }
                    Err(e) => errors.push(e),
                }
            }
            // One error as it was for one address; all of them for several.
            Err(match errors.len() {
                1 => errors.remove(0),
                _ => io::Error::new(
                    errors[0].kind(),
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            })
        }
    });
    // An established connection to a host that silently vanished (cable
    // cut, VM paused) would hold calls until TCP gives up; HTTP/2 pings
    // notice within a few seconds.
    let endpoint = endpoint
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(connect_timeout.max(Duration::from_secs(1)))
        .keep_alive_while_idle(true);
    let endpoint = match deadline {
        Some(d) => endpoint.timeout(d),
        None => endpoint,
    };
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// TCP and the TLS handshake with one address, within `connect_timeout`.
async fn dial(
    addr: &str,
    connector: &tokio_rustls::TlsConnector,
    name: &ServerName<'static>,
    connect_timeout: Duration,
) -> io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))?;
        // gRPC sends many small frames; Nagle would delay them.
        tcp.set_nodelay(true)?;
        let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "tls handshake with {addr} (expecting {}) failed: {e}",
                    name.to_str()
                ),
            )
        })?;
        Ok::<_, io::Error>(TokioIo::new(tls))
    };
    tokio::time::timeout(connect_timeout, attempt)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out after {connect_timeout:?}"),
            )
        })?
}

/// Why the server at `addr` would refuse this client, if it does: in TLS
/// 1.3 the server judges the client's certificate after the client has
/// finished its handshake, so a refusal reaches a gRPC caller only as a
/// closed connection. This dials once more and reads the server's alert
/// (e.g. "received fatal alert: CertificateExpired"). `None`: no refusal seen.
pub async fn diagnose(addr: &str, server_name: &str, config: Arc<ClientConfig>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let name = ServerName::try_from(server_name.to_owned()).ok()?;
    let probe = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let mut tls = match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(e) => return Some(format!("tls handshake with {addr} failed: {e}")),
        };
        let mut byte = [0u8; 1];
        // A server that accepted us waits for our HTTP/2 preface and sends
        // nothing we can read here within the timeout.
        match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut byte)).await {
            Ok(Err(e)) => Some(format!("{addr} refused this client: {e}")),
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .ok()
        .flatten()
}
