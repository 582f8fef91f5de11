//! End-to-end tests on 127.0.0.1: a tonic health service behind
//! [`ServerTls::incoming`], reached with raw tokio-rustls probes (to see
//! handshake outcomes) and with [`channel`] (to see a real gRPC call).
//! Every refusal is checked on both sides: the client gets an error, and the
//! server logs the refusal for that client's address without yielding the
//! connection.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use roomy_tls::*;

use crate as certs;
use crate::{Ca, CertError, Kind};

/// Long enough for any loopback handshake, short enough to keep failures fast.
const WAIT: Duration = Duration::from_secs(2);

/// The HTTP/2 client preface and an empty SETTINGS frame: a server that
/// accepted us answers with its own SETTINGS frame.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A CA in a temporary directory, issuing leaves into it.
struct Pki {
    dir: TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        Self::named("Test CA")
    }

    fn named(ca_name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::new_ca(ca_name).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Pki { dir, ca }
    }

    /// A leaf valid from an hour ago for a day.
    fn leaf(&self, name: &str, kind: Kind) -> TlsFiles {
        let now = OffsetDateTime::now_utc();
        self.leaf_valid(
            name,
            kind,
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        )
    }

    fn leaf_valid(
        &self,
        name: &str,
        kind: Kind,
        from: OffsetDateTime,
        until: OffsetDateTime,
    ) -> TlsFiles {
        let (cert, key) = certs::issue(&self.ca, name, kind, from, until).unwrap();
        let (cert, key) = certs::write_leaf(self.dir.path(), name, &cert, &key).unwrap();
        TlsFiles {
            cert,
            key,
            ca: self.dir.path().join("ca.pem"),
        }
    }

    fn client(&self, name: &str) -> Arc<ClientConfig> {
        client_config(&self.leaf(name, Kind::User)).unwrap()
    }
}

/// A running gRPC server and what it reported.
struct TestServer {
    addr: SocketAddr,
    tls: Arc<ServerTls>,
    logs: mpsc::UnboundedReceiver<String>,
    /// Connections `incoming` yielded to tonic.
    yielded: Arc<Mutex<Vec<PeerInfo>>>,
    /// What `peer()` returned inside request handling.
    handled: Arc<Mutex<Vec<PeerInfo>>>,
}

/// A server letting in only `allowed` identities (empty: any certificate).
async fn start(files: TlsFiles, allowed: &[&str]) -> TestServer {
    let rule = ClientRule::only(&[], allowed.iter().map(|s| s.to_string()).collect());
    start_with(files, rule).await
}

