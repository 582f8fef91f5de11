//! Policy events to webhook targets (chat, paging): a JSON POST per event,
//! retried with backoff.
//!
//! ```toml
//! [[webhooks]]
//! name = "ops-chat"                       # optional; labels logs and metrics
//! url = "https://chat.example/hooks/T0K3N"
//! events = ["grown", "failed", "skipped", "health"] # default; also "would_grow"
//! max_attempts = 6                        # default
//! timeout_ms = 5000                       # per attempt, default
//! ca = "/etc/ssl/certs/ca-certificates.crt" # https roots, default
//! authorization = "Bearer s3cret"         # optional Authorization header
//! ```
//!
//! Each target has its own task, which reads the events from the store
//! (`delivery`), so a slow or dead target never holds up the others or the
//! agents' streams, and its place in the event log (a cursor) is in the
//! store too: a restart, or another controller taking the lead, resumes
//! where delivery stood. Delivery is at least once: a POST whose answer
//! was lost, or whose cursor was not yet saved when its controller died,
//! is sent again, so receivers that care can drop duplicates by `host`
//! and `seq`. An event is given up on (counted `dropped`) only after
//! `max_attempts`.
//!
//! HTTP is reqwest's (rustls with Roomy's ring provider and the configured
//! roots), so webhooks behave like other HTTP tools: proxies from
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY`, `Retry-After` in
//! seconds or as a date, 307/308 redirects followed, connections kept.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{self, HeaderValue};
use reqwest::{redirect, StatusCode};
use roomy_proto::v1::{Event, EventKind};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{debug, info, warn};
use url::Url;

use crate::leader::Leadership;
use crate::store::Store;
use delivery::{Delivery, Wake};

mod delivery;

const DEFAULT_MAX_ATTEMPTS: u32 = 6;
const DEFAULT_TIMEOUT_MS: u64 = 5000;
const DEFAULT_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
/// A server's Retry-After is honoured up to this, so one answer cannot stall a target.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
/// Response bytes kept for the log when a target refuses.
const SNIPPET: usize = 300;
/// Response bytes read at most; the rest is left unread.
const DRAIN_LIMIT: usize = 1 << 20;
const USER_AGENT: &str = concat!("roomy-controller/", env!("CARGO_PKG_VERSION"));
/// 307/308 hops followed per attempt.
const MAX_REDIRECTS: usize = 5;

/// One `[[webhooks]]` table of the controller config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Label for logs and metrics; without it the URL's scheme and host are
    /// used (never its path, which often holds the token).
    pub name: Option<String>,
    /// `http://` or `https://` host\[:port\]\[/path\]\[?query\]. Proxies come
    /// from the environment (`HTTPS_PROXY`, `NO_PROXY`, ...), as for curl.
    pub url: String,
    /// Event kinds to send: `grown`, `would_grow`, `skipped`, `failed`.
    /// Default `["grown", "failed", "skipped", "health"]`.
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Attempts per event, the first included (default 6).
    pub max_attempts: Option<u32>,
    /// Bound on one attempt: connect, TLS, request and response (default 5000).
    pub timeout_ms: Option<u64>,
    /// For https: PEM bundle of trusted roots (default
    /// `/etc/ssl/certs/ca-certificates.crt`).
    pub ca: Option<PathBuf>,
    /// Sent verbatim as the `Authorization` header, e.g. `Bearer TOKEN`.
    pub authorization: Option<String>,
}

fn default_events() -> Vec<String> {
    vec![
        "grown".into(),
        "failed".into(),
        "skipped".into(),
        "health".into(),
    ]
}

/// What is wrong with a webhook's configuration. Each message names the
/// webhook and the field, and says what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `url` is not `http(s)://host[:port][/path]`.
    #[error(
        "{webhook}: url {url:?} {problem}: write url = \"https://HOST[:PORT]/PATH\" (or http://)"
    )]
    Url {
        /// Which webhook.
        webhook: String,
        /// The URL as written.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `events` names a kind that does not exist.
    #[error("{webhook}: events has unknown kind {kind:?}: write events = [...] with any of \"grown\", \"would_grow\", \"skipped\", \"failed\", \"health\"")]
    UnknownKind {
        /// Which webhook.
        webhook: String,
        /// The unknown word.
        kind: String,
    },
    /// `events` is empty, so the webhook would never be called.
    #[error("{webhook}: events is empty: list at least one of \"grown\", \"would_grow\", \"skipped\", \"failed\" (or remove this [[webhooks]] table)")]
    NoEvents {
        /// Which webhook.
        webhook: String,
    },
    /// `max_attempts = 0`.
    #[error("{webhook}: max_attempts is 0: write max_attempts = 1 or more (1 means no retries; default 6)")]
    ZeroAttempts {
        /// Which webhook.
        webhook: String,
    },
    /// `timeout_ms = 0`.
    #[error("{webhook}: timeout_ms is 0: write timeout_ms = 1 or more, in milliseconds per attempt (default 5000)")]
    ZeroTimeout {
        /// Which webhook.
        webhook: String,
    },
    /// `name = ""`.
    #[error("{webhook}: name is empty: write name = \"SOME-LABEL\" or leave name out")]
    EmptyName {
        /// Which webhook.
        webhook: String,
    },
    /// `authorization` cannot be an HTTP header value.
    #[error("{webhook}: authorization is not a valid header value (line breaks or control characters): write authorization = \"Bearer TOKEN\" on one line")]
    Authorization {
        /// Which webhook.
        webhook: String,
    },
    /// Two webhooks would share one label in logs and metrics.
    #[error("two [[webhooks]] are labelled {label:?}: give each a distinct name = \"...\"")]
    DuplicateName {
        /// The shared label.
        label: String,
    },
    /// The CA bundle for an https webhook cannot be used.
    #[error(
        "{webhook}: ca {path:?}: {detail}: write ca = \"/path/to/roots.pem\" (PEM certificates)"
    )]
    Ca {
        /// Which webhook.
        webhook: String,
        /// The bundle's path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the client configuration.
    #[error("{webhook}: TLS client configuration: {source}")]
    Tls {
        /// Which webhook.
        webhook: String,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// reqwest could not build the HTTP client (e.g. a proxy variable of
    /// the environment that is not a URL).
    #[error("{webhook}: HTTP client: {detail}: check HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY in the controller's environment")]
    Client {
        /// Which webhook.
        webhook: String,
        /// reqwest's reason.
        detail: String,
    },
    /// [`Webhooks::start`] was called outside a tokio runtime.
    #[error("webhooks must be started inside the controller's tokio runtime")]
    NoRuntime,
}

impl WebhookConfig {
    /// Checks everything that can be checked without I/O: the URL, the
    /// event kinds, attempts, timeout, name and authorization.
    pub fn validate(&self) -> Result<(), WebhookError> {
        let webhook = self.describe();
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(WebhookError::EmptyName { webhook });
        }
        parse_url(&self.url).map_err(|problem| WebhookError::Url {
            webhook: webhook.clone(),
            url: self.url.clone(),
            problem,
        })?;
        if self.events.is_empty() {
            return Err(WebhookError::NoEvents { webhook });
        }
        if let Some(kind) = self.events.iter().find(|k| kind_of(k).is_none()) {
            return Err(WebhookError::UnknownKind {
                webhook,
                kind: kind.clone(),
            });
        }
        if self.max_attempts == Some(0) {
            return Err(WebhookError::ZeroAttempts { webhook });
        }
        if self.timeout_ms == Some(0) {
            return Err(WebhookError::ZeroTimeout { webhook });
        }
        if let Some(auth) = &self.authorization {
            if HeaderValue::from_str(auth).is_err() {
                return Err(WebhookError::Authorization { webhook });
            }
        }
        Ok(())
    }

    /// The label in logs and metrics: the name, else `scheme://host[:port]`
    /// (the path is left out because webhook URLs often carry the secret there).
    fn label(&self) -> String {
        match (&self.name, parse_url(&self.url)) {
            (Some(name), _) => name.clone(),
            (None, Ok(url)) => origin(&url),
            (None, Err(_)) => self.url.clone(),
        }
    }

    /// How error messages name this webhook.
    fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("[[webhooks]] name = {name:?}"),
            None => format!("[[webhooks]] {}", self.label()),
        }
    }
}

/// `scheme://host[:port]` of `url`: how logs and metrics name a webhook
/// without a name (never the path, which often holds the token).
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Parses a webhook URL with the `url` crate (WHATWG rules, as browsers
/// and reqwest do) and refuses what cannot be meant for a webhook; the
/// error is a phrase that follows the URL in a message.
fn parse_url(text: &str) -> Result<Url, String> {
    // The parser would silently strip or encode these; in a config file
    // they are a typo.
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains spaces or control characters".into());
    }
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => "must start with http:// or https://".into(),
        url::ParseError::EmptyHost => "has no host".into(),
        url::ParseError::InvalidPort => "has a port that is not a number from 1 to 65535".into(),
        url::ParseError::InvalidIpv6Address => {
            "has a [...] host that is not an IPv6 address".into()
        }
        url::ParseError::InvalidDomainCharacter | url::ParseError::IdnaError => {
            "has a host that is not a valid name (letters, digits, '-', '.')".into()
        }
        other => format!("cannot be parsed ({other})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with http:// or https://".into());
    }
    if url.host().is_none() {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("has user@ in it: put credentials in authorization = \"...\" instead".into());
    }
    if url.fragment().is_some() {
        return Err("has a #fragment, which is never sent".into());
    }
    if url.port() == Some(0) {
        return Err("has port 0: a port is a number from 1 to 65535".into());
    }
    Ok(url)
}

/// The config word for an event kind.
fn kind_of(word: &str) -> Option<EventKind> {
    match word {
        "grown" => Some(EventKind::Grown),
        "would_grow" => Some(EventKind::WouldGrow),
        "skipped" => Some(EventKind::Skipped),
        "failed" => Some(EventKind::Failed),
        "health" => Some(EventKind::Health),
        _ => None,
    }
}

/// The JSON body of every POST.
#[derive(serde::Serialize)]
struct Payload<'a> {
    host: &'a str,
    seq: u64,
    time_ms: i64,
    policy: &'a str,
    target: &'a str,
    kind: &'static str,
    reason: &'a str,
    from_bytes: u64,
    to_bytes: u64,
    duration_ms: u64,
    message: &'a str,
    text: String,
}

/// One line for chat, e.g.
/// `roomy: host1/node grown 1 GiB -> 1.5 GiB by policy grow80 (used 81% >= 80%)`.
fn text_line(event: &Event, kind: EventKind) -> String {
    let who = match (event.host.as_str(), event.target.as_str()) {
        ("", target) => target.to_owned(),
        (host, "pool") => format!("{host} pool"),
        (host, target) => format!("{host}/{target}"),
    };
    let sizes = if event.to_bytes > 0 {
        format!(
            " {} -> {}",
            roomy_proto::format_bytes(event.from_bytes),
            roomy_proto::format_bytes(event.to_bytes)
        )
    } else {
        String::new()
    };
    let what = match kind {
        EventKind::Grown => format!("grown{sizes}"),
        EventKind::WouldGrow => format!("would grow{sizes}"),
        EventKind::Failed => format!("failed to grow{sizes}"),
        EventKind::Skipped | EventKind::Unspecified => "skipped".to_owned(),
        EventKind::Health => format!("is {}", event.reason),
    };
    let mut line = format!("roomy: {who} {what}");
    if !event.policy.is_empty() {
        line.push_str(&format!(" by policy {}", event.policy));
    }
    if kind == EventKind::Skipped && !event.reason.is_empty() {
        line.push_str(&format!(": {}", event.reason));
    }
    // Chat shows one line: fold any line breaks of the sentence.
    let message = event
        .message
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_suffix('.').unwrap_or(&message);
    if !message.is_empty() {
        line.push_str(&format!(" ({message})"));
    }
    line
}

fn payload(event: &Event, kind: EventKind, word: &'static str) -> Bytes {
    let body = Payload {
        host: &event.host,
        seq: event.seq,
        time_ms: event.time_ms,
        policy: &event.policy,
        target: &event.target,
        kind: word,
        reason: &event.reason,
        from_bytes: event.from_bytes,
        to_bytes: event.to_bytes,
        duration_ms: event.duration_ms,
        message: &event.message,
        text: text_line(event, kind),
    };
    // A struct of strings and integers always serializes.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Knobs that tests shrink so they do not wait seconds.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    backoff_base: Duration,
    backoff_cap: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(8),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    ok: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Target {
    label: String,
    wake: Arc<Wake>,
    counts: Arc<Counts>,
    /// Dropped with the last clone of [`Webhooks`]: its task stops then.
    _stop: watch::Sender<()>,
}

/// The running webhook targets, one delivery task each. Cheap to clone;
/// the tasks stop once every clone is dropped.
#[derive(Clone)]
pub struct Webhooks {
    targets: Arc<[Target]>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.targets.iter().map(|t| &t.label))
            .finish()
    }
}