async fn start_with(files: TlsFiles, rule: ClientRule) -> TestServer {
    let tls = ServerTls::load(files, rule).unwrap();
    let (log_tx, logs) = mpsc::unbounded_channel();
    tls.set_log(move |msg| {
        let _ = log_tx.send(msg.to_owned());
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let yielded = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&yielded);
    let incoming = Arc::clone(&tls).incoming(listener).map(move |conn| {
        if let Ok(conn) = &conn {
            seen.lock().unwrap().push(conn.peer().clone());
        }
        conn
    });
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&handled);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let service = InterceptedService::new(health, move |request: tonic::Request<()>| {
        seen.lock().unwrap().extend(peer(&request).cloned());
        Ok(request)
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    TestServer {
        addr,
        tls,
        logs,
        yielded,
        handled,
    }
}

impl TestServer {
    /// The next log line that mentions `needle`.
    async fn log_with(&mut self, needle: &str) -> String {
        let wait = async {
            loop {
                let msg = self.logs.recv().await.expect("log hook dropped");
                if msg.contains(needle) {
                    return msg;
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("nothing logged about {needle}"))
    }

    /// Server side of a refusal: logged for `from` with `reason`, never yielded.
    async fn assert_refused(&mut self, from: SocketAddr, reason: &str) {
        let msg = self
            .log_with(&format!("refused connection from {from}"))
            .await;
        assert!(
            msg.to_lowercase().contains(reason),
            "{msg:?} should mention {reason:?}"
        );
        // The refusal is logged by the very task that would have yielded the
        // connection, so by now it is settled.
        assert!(
            self.yielded
                .lock()
                .unwrap()
                .iter()
                .all(|p| p.addr != Some(from)),
            "refused connection from {from} was yielded"
        );
    }

    fn yielded_from(&self, from: SocketAddr) -> Option<PeerInfo> {
        self.yielded
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.addr == Some(from))
            .cloned()
    }
}

/// The outcome of a raw TLS + HTTP/2 hello: the server's leaf certificate,
/// or why it failed.
struct Probe {
    local: SocketAddr,
    result: Result<Vec<u8>, String>,
}

async fn probe(addr: SocketAddr, server_name: &str, config: Arc<ClientConfig>) -> Probe {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let result = async {
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        // In TLS 1.3 the client finishes its handshake before the server has
        // judged the client certificate: a refusal arrives as an alert on
        // the first read.
        tls.write_all(H2_HELLO)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .map_err(|_| "read timed out".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        match n {
            0 => Err("closed by server".to_string()),
            // An HTTP/2 frame header: 3 bytes length, then type 4 = SETTINGS.
            n if n >= 9 && buf[3] == 4 => Ok(server_cert),
            _ => Err(format!("not an HTTP/2 answer: {:?}", &buf[..n])),
        }
    }
    .await;
    Probe { local, result }
}

fn serial(cert_der: &[u8]) -> Vec<u8> {
    x509_parser::parse_x509_certificate(cert_der)
        .unwrap()
        .1
        .raw_serial()
        .to_vec()
}

fn serial_of_file(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    serial(&parse_certs(path, &pem).unwrap()[0])
}

async fn health_check(channel: tonic::transport::Channel) -> Result<i32, tonic::Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let mut client = HealthClient::new(channel);
    match tokio::time::timeout(WAIT, client.check(request)).await {
        Ok(response) => Ok(response?.into_inner().status),
        Err(_) => Err(tonic::Status::deadline_exceeded("health check timed out")),
    }
}

#[tokio::test]
async fn good_client_is_served_with_its_identity() {
    let pki = Pki::new();
    let mut server = start(pki.leaf("agent-1", Kind::Agent), &["alice"]).await;

    // A client stuck before its handshake must not hold up anyone else.
    let _stalled = TcpStream::connect(server.addr).await.unwrap();

    let alice = pki.client("alice");
    let probe = probe(server.addr, "agent-1", Arc::clone(&alice)).await;
    probe.result.expect("alice's handshake");
    let peer = server
        .yielded_from(probe.local)
        .expect("alice's connection yielded");
    assert_eq!(peer.identity, "alice");

    let channel = channel(&server.addr.to_string(), "agent-1", alice, WAIT).unwrap();
    assert_eq!(
        health_check(channel).await.unwrap(),
        ServingStatus::Serving as i32
    );
    let handled = server.handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert_eq!(handled[0].identity, "alice");
    assert!(handled[0].addr.is_some_and(|a| a.ip().is_loopback()));
    assert!(server.logs.try_recv().is_err(), "nothing refused");
}

#[tokio::test]
async fn plaintext_client_is_refused() {
    let pki = Pki::new();
    let mut server = start(pki.leaf("agent-1", Kind::Agent), &[]).await;

    // Raw HTTP/2 without TLS: the server must not answer in HTTP/2.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    tcp.write_all(H2_HELLO).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("server kept the plaintext connection open");
    // Either nothing, or a TLS alert record (content type 21).
    assert!(
        answer.is_empty() || answer[0] == 21,
        "unexpected answer {answer:?}"
    );
    server.assert_refused(local, "handshake failed").await;

    // And a real plaintext gRPC client fails its call.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_lazy();
    assert!(health_check(plain).await.is_err());
    server.log_with("handshake failed").await;
    assert!(server.yielded.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let pki = Pki::new();
    let mut server = start(pki.leaf("agent-1", Kind::Agent), &[]).await;

    // Mallory's certificates come from CAs of her own (which she trusts
    // ours besides, so that only the server's check of her certificate can
    // fail): one with another name, one named like ours (as two fleets'
    // CAs might be), whose signature then fails to verify.
    for (ca_name, client_alert, server_reason) in [
        ("Other CA", "UnknownCA", "unknownissuer"),
        ("Test CA", "DecryptError", "badsignature"),
    ] {
        let other = Pki::named(ca_name);
        let mut files = other.leaf("mallory", Kind::User);
        files.ca = pki.dir.path().join("ca.pem");
        let probe = probe(server.addr, "agent-1", client_config(&files).unwrap()).await;
        let err = probe.result.expect_err("foreign certificate accepted");
        assert!(err.contains(client_alert), "{err}");
        server.assert_refused(probe.local, server_reason).await;
    }
}

#[tokio::test]
async fn expired_client_cert_is_refused() {
    let pki = Pki::new();
    let mut server = start(pki.leaf("agent-1", Kind::Agent), &[]).await;

    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let files = pki.leaf_valid("alice", Kind::User, now - 2 * day, now - day);
    let probe = probe(server.addr, "agent-1", client_config(&files).unwrap()).await;
    let err = probe.result.expect_err("expired certificate accepted");
    assert!(err.contains("CertificateExpired"), "{err}");
    server.assert_refused(probe.local, "expired").await;
}

#[tokio::test]
async fn client_without_cert_is_refused() {
    let pki = Pki::new();
    let mut server = start(pki.leaf("agent-1", Kind::Agent), &[]).await;

    let mut roots = rustls::RootCertStore::empty();
    for ca in parse_certs(&pki.dir.path().join("ca.pem"), pki.ca.cert_pem().as_bytes()).unwrap() {
        roots.add(ca).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut anonymous = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let probe = probe(server.addr, "agent-1", Arc::new(anonymous)).await;
    let err = probe.result.expect_err("anonymous client accepted");
    assert!(err.contains("CertificateRequired"), "{err}");
    server.assert_refused(probe.local, "no certificates").await;
}

#[tokio::test]
async fn identity_not_on_allow_list_is_refused() {
    let pki = Pki::new();
    let mut server = start(
        pki.leaf("agent-1", Kind::Agent),
        &["alice", "roomy-controller"],
    )
    .await;

    let probe = probe(server.addr, "agent-1", pki.client("mallory")).await;
    let err = probe.result.expect_err("mallory accepted");
    assert!(err.contains("CertificateUnknown"), "{err}");
    server
        .assert_refused(probe.local, "\"mallory\" is not on the allow-list")
        .await;

    // The same CA's listed identity still gets in.
    let probe = self::probe(server.addr, "agent-1", pki.client("alice")).await;
    probe.result.expect("alice accepted");
}

/// The agent's rule: controller certificates only. A user certificate with
/// the controller's name, made by an older roomyctl or by hand, is refused,
/// as is a certificate without a kind; the real controller's gets in and is
/// seen as a controller.
#[tokio::test]
async fn agents_let_in_controller_certificates_only() {
    let pki = Pki::new();
    let rule = ClientRule::only(&[Kind::Controller], vec![certs::CONTROLLER_NAME.into()]);
    let mut server = start_with(pki.leaf("agent-1", Kind::Agent), rule).await;
    let forged = |usage, marked: &[Kind]| {
        let (cert, key) = certs::forge(&pki.ca, certs::CONTROLLER_NAME, usage, marked).unwrap();
        let dir = pki.dir.path().join(format!("forged-{}", marked.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = certs::write_leaf(&dir, certs::CONTROLLER_NAME, &cert, &key).unwrap();
        client_config(&TlsFiles {
            cert,
            key,
            ca: pki.dir.path().join("ca.pem"),
        })
        .unwrap()
    };

    let probe_user = probe(server.addr, "agent-1", forged(Kind::User, &[Kind::User])).await;
    let err = probe_user.result.expect_err("user certificate accepted");
    assert!(err.contains("CertificateUnknown"), "{err}");
    server
        .assert_refused(
            probe_user.local,
            "\"roomy-controller\" holds a user certificate and only controller certificates may connect here",
        )
        .await;

    // Old-style: the controller's key usages, but no kind at all.
    let unmarked = probe(server.addr, "agent-1", forged(Kind::Controller, &[])).await;
    assert!(unmarked.result.is_err(), "unmarked certificate accepted");
    server
        .assert_refused(unmarked.local, "without a roomy kind")
        .await;

    let real = pki.leaf(certs::CONTROLLER_NAME, Kind::Controller);
    let ok = probe(server.addr, "agent-1", client_config(&real).unwrap()).await;
    ok.result.expect("the controller's certificate");
    let peer = server.yielded_from(ok.local).expect("controller yielded");
    assert_eq!(peer.kind, Some(Kind::Controller));
    assert!(
        server.yielded.lock().unwrap().len() == 1,
        "only the controller got in"
    );
}

#[test]
fn issued_certificates_carry_exactly_their_kind() {
    let pki = Pki::new();
    for kind in Kind::ALL {
        let name = format!("n-{kind}");
        let files = pki.leaf(&name, kind);
        let der = roomy_tls::parse_certs(&files.cert, &std::fs::read(&files.cert).unwrap())
            .unwrap()
            .swap_remove(0);
        assert_eq!(kind_of(&der), Some(kind));
        assert_eq!(identity_of(&der).as_deref(), Some(name.as_str()));
    }
    // Two kinds on one certificate, or none: no kind.
    for marked in [&[Kind::User, Kind::Controller][..], &[]] {
        let (cert, _) = certs::forge(&pki.ca, "odd", Kind::User, marked).unwrap();
        let der = roomy_tls::parse_certs(std::path::Path::new("odd.pem"), cert.as_bytes())
            .unwrap()
            .swap_remove(0);
        assert_eq!(kind_of(&der), None, "{marked:?}");
    }
}

#[test]
fn the_controller_name_is_refused_for_agents_and_users() {
    let pki = Pki::new();
    let now = OffsetDateTime::now_utc();
    let until = now + time::Duration::days(1);
    for (name, kind) in [
        ("roomy-controller", Kind::User),
        ("ROOMY-Controller", Kind::User),
        ("roomy-controller", Kind::Agent),
    ] {
        let err = certs::issue(&pki.ca, name, kind, now, until).unwrap_err();
        assert!(
            err.to_string().contains("reserved for the controller"),
            "{err}"
        );
    }
    certs::issue(&pki.ca, "roomy-controller", Kind::Controller, now, until).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let err = certs::init(fresh.path(), &[], &["roomy-controller".into()]).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    assert!(
        std::fs::read_dir(fresh.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[tokio::test]
async fn client_refuses_wrong_server() {
    let pki = Pki::new();
    let mut server = start(pki.leaf("agent-1", Kind::Agent), &[]).await;

    // A name the server certificate was not issued for.
    let probe = probe(server.addr, "agent-2", pki.client("alice")).await;
    let err = probe.result.expect_err("wrong server name accepted");
    assert!(
        err.contains("handshake") && err.contains("agent-2"),
        "{err}"
    );
    server
        .log_with(&format!("refused connection from {}", probe.local))
        .await;

    // A server whose CA the client does not trust.
    let other = Pki::named("Other CA");
    let mut files = other.leaf("alice", Kind::User);
    files.ca = other.dir.path().join("ca.pem");
    let probe = self::probe(server.addr, "agent-1", client_config(&files).unwrap()).await;
    let err = probe.result.expect_err("untrusted server accepted");
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn server_cert_reloads_without_restart() {
    let pki = Pki::new();
    let files = pki.leaf("agent-1", Kind::Agent);
    let mut server = start(files.clone(), &[]).await;
    let alice = pki.client("alice");
    let first = serial_of_file(&files.cert);

    let before = probe(server.addr, "agent-1", Arc::clone(&alice))
        .await
        .result
        .unwrap();
    assert_eq!(serial(&before), first);
    let channel = channel(
        &server.addr.to_string(),
        "agent-1",
        Arc::clone(&alice),
        WAIT,
    )
    .unwrap();
    health_check(channel.clone()).await.unwrap();

    // Reissue over the same files; reload() picks it up, a second reload is a no-op.
    pki.leaf("agent-1", Kind::Agent);
    let second = serial_of_file(&files.cert);
    assert_ne!(first, second);
    assert!(server.tls.reload().unwrap());
    assert!(!server.tls.reload().unwrap());
    let after = probe(server.addr, "agent-1", Arc::clone(&alice))
        .await
        .result
        .unwrap();
    assert_eq!(serial(&after), second);
    // The connection made before the reload carries on.
    health_check(channel).await.unwrap();

    // A broken file fails the reload and keeps the previous certificate.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let err = server.tls.reload().unwrap_err();
    assert!(
        err.to_string().contains(&files.cert.display().to_string()),
        "{err}"
    );
    let still = probe(server.addr, "agent-1", Arc::clone(&alice))
        .await
        .result
        .unwrap();
    assert_eq!(serial(&still), second);

    // The reloader notices changed files by itself.
    server.tls.spawn_reloader(Duration::from_millis(20));
    pki.leaf("agent-1", Kind::Agent);
    let third = serial_of_file(&files.cert);
    server.log_with("reloaded certificates").await;
    let polled = probe(server.addr, "agent-1", alice).await.result.unwrap();
    assert_eq!(serial(&polled), third);
}

#[tokio::test]
async fn init_writes_a_working_pki_once() {
    let dir = tempfile::tempdir().unwrap();
    let written = certs::init(dir.path(), &["host-1".into()], &["alice".into()]).unwrap();
    for rel in [
        "ca.pem",
        "ca.key",
        "controller.pem",
        "controller.key",
        "agents/host-1.pem",
        "agents/host-1.key",
        "users/alice.pem",
        "users/alice.key",
    ] {
        let path = dir.path().join(rel);
        assert!(written.contains(&path), "{rel} not reported");
        if rel.ends_with(".key") {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{rel}");
        }
    }
    assert_eq!(written.len(), 8);

    // The pieces fit: alice → controller, controller → agent.
    let controller_files = certs::pki_files(dir.path(), Kind::Controller, "");
    let controller = start(controller_files.clone(), &[]).await;
    let alice = client_config(&certs::pki_files(dir.path(), Kind::User, "alice")).unwrap();
    probe(controller.addr, certs::CONTROLLER_NAME, alice)
        .await
        .result
        .unwrap();
    let mut agent = start(certs::pki_files(dir.path(), Kind::Agent, "host-1"), &[]).await;
    let as_client = client_config(&controller_files).unwrap();
    probe(agent.addr, "host-1", as_client).await.result.unwrap();
    // An agent certificate is for serving only.
    let agent_as_client =
        client_config(&certs::pki_files(dir.path(), Kind::Agent, "host-1")).unwrap();
    let probe = probe(agent.addr, "host-1", agent_as_client).await;
    assert!(probe.result.is_err());
    agent
        .assert_refused(probe.local, "client authentication")
        .await;

    // More certificates can be issued from the saved CA later.
    let ca = certs::load_ca(dir.path()).unwrap();
    let now = OffsetDateTime::now_utc();
    certs::issue(
        &ca,
        "host_2",
        Kind::Agent,
        now,
        now + time::Duration::days(1),
    )
    .unwrap();

    // A second init into the same directory is refused and changes nothing.
    let ca_key = std::fs::read(dir.path().join("ca.key")).unwrap();
    let err = certs::init(dir.path(), &[], &[]).unwrap_err();
    assert!(matches!(err, CertError::CaExists { .. }), "{err}");
    assert!(err.to_string().contains("use a new directory"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), ca_key);

    // Names that would escape the directory are refused before anything is written.
    let fresh = tempfile::tempdir().unwrap();
    let err = certs::init(fresh.path(), &["../evil".into()], &[]).unwrap_err();
    assert!(matches!(err, CertError::Name { .. }), "{err}");
    assert!(!fresh.path().join("ca.key").exists());
}

#[tokio::test]
async fn sighup_reloads() {
    let pki = Pki::new();
    let files = pki.leaf("agent-1", Kind::Agent);
    let mut server = start(files.clone(), &[]).await;
    // Polling far too slow to matter: only the signal can cause a reload.
    server.tls.spawn_reloader(Duration::from_secs(3600));
    pki.leaf("agent-1", Kind::Agent);
    let reissued = serial_of_file(&files.cert);

    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    server.log_with("reloaded certificates").await;
    let seen = probe(server.addr, "agent-1", pki.client("alice"))
        .await
        .result
        .unwrap();
    assert_eq!(serial(&seen), reissued);
}