impl Webhooks {
    /// Validates `configs`, loads the CA bundles of https targets and
    /// spawns one delivery task per target, which sends the events
    /// `store` holds while `leadership` says this controller leads. Must
    /// run inside a tokio runtime unless `configs` is empty.
    pub fn start(
        configs: Vec<WebhookConfig>,
        store: Arc<dyn Store>,
        leadership: Leadership,
    ) -> Result<Webhooks, WebhookError> {
        Self::start_tuned(configs, Tuning::default(), store, leadership)
    }

    fn start_tuned(
        configs: Vec<WebhookConfig>,
        tuning: Tuning,
        store: Arc<dyn Store>,
        leadership: Leadership,
    ) -> Result<Webhooks, WebhookError> {
        // Check everything before spawning anything.
        let mut endpoints = Vec::with_capacity(configs.len());
        let mut tls_by_ca: HashMap<PathBuf, ClientConfig> = HashMap::new();
        let mut labels = Vec::new();
        for config in &configs {
            config.validate()?;
            let label = config.label();
            if labels.contains(&label) {
                return Err(WebhookError::DuplicateName { label });
            }
            labels.push(label.clone());
            let url = parse_url(&config.url).map_err(|problem| WebhookError::Url {
                webhook: config.describe(),
                url: config.url.clone(),
                problem,
            })?;
            let ca = config
                .ca
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CA));
            let tls = match tls_by_ca.get(&ca) {
                Some(tls) => tls.clone(),
                None => match tls_client(&ca, &config.describe()) {
                    Ok(tls) => {
                        tls_by_ca.insert(ca, tls.clone());
                        tls
                    }
                    // An http:// target needs roots only for a 307/308 to
                    // https; without the default bundle it gets none, and
                    // such a redirect fails its handshake with a message.
                    Err(_) if url.scheme() == "http" && config.ca.is_none() => {
                        tls_with_roots(RootCertStore::empty(), &config.describe())?
                    }
                    Err(e) => return Err(e),
                },
            };
            let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
            let client = reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .user_agent(USER_AGENT)
                .timeout(timeout)
                .redirect(redirect_policy())
                .tcp_nodelay(true)
                .build()
                .map_err(|e| WebhookError::Client {
                    webhook: config.describe(),
                    detail: chain(&e.without_url()),
                })?;
            let authorization = config.authorization.as_deref().map(|auth| {
                // Validated above; sensitive keeps it out of debug output.
                let mut value = HeaderValue::from_str(auth).unwrap_or(HeaderValue::from_static(""));
                value.set_sensitive(true);
                value
            });
            endpoints.push(Endpoint {
                label,
                url,
                client,
                authorization,
                timeout,
                max_attempts: config.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
                tuning,
                counts: Arc::new(Counts::default()),
            });
        }
        if !endpoints.is_empty() && tokio::runtime::Handle::try_current().is_err() {
            return Err(WebhookError::NoRuntime);
        }
        let targets = endpoints
            .into_iter()
            .zip(&configs)
            .map(|(endpoint, config)| {
                let (stop, stopped) = watch::channel(());
                let wake = Arc::new(Wake::default());
                let target = Target {
                    label: endpoint.label.clone(),
                    wake: wake.clone(),
                    counts: endpoint.counts.clone(),
                    _stop: stop,
                };
                let delivery = Delivery {
                    endpoint,
                    kinds: config.events.iter().filter_map(|k| kind_of(k)).collect(),
                    store: store.clone(),
                    leadership: leadership.clone(),
                    wake,
                };
                tokio::spawn(delivery.run(stopped));
                target
            })
            .collect();
        Ok(Webhooks { targets })
    }

    /// New events of `host` are in the store: every target reads on. Never
    /// waits; the targets' tasks read the store themselves.
    pub fn stored(&self, host: &str) {
        for target in self.targets.iter() {
            target.wake.host(host);
        }
    }

    /// Outcome counters per target, for the metrics endpoint: three rows per
    /// target (`ok`, `retried`, `dropped`), labelled by the webhook's name or,
    /// without one, `scheme://host[:port]`. `retried` counts each retry;
    /// `dropped` counts events given up on or not queued.
    pub fn counts(&self) -> Vec<(String, &'static str, u64)> {
        self.targets
            .iter()
            .flat_map(|t| {
                [
                    ("ok", &t.counts.ok),
                    ("retried", &t.counts.retried),
                    ("dropped", &t.counts.dropped),
                ]
                .map(|(what, n)| (t.label.clone(), what, n.load(Ordering::Relaxed)))
            })
            .collect()
    }
}

/// A rustls client trusting the PEM roots in `ca`; TLS 1.2 and 1.3, since
/// chat and paging services do not all speak 1.3.
fn tls_client(ca: &Path, webhook: &str) -> Result<ClientConfig, WebhookError> {
    let bad = |detail: String| WebhookError::Ca {
        webhook: webhook.to_owned(),
        path: ca.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    // System bundles may hold a few certificates webpki cannot parse; skip those.
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad("no usable CERTIFICATE found".into()));
    }
    tls_with_roots(roots, webhook)
}

fn tls_with_roots(roots: RootCertStore, webhook: &str) -> Result<ClientConfig, WebhookError> {
    // ring, as everywhere in Roomy: no second crypto library in the binary.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| WebhookError::Tls {
            webhook: webhook.to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Which redirects a webhook follows: 307 and 308, which keep the POST and
/// its body, up to [`MAX_REDIRECTS`] hops (reqwest drops `Authorization`
/// when a hop leaves the origin). A 301, 302 or 303 would turn the POST
/// into a GET without the event, which would then count as delivered: it
/// is returned as the answer and given up on with a message instead.
fn redirect_policy() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let keeps_post = matches!(
            attempt.status(),
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        );
        if !keeps_post {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// The delay a `Retry-After` value asks for, in either of its forms
/// (RFC 9110 10.2.3): delay-seconds, or an HTTP-date (a date already past
/// asks for none). `None` when it is neither.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An error and its causes on one line, e.g. `error sending request:
/// client error (Connect): tcp connect error: Connection refused (os error
/// 111)`. reqwest's own message names the URL, whose path may hold a
/// token: callers pass `without_url()`.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        // Some layers repeat their cause in their own message.
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// Whether rustls refused the handshake (a certificate or protocol
/// problem, which will not fix itself in seconds).
fn is_tls_refusal(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // io::Error::source skips its payload (tokio-rustls puts rustls'
        // error there, and hyper-util wraps that io::Error in another).
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(payload) => Some(payload as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    false
}

/// One target's delivery side, owned by its task.
struct Endpoint {
    label: String,
    url: Url,
    /// Its own client: its CA, proxies from the environment
    /// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, read at
    /// start), a timeout per attempt, the redirect policy above, and a
    /// connection kept for the next event.
    client: reqwest::Client,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    max_attempts: u32,
    tuning: Tuning,
    counts: Arc<Counts>,
}

/// How one attempt ended.
#[derive(Debug)]
enum Verdict {
    Ok,
    Retry {
        why: String,
        after: Option<Duration>,
    },
    GiveUp(String),
}

impl Tuning {
    /// Delay before retry number `retry` (1-based): base doubling to the cap,
    /// plus up to a tenth more so targets failing together spread out.
    fn backoff(&self, retry: u32) -> Duration {
        let doubled = self
            .backoff_base
            .saturating_mul(1u32 << (retry - 1).min(20));
        let delay = doubled.min(self.backoff_cap);
        // RandomState is freshly keyed per call: randomness without a crate.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(retry);
        let tenth = delay.as_nanos() as u64 / 10;
        delay + Duration::from_nanos(hasher.finish() % (tenth + 1))
    }
}

impl Endpoint {
    /// One event, `what` (`host/target kind seq N`) in logs, until it is
    /// delivered or given up on.
    async fn send(&self, body: Bytes, what: &str) {
        let mut attempt = 1;
        loop {
            match self.attempt(body.clone()).await {
                Verdict::Ok => {
                    self.counts.ok.fetch_add(1, Ordering::Relaxed);
                    debug!(webhook = %self.label, event = %what, attempt, "webhook delivered");
                    return;
                }
                Verdict::GiveUp(why) => {
                    self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    warn!(webhook = %self.label, event = %what, attempt, "webhook gave up: {why}");
                    return;
                }
                Verdict::Retry { why, .. } if attempt >= self.max_attempts => {
                    self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        webhook = %self.label, event = %what,
                        "webhook gave up after {attempt} attempts: {why}"
                    );
                    return;
                }
                Verdict::Retry { why, after } => {
                    self.counts.retried.fetch_add(1, Ordering::Relaxed);
                    let asked = after.unwrap_or_default().min(RETRY_AFTER_CAP);
                    let delay = self.tuning.backoff(attempt).max(asked);
                    info!(
                        webhook = %self.label, event = %what, attempt,
                        max_attempts = self.max_attempts, delay_ms = delay.as_millis() as u64,
                        "webhook attempt failed, retrying: {why}"
                    );
                    sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One POST, bounded by the timeout from connecting to the answer's
    /// end (reqwest's per-request timeout).
    async fn attempt(&self, body: Bytes) -> Verdict {
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return self.failure(e),
        };
        let status = response.status();
        let headers = response.headers();
        let after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        // Where a refused redirect pointed, by origin only (the path may
        // hold a token).
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| response.url().join(v).ok())
            .map(|to| origin(&to));
        let snippet = snippet(response).await;
        let detail = match snippet.is_empty() {
            true => format!("HTTP {status}"),
            false => format!("HTTP {status}: {snippet}"),
        };
        if status.is_success() {
            Verdict::Ok
        } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Verdict::Retry { why: detail, after }
        } else if status.is_redirection() {
            let to = location.map(|l| format!(" to {l}")).unwrap_or_default();
            Verdict::GiveUp(format!(
                "{detail} (a redirect{to} that would turn the POST into a GET is not followed: write the final URL)"
            ))
        } else {
            Verdict::GiveUp(detail)
        }
    }

    /// An attempt that got no answer: retried unless retrying cannot help.
    fn failure(&self, e: reqwest::Error) -> Verdict {
        let to = origin(&self.url);
        let e = e.without_url();
        let why = chain(&e);
        if e.is_timeout() {
            Verdict::Retry {
                why: format!("timed out after {} ms: {why}", self.timeout.as_millis()),
                after: None,
            }
        } else if e.is_redirect() || e.is_builder() {
            Verdict::GiveUp(format!("POST to {to}: {why}"))
        } else if is_tls_refusal(&e) {
            Verdict::GiveUp(format!("TLS handshake with {to} failed: {why}"))
        } else if e.is_connect() {
            Verdict::Retry {
                why: format!("cannot connect to {to}: {why}"),
                after: None,
            }
        } else {
            Verdict::Retry {
                why: format!("HTTP exchange with {to} failed: {why}"),
                after: None,
            }
        }
    }
}

/// The start of an answer's body, on one line, for the log; read (bounded)
/// also to finish the exchange so the connection can be kept.
async fn snippet(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    let mut read = 0;
    while read < DRAIN_LIMIT {
        let Ok(Some(data)) = response.chunk().await else {
            break;
        };
        read += data.len();
        let room = SNIPPET.saturating_sub(kept.len());
        kept.extend_from_slice(&data[..data.len().min(room)]);
    }
    String::from_utf8_lossy(&kept)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, WebhookCursor};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{HeaderMap, Response};
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::net::TcpListener;

    /// What a test server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        /// As sent: origin-form (`/hook`), or absolute-form
        /// (`http://host/hook`) and authority-form (`host:443`) at a proxy.
        target: String,
        at: Instant,
        headers: HeaderMap,
        body: Bytes,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// A loopback HTTP(S) server answering the n-th request with
    /// `statuses[n]` (the last one repeating). Returns its base URL.
    async fn server(statuses: Vec<u16>, tls: Option<tokio_rustls::TlsAcceptor>) -> (String, Log) {
        server_with(statuses, vec![], tls).await
    }

    /// [`server`] adding `headers` to every answer.
    async fn server_with(
        statuses: Vec<u16>,
        headers: Vec<(&'static str, String)>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (String, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Log = Arc::default();
        let seen = log.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (seen, statuses, tls) = (seen.clone(), statuses.clone(), tls.clone());
                let extra = headers.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let (seen, statuses, extra) =
                            (seen.clone(), statuses.clone(), extra.clone());
                        async move {
                            let method = req.method().to_string();
                            let target = req.uri().to_string();
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await?.to_bytes();
                            let n = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(Seen {
                                    method,
                                    target,
                                    at: Instant::now(),
                                    headers,
                                    body,
                                });
                                seen.len()
                            };
                            let status = statuses[(n - 1).min(statuses.len() - 1)];
                            let mut response = Response::new(Full::new(Bytes::from("nope\n")));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            for (name, value) in &extra {
                                response
                                    .headers_mut()
                                    .insert(*name, HeaderValue::from_str(value).unwrap());
                            }
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        (format!("{scheme}://127.0.0.1:{port}"), log)
    }

    /// A server that accepts connections and never answers; counts them.
    async fn silent_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                held.push(tcp);
            }
        });
        (format!("http://127.0.0.1:{port}"), accepted)
    }

    fn fast() -> Tuning {
        Tuning {
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(5),
        }
    }

    /// Webhooks as the only controller runs them, on a SQLite store of
    /// their own; [`Rig::deliver`] stores an event as the distributor does
    /// and says so. Derefs to the [`Webhooks`].
    struct Rig {
        webhooks: Webhooks,
        store: Arc<SqliteStore>,
        /// The next event's sequence: from the fixture's 7 up, so each is new.
        seq: AtomicU64,
        _dir: tempfile::TempDir,
    }

    impl Rig {
        /// Targets that were there before the fixture's events (their
        /// cursors start at the epoch), leading.
        fn start(configs: Vec<WebhookConfig>, tuning: Tuning) -> Result<Rig, WebhookError> {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SqliteStore::open(&dir.path().join("roomy.db")).unwrap());
            for c in &configs {
                store
                    .put_webhook_cursor(&c.label(), &WebhookCursor::default())
                    .unwrap();
            }
            let webhooks =
                Webhooks::start_tuned(configs, tuning, store.clone(), Leadership::always())?;
            Ok(Rig {
                webhooks,
                store,
                seq: AtomicU64::new(7),
                _dir: dir,
            })
        }

        fn deliver(&self, event: &Event) {
            let event = Event {
                seq: self.seq.fetch_add(1, Ordering::SeqCst),
                ..event.clone()
            };
            assert!(self.store.record_event(&event, None).unwrap());
            self.webhooks.stored(&event.host);
        }
    }

    impl std::ops::Deref for Rig {
        type Target = Webhooks;
        fn deref(&self) -> &Webhooks {
            &self.webhooks
        }
    }

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            name: None,
            url: url.to_owned(),
            events: default_events(),
            max_attempts: None,
            timeout_ms: Some(2000),
            ca: None,
            authorization: None,
        }
    }

    fn event(kind: EventKind) -> Event {
        Event {
            seq: 7,
            time_ms: 1_700_000_000_000,
            host: "host1".into(),
            policy: "grow80".into(),
            target: "node".into(),
            kind: kind as i32,
            reason: "used_percent".into(),
            from_bytes: 1 << 30,
            to_bytes: 3 << 29,
            message: "used 81% >= 80%".into(),
            duration_ms: 1200,
            container_id: "abc123".into(),
        }
    }

    fn count(webhooks: &Webhooks, what: &str) -> u64 {
        webhooks
            .counts()
            .into_iter()
            .find(|(_, w, _)| *w == what)
            .unwrap()
            .2
    }

    /// `what` (ok, retried, dropped) summed over every target.
    fn total(webhooks: &Webhooks, what: &str) -> u64 {
        webhooks
            .counts()
            .iter()
            .filter(|c| c.1 == what)
            .map(|c| c.2)
            .sum()
    }

    /// `what` of the target labelled `label`.
    fn outcome(webhooks: &Webhooks, label: &str, what: &str) -> u64 {
        webhooks
            .counts()
            .into_iter()
            .find(|(l, w, _)| l == label && *w == what)
            .unwrap()
            .2
    }

    /// Polls for up to 20 s: far above what a pass takes (milliseconds),
    /// so a machine twice as slow under a full CI load still passes.
    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..4000 {
            if done() {
                return;
            }
            sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn retries_server_errors_then_delivers() {
        let (base, log) = server(vec![500, 500, 200], None).await;
        let mut cfg = config(&format!("{base}/hook?x=1"));
        cfg.name = Some("ops".into());
        cfg.authorization = Some("Bearer s3cret".into());
        let webhooks = Rig::start(vec![cfg], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Grown));
        wait_until("ok", || count(&webhooks, "ok") == 1).await;

        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        let last = &seen[2];
        assert_eq!(last.target, "/hook?x=1");
        let header = |name: &str| last.headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("authorization"), "Bearer s3cret");
        assert_eq!(header("host"), base.trim_start_matches("http://"));
        assert_eq!(
            header("user-agent"),
            format!("roomy-controller/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(header("content-length"), last.body.len().to_string());
        let json: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "host": "host1", "seq": 7, "time_ms": 1_700_000_000_000i64,
                "policy": "grow80", "target": "node", "kind": "grown",
                "reason": "used_percent", "from_bytes": 1u64 << 30, "to_bytes": 3u64 << 29,
                "duration_ms": 1200, "message": "used 81% >= 80%",
                "text": "roomy: host1/node grown 1 GiB -> 1.5 GiB by policy grow80 (used 81% >= 80%)",
            })
        );
        assert_eq!(
            webhooks.counts(),
            vec![
                ("ops".to_owned(), "ok", 1),
                ("ops".to_owned(), "retried", 2),
                ("ops".to_owned(), "dropped", 0),
            ]
        );
    }

    #[tokio::test]
    async fn too_many_requests_is_retried() {
        let (base, log) = server(vec![429, 200], None).await;
        let webhooks = Rig::start(vec![config(&base)], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Failed));
        wait_until("ok", || count(&webhooks, "ok") == 1).await;
        assert_eq!(log.lock().unwrap().len(), 2);
        assert_eq!(log.lock().unwrap()[1].target, "/");
        assert_eq!(count(&webhooks, "retried"), 1);
    }

    #[tokio::test]
    async fn client_error_gives_up_at_once() {
        let (base, log) = server(vec![400], None).await;
        let webhooks = Rig::start(vec![config(&base)], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Grown));
        wait_until("dropped", || count(&webhooks, "dropped") == 1).await;
        sleep(Duration::from_millis(50)).await;
        assert_eq!(log.lock().unwrap().len(), 1);
        assert_eq!(count(&webhooks, "ok"), 0);
        assert_eq!(count(&webhooks, "retried"), 0);
        // The label leaves the URL's path out.
        assert_eq!(webhooks.counts()[0].0, base);
    }

    #[tokio::test]
    async fn only_wanted_kinds_are_sent() {
        let (base, log) = server(vec![200], None).await;
        let mut only_grown = config(&format!("{base}/a"));
        only_grown.name = Some("grown-only".into());
        only_grown.events = vec!["grown".into()];
        let mut defaults = config(&format!("{base}/b"));
        defaults.name = Some("defaults".into());
        let webhooks = Rig::start(vec![only_grown, defaults], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Skipped));
        webhooks.deliver(&event(EventKind::WouldGrow)); // nobody wants it
        webhooks.deliver(&event(EventKind::Unspecified)); // never sent
        webhooks.deliver(&event(EventKind::Grown));
        wait_until("3 deliveries", || total(&webhooks, "ok") == 3).await;
        sleep(Duration::from_millis(50)).await;
        let mut sent: Vec<(String, String)> = log
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                let json: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
                (s.target.clone(), json["kind"].as_str().unwrap().to_owned())
            })
            .collect();
        sent.sort();
        let expected = [("/a", "grown"), ("/b", "grown"), ("/b", "skipped")];
        assert_eq!(sent, expected.map(|(a, b)| (a.to_owned(), b.to_owned())));
    }

    #[tokio::test]
    async fn timeouts_and_refusals_are_retried_then_dropped() {
        let (base, accepted) = silent_server().await;
        let mut silent = config(&base);
        silent.timeout_ms = Some(50);
        silent.max_attempts = Some(2);
        // A port nobody listens on: bind, note it, close.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_url = format!("http://127.0.0.1:{}/", closed.local_addr().unwrap().port());
        drop(closed);
        let mut refused = config(&closed_url);
        refused.name = Some("refused".into());
        refused.max_attempts = Some(3);
        let webhooks = Rig::start(vec![silent, refused], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Failed));
        wait_until("both dropped", || total(&webhooks, "dropped") == 2).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let counts = webhooks.counts();
        assert_eq!((counts[1].1, counts[1].2), ("retried", 1));
        assert_eq!(
            (counts[4].0.as_str(), counts[4].1, counts[4].2),
            ("refused", "retried", 2)
        );
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&earlier, now), Some(Duration::ZERO));
        // RFC 9110's example date, in the IMF-fixdate form servers send.
        assert!(retry_after("Fri, 31 Dec 1999 23:59:59 GMT", now).is_some());
        for junk in ["", "soon", "-5", "1.5"] {
            assert_eq!(retry_after(junk, now), None, "{junk:?}");
        }
    }

    #[tokio::test]
    async fn retry_after_is_honoured_as_seconds_and_as_a_date() {
        // Backoff is 1-5 ms here: a gap of a second is the server's asking.
        let (seconds_base, seconds_log) =
            server_with(vec![503, 200], vec![("retry-after", "1".into())], None).await;
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
        let (date_base, date_log) =
            server_with(vec![429, 200], vec![("retry-after", date)], None).await;
        let mut by_seconds = config(&seconds_base);
        by_seconds.name = Some("seconds".into());
        let mut by_date = config(&date_base);
        by_date.name = Some("date".into());
        let webhooks = Rig::start(vec![by_seconds, by_date], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Grown));
        wait_until("both delivered", || total(&webhooks, "ok") == 2).await;
        for (what, log) in [("seconds", seconds_log), ("date", date_log)] {
            let seen = log.lock().unwrap().clone();
            assert_eq!(seen.len(), 2, "{what}");
            let gap = seen[1].at - seen[0].at;
            // The date has a resolution of one second: 1-2 s ahead.
            assert!(
                gap >= Duration::from_millis(900),
                "{what}: retried after {gap:?}"
            );
        }
    }

    #[tokio::test]
    async fn temporary_redirects_are_followed_others_refused() {
        let (final_base, final_log) = server(vec![200], None).await;
        let (moved_base, _) = server_with(
            vec![307],
            vec![("location", format!("{final_base}/after-307"))],
            None,
        )
        .await;
        let (see_other_base, see_other_log) = server_with(
            vec![301],
            vec![("location", format!("{final_base}/after-301?token=T0K3N"))],
            None,
        )
        .await;
        let mut temporary = config(&format!("{moved_base}/hook"));
        temporary.name = Some("temporary".into());
        temporary.authorization = Some("Bearer s3cret".into());
        let mut permanent_get = config(&format!("{see_other_base}/hook"));
        permanent_get.name = Some("moved".into());
        let webhooks = Rig::start(vec![temporary, permanent_get], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Grown));
        wait_until("both done", || {
            outcome(&webhooks, "temporary", "ok") == 1
                && outcome(&webhooks, "moved", "dropped") == 1
        })
        .await;
        let counts = webhooks.counts();
        assert_eq!((counts[0].1, counts[0].2), ("ok", 1));
        // The 301 is not retried, not followed as a GET, and not "ok".
        assert_eq!((counts[3].1, counts[3].2), ("ok", 0));
        assert_eq!((counts[4].1, counts[4].2), ("retried", 0));
        assert_eq!(see_other_log.lock().unwrap().len(), 1);
        let seen = final_log.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].target.as_str()),
            ("POST", "/after-307")
        );
        let json: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(json["kind"], "grown");
        // Another origin (port) than the configured one: no credentials.
        assert!(
            seen[0].headers.get("authorization").is_none(),
            "{:?}",
            seen[0].headers
        );
    }

    #[test]
    fn proxies_come_from_the_environment() {
        // The variables are the process's: set them in a child process that
        // runs only `proxy_child_process`, not here beside other tests.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "webhook::tests::proxy_child_process",
                "--nocapture",
            ])
            .env("ROOMY_WEBHOOK_PROXY_CHILD", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    /// The body of [`proxies_come_from_the_environment`]; does nothing
    /// unless started by it.
    #[tokio::test]
    async fn proxy_child_process() {
        if std::env::var_os("ROOMY_WEBHOOK_PROXY_CHILD").is_none() {
            return;
        }
        let (http_proxy, http_proxy_log) = server(vec![200], None).await;
        // Refuses every CONNECT: enough to see the tunnel asked for.
        let (https_proxy, https_proxy_log) = server(vec![403], None).await;
        let (direct, direct_log) = server(vec![200], None).await;
        std::env::set_var("HTTP_PROXY", &http_proxy);
        std::env::set_var("HTTPS_PROXY", &https_proxy);
        std::env::set_var("NO_PROXY", "127.0.0.1");
        // .invalid never resolves (RFC 6761): only a proxy can deliver it.
        let mut via_proxy = config("http://roomy-hook.invalid/hook");
        via_proxy.name = Some("via-proxy".into());
        let mut tunnel = config("https://roomy-hook.invalid/hook");
        tunnel.name = Some("tunnel".into());
        tunnel.max_attempts = Some(1);
        let mut no_proxy = config(&format!("{direct}/direct"));
        no_proxy.name = Some("no-proxy".into());
        let webhooks = Rig::start(vec![via_proxy, tunnel, no_proxy], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Grown));
        wait_until("all done", || {
            outcome(&webhooks, "via-proxy", "ok") == 1
                && outcome(&webhooks, "tunnel", "dropped") == 1
                && outcome(&webhooks, "no-proxy", "ok") == 1
        })
        .await;
        let seen = http_proxy_log.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].target.as_str()),
            ("POST", "http://roomy-hook.invalid/hook")
        );
        let seen = https_proxy_log.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].target.as_str()),
            ("CONNECT", "roomy-hook.invalid:443")
        );
        let seen = direct_log.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].target, "/direct");
    }

    /// The sequences a test server was sent, in order.
    fn seqs(log: &Log) -> Vec<u64> {
        log.lock()
            .unwrap()
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_target_that_is_down_holds_its_place_and_loses_nothing() {
        // Before, a bounded queue dropped what came while a target was down.
        let (base, log) = server(vec![503, 503, 503, 200], None).await;
        let webhooks = Rig::start(vec![config(&base)], fast()).unwrap();
        for _ in 0..40 {
            webhooks.deliver(&event(EventKind::Grown));
        }
        wait_until("40 delivered", || count(&webhooks, "ok") == 40).await;
        assert_eq!(count(&webhooks, "dropped"), 0);
        let mut want = vec![7, 7, 7];
        want.extend(7..47);
        assert_eq!(seqs(&log), want, "in order, each once after its retries");
    }

    #[tokio::test]
    async fn a_new_leader_resumes_where_delivery_stood() {
        let (base, log) = server(vec![200], None).await;
        let rig = Rig::start(vec![], fast()).unwrap();
        let store: Arc<dyn Store> = rig.store.clone();
        let (lead_a, state_a) = watch::channel(true);
        let a = Webhooks::start_tuned(
            vec![config(&base)],
            fast(),
            store.clone(),
            Leadership::from_watch(state_a),
        )
        .unwrap();
        // A new webhook starts from the moment its task first ran: the
        // events' times come from its cursor, not from the test's clock
        // (which read before the task ran on a loaded machine).
        wait_until("a's cursor", || {
            store.webhook_cursor(&a.targets[0].label).unwrap().is_some()
        })
        .await;
        let since = store
            .webhook_cursor(&a.targets[0].label)
            .unwrap()
            .unwrap()
            .since_ms;
        let old = Event {
            time_ms: since - 1,
            ..event(EventKind::Grown)
        };
        let now = Event {
            time_ms: since,
            ..event(EventKind::Grown)
        };
        let push = |e: &Event, to: &Webhooks| {
            let e = Event {
                seq: rig.seq.fetch_add(1, Ordering::SeqCst),
                ..e.clone()
            };
            store.record_event(&e, None).unwrap();
            to.stored(&e.host);
        };
        // The stored past is not sent; from its first moment on, all is.
        push(&old, &a);
        push(&now, &a);
        push(&now, &a);
        wait_until("two delivered", || count(&a, "ok") == 2).await;
        assert_eq!(seqs(&log), [8, 9]);

        // a steps down; what is stored meanwhile waits in the store.
        lead_a.send(false).unwrap();
        push(&now, &a);
        push(&now, &a);
        sleep(Duration::from_millis(300)).await;
        assert_eq!(seqs(&log), [8, 9], "a follower sends nothing");

        // Another controller leads: it sends those two, nothing again.
        let b = Webhooks::start_tuned(
            vec![config(&base)],
            fast(),
            store.clone(),
            Leadership::always(),
        )
        .unwrap();
        wait_until("b delivered two", || count(&b, "ok") == 2).await;
        push(&now, &b);
        wait_until("and the next", || count(&b, "ok") == 3).await;
        sleep(Duration::from_millis(100)).await;
        assert_eq!(seqs(&log), [8, 9, 10, 11, 12]);
        assert_eq!(count(&a, "ok"), 2);
    }

    fn tls_acceptor(pki: &Path) -> tokio_rustls::TlsAcceptor {
        use rustls_pki_types::PrivateKeyDer;
        let certs = CertificateDer::pem_file_iter(pki.join("controller.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.join("controller.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    #[tokio::test]
    async fn https_verifies_the_server_against_ca() {
        let pki = tempfile::tempdir().unwrap();
        roomy_certs::init(pki.path(), &[], &[]).unwrap();
        let other = tempfile::tempdir().unwrap();
        roomy_certs::init(other.path(), &[], &[]).unwrap();
        let (base, log) = server(vec![200], Some(tls_acceptor(pki.path()))).await;
        assert!(base.starts_with("https://127.0.0.1:"));

        let mut good = config(&format!("{base}/hook"));
        good.name = Some("good".into());
        good.ca = Some(pki.path().join("ca.pem"));
        let mut wrong_ca = config(&format!("{base}/hook"));
        wrong_ca.name = Some("wrong-ca".into());
        wrong_ca.ca = Some(other.path().join("ca.pem"));
        let webhooks = Rig::start(vec![good, wrong_ca], fast()).unwrap();
        webhooks.deliver(&event(EventKind::Grown));
        wait_until("both done", || {
            outcome(&webhooks, "good", "ok") == 1 && outcome(&webhooks, "wrong-ca", "dropped") == 1
        })
        .await;
        let counts = webhooks.counts();
        // A certificate the CA did not sign is not retried.
        assert_eq!((counts[3].1, counts[3].2), ("ok", 0));
        assert_eq!((counts[4].1, counts[4].2), ("retried", 0));
        assert_eq!(log.lock().unwrap().len(), 1);
        assert_eq!(log.lock().unwrap()[0].target, "/hook");
    }

    #[tokio::test]
    async fn unusable_ca_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config("https://chat.example/hook");
        cfg.ca = Some(dir.path().join("missing.pem"));
        let err = Rig::start(vec![cfg.clone()], fast()).err().unwrap();
        assert!(matches!(err, WebhookError::Ca { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        cfg.ca = Some(empty);
        let err = Rig::start(vec![cfg], fast()).err().unwrap().to_string();
        assert!(err.contains("no usable CERTIFICATE"), "{err}");
        assert!(err.contains("write ca = "), "{err}");
    }

    #[test]
    fn start_refuses_duplicates_and_needs_a_runtime() {
        let a = config("http://chat.example/one");
        let b = config("http://chat.example/two");
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("r.db")).unwrap());
        let start = |configs| Webhooks::start(configs, store.clone(), Leadership::always());
        let err = start(vec![a.clone(), b]).unwrap_err();
        assert!(matches!(err, WebhookError::DuplicateName { .. }), "{err}");
        assert!(err.to_string().contains("\"http://chat.example\""), "{err}");
        assert!(err.to_string().contains("distinct name"), "{err}");
        assert!(matches!(
            start(vec![a]).unwrap_err(),
            WebhookError::NoRuntime
        ));
        // Nothing configured: nothing to spawn, no runtime needed.
        let none = start(vec![]).unwrap();
        none.stored("host1");
        assert!(none.counts().is_empty());
    }

    #[test]
    fn validation_names_the_field_and_the_fix() {
        let check = |cfg: WebhookConfig| cfg.validate().unwrap_err().to_string();
        let err = check(config("ftp://chat.example/hook"));
        assert!(
            err.contains("url \"ftp://chat.example/hook\" must start with http:// or https://"),
            "{err}"
        );
        assert!(
            err.contains("write url = \"https://HOST[:PORT]/PATH\""),
            "{err}"
        );

        let mut cfg = config("https://chat.example/hook");
        cfg.name = Some("ops".into());
        cfg.events = vec!["grown".into(), "shrunk".into()];
        let err = check(cfg.clone());
        assert!(
            err.starts_with("[[webhooks]] name = \"ops\": events has unknown kind \"shrunk\""),
            "{err}"
        );
        assert!(err.contains("\"would_grow\""), "{err}");

        cfg.events = vec![];
        assert!(check(cfg.clone()).contains("events is empty"));

        cfg.events = vec!["failed".into()];
        cfg.max_attempts = Some(0);
        let err = check(cfg.clone());
        assert!(
            err.contains("max_attempts is 0: write max_attempts = 1 or more"),
            "{err}"
        );

        cfg.max_attempts = Some(1);
        cfg.timeout_ms = Some(0);
        assert!(check(cfg.clone()).contains("timeout_ms is 0"));

        cfg.timeout_ms = None;
        cfg.authorization = Some("Bearer a\nb".into());
        assert!(check(cfg.clone()).contains("authorization is not a valid header value"));

        cfg.authorization = None;
        cfg.validate().unwrap();

        for (url, problem) in [
            ("https://", "has no host"),
            ("http://:80/x", "has no host"),
            ("http://chat.example:99999/", "1 to 65535"),
            ("http://chat.example:0/", "port 0"),
            ("http://chat.example:+80/", "1 to 65535"),
            ("http://user:pw@chat.example/", "authorization = "),
            ("http://chat example/", "spaces"),
            ("http://chat.example/#x", "#fragment"),
            ("http://ch@t!/", "user@"),
            ("http://chat<x>/", "not a valid name"),
            ("http://[::1/", "not an IPv6 address"),
            ("http://[zz]/", "not an IPv6 address"),
            ("chat.example/hook", "must start with"),
            ("mailto:ops@chat.example", "must start with"),
        ] {
            let err = check(config(url));
            assert!(err.contains(problem), "{url}: {err}");
        }
    }

    #[test]
    fn urls_parse_and_labels_leave_the_path_out() {
        let url = parse_url("HTTPS://Chat.Example/services/T0K3N?x=1").unwrap();
        assert_eq!(url.scheme(), "https");
        assert_eq!(
            (url.host_str(), url.port_or_known_default()),
            (Some("chat.example"), Some(443))
        );
        assert_eq!(url.path(), "/services/T0K3N");
        assert_eq!(url.query(), Some("x=1"));
        assert_eq!(origin(&url), "https://chat.example");

        let url = parse_url("http://10.0.0.9:8080").unwrap();
        assert_eq!(
            (origin(&url), url.path()),
            ("http://10.0.0.9:8080".into(), "/")
        );

        let url = parse_url("http://[::1]:9000?token=a").unwrap();
        assert_eq!(origin(&url), "http://[::1]:9000");
        assert_eq!(url.query(), Some("token=a"));

        let url = parse_url("http://pager.local:80/p").unwrap();
        assert_eq!(origin(&url), "http://pager.local");

        let mut cfg = config("https://chat.example/hooks/T0K3N");
        assert_eq!(cfg.label(), "https://chat.example");
        cfg.name = Some("ops".into());
        assert_eq!(cfg.label(), "ops");
    }

    #[test]
    fn toml_table_defaults_and_unknown_fields() {
        #[derive(serde::Deserialize)]
        struct File {
            webhooks: Vec<WebhookConfig>,
        }
        let file: File =
            toml::from_str("[[webhooks]]\nurl = \"https://chat.example/x\"\n").unwrap();
        let cfg = &file.webhooks[0];
        assert_eq!(cfg.events, ["grown", "failed", "skipped", "health"]);
        assert_eq!((cfg.max_attempts, cfg.timeout_ms), (None, None));
        cfg.validate().unwrap();
        let err = toml::from_str::<File>("[[webhooks]]\nurl = \"http://a\"\nretries = 3\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("retries"), "{err}");
    }

    #[test]
    fn text_lines() {
        let text = |e: &Event| text_line(e, EventKind::try_from(e.kind).unwrap());
        assert_eq!(
            text(&event(EventKind::Grown)),
            "roomy: host1/node grown 1 GiB -> 1.5 GiB by policy grow80 (used 81% >= 80%)"
        );
        let mut pool = event(EventKind::WouldGrow);
        pool.target = "pool".into();
        pool.message = "Data 91% used\nof 100 GiB.".into();
        assert_eq!(
            text(&pool),
            "roomy: host1 pool would grow 1 GiB -> 1.5 GiB by policy grow80 (Data 91% used of 100 GiB)"
        );
        let mut skipped = event(EventKind::Skipped);
        skipped.reason = "cap_reached".into();
        skipped.message = "Cap 8 GiB reached.".into();
        assert_eq!(
            text(&skipped),
            "roomy: host1/node skipped by policy grow80: cap_reached (Cap 8 GiB reached)"
        );
        let mut failed = event(EventKind::Failed);
        failed.to_bytes = 0;
        failed.message = String::new();
        assert_eq!(
            text(&failed),
            "roomy: host1/node failed to grow by policy grow80"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_small_jitter() {
        let tuning = Tuning::default();
        for (retry, ms) in [
            (1, 250),
            (2, 500),
            (3, 1000),
            (4, 2000),
            (5, 4000),
            (6, 8000),
            (30, 8000),
        ] {
            let delay = tuning.backoff(retry);
            let base = Duration::from_millis(ms);
            assert!(
                delay >= base && delay <= base + base / 10,
                "{retry}: {delay:?}"
            );
        }
    }
}
