//! Prometheus metrics: the text exposition format (0.0.4), the two metric
//! types the daemons keep (labelled counters and histograms), and the
//! `/metrics` HTTP endpoint that roomy-agent and roomy-controller serve.
//!
//! Hand-written rather than a client crate: the format is a few lines, and
//! the daemons mostly report gauges they compute at scrape time from state
//! they already hold, which a registry of live gauge objects would only
//! duplicate. The `render` closure given to [`serve`] builds the whole page
//! with an [`Exposition`] on each scrape.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::{self, Display, Write as _};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// The `Content-Type` of the text exposition format, version 0.0.4.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram upper bounds (seconds) for storage operations: a metadata-only
/// resize takes tens of milliseconds, a filesystem grow through a private
/// mount or a pool extension can take a minute or two.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The type of a metric family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up (reset on restart).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted in cumulative buckets, with their sum and count.
    Histogram,
}

impl Kind {
    /// The word used on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A page in the text exposition format, built family by family.
///
/// Call [`family`](Self::family) once per metric name, then
/// [`sample`](Self::sample) for each of its series; Prometheus requires a
/// family's samples to follow its header without other families between.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the `# HELP` and `# TYPE` lines that open a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_metric_name(name), "bad metric name {name:?}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_into(&mut self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// Writes one sample line: `name{label="value",...} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.line(name, labels, None, Value(value));
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }

    /// One sample line; `extra` is a trailing label (a histogram's `le`)
    /// and `value` is anything that prints as a Prometheus number, so
    /// integer counts are written exactly rather than through an f64.
    fn line(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
        value: impl Display,
    ) {
        debug_assert!(valid_metric_name(name), "bad metric name {name:?}");
        self.out.push_str(name);
        let mut first = true;
        for (k, v) in labels.iter().chain(extra.as_ref()) {
            debug_assert!(valid_label_name(k), "bad label name {k:?}");
            self.out.push(if first { '{' } else { ',' });
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_into(&mut self.out, v, true);
            self.out.push('"');
        }
        if !first {
            self.out.push('}');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, " {value}");
    }
}

/// A float as the exposition format spells it: `+Inf`, `-Inf`, `NaN`,
/// integers without a fraction, and exponents only for extreme magnitudes
/// (Rust's `Display` would otherwise write hundreds of digits).
struct Value(f64);

impl Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else if v != 0.0 && !(1e-6..1e21).contains(&v.abs()) {
            write!(f, "{v:e}")
        } else {
            // Shortest round-trip form; `1.0` prints as `1`.
            write!(f, "{v}")
        }
    }
}

/// Escapes per the format: HELP text escapes backslash and newline; label
/// values also escape the double quote.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Locks, ignoring poison: every update below leaves the map consistent,
/// so a panic elsewhere while holding the lock must not take metrics down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(labels: &[&str], values: &[&str]) -> Vec<String> {
    debug_assert_eq!(
        labels.len(),
        values.len(),
        "label values {values:?} do not match label names {labels:?}"
    );
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn label_pairs<'a>(labels: &[&'a str], values: &'a [String]) -> Vec<(&'a str, &'a str)> {
    labels
        .iter()
        .copied()
        .zip(values.iter().map(String::as_str))
        .collect()
}

/// A counter family with fixed label names, safe to share between threads.
///
/// Series appear on first use; [`init`](Self::init) creates one at zero
/// ahead of time so that `increase()` sees its first increment.
#[derive(Debug)]
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    /// A counter family; `labels` are the label names, in the order that
    /// every call passes their values.
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        debug_assert!(valid_metric_name(name), "bad metric name {name:?}");
        debug_assert!(labels.iter().all(|l| valid_label_name(l) && *l != "le"));
        Self {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one to the series with these label values.
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// Adds `n` to the series with these label values.
    pub fn add(&self, values: &[&str], n: u64) {
        let mut series = lock(&self.series);
        let c = series.entry(key(self.labels, values)).or_insert(0);
        *c = c.saturating_add(n);
    }

    /// Creates the series at zero if it does not exist yet.
    pub fn init(&self, values: &[&str]) {
        self.add(values, 0);
    }

    /// The current value of the series (zero if it was never touched).
    pub fn get(&self, values: &[&str]) -> u64 {
        lock(&self.series)
            .get(&key(self.labels, values))
            .copied()
            .unwrap_or(0)
    }

    /// Writes the family: its header always (so the metric is known even
    /// before anything happened), then its series sorted by label values.
    /// A counter without labels always has its one series, at zero at first.
    pub fn render(&self, out: &mut Exposition) {
        out.family(self.name, Kind::Counter, self.help);
        let series = lock(&self.series);
        if self.labels.is_empty() && series.is_empty() {
            out.line(self.name, &[], None, 0u64);
        }
        for (values, n) in series.iter() {
            out.line(self.name, &label_pairs(self.labels, values), None, n);
        }
    }
}

/// One histogram series: per-bucket (not yet cumulative) counts.
#[derive(Debug, Clone)]
struct HistogramSeries {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

/// A histogram family with fixed buckets and label names, safe to share
/// between threads.
#[derive(Debug)]
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, HistogramSeries>>,
}

impl HistogramVec {
    /// A histogram family; `bounds` are the finite bucket upper bounds in
    /// increasing order (`+Inf` is implied), e.g. [`DURATION_BUCKETS`].
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        debug_assert!(valid_metric_name(name), "bad metric name {name:?}");
        debug_assert!(labels.iter().all(|l| valid_label_name(l) && *l != "le"));
        debug_assert!(
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
            "bucket bounds must be finite and increasing: {bounds:?}"
        );
        Self {
            name,
            help,
            labels,
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one observation in the series with these label values.
    /// NaN is ignored: it would turn the series' `_sum` into NaN for good.
    pub fn observe(&self, values: &[&str], v: f64) {
        if v.is_nan() {
            return;
        }
        let bounds = self.bounds;
        let mut series = lock(&self.series);
        let s = series
            .entry(key(self.labels, values))
            .or_insert_with(|| HistogramSeries {
                buckets: vec![0; bounds.len()],
                count: 0,
                sum: 0.0,
            });
        // First bucket whose upper bound is >= v (buckets are `le`);
        // past the last finite bound, only `+Inf` (the count) holds it.
        let i = bounds.partition_point(|b| *b < v);
        if let Some(b) = s.buckets.get_mut(i) {
            *b += 1;
        }
        s.count += 1;
        s.sum += v;
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, values: &[&str], d: Duration) {
        self.observe(values, d.as_secs_f64());
    }

    /// Writes the family: per series, cumulative `_bucket` lines for each
    /// bound and `+Inf`, then `_sum` and `_count`; series sorted by label
    /// values. A histogram without labels always has its one series.
    pub fn render(&self, out: &mut Exposition) {
        out.family(self.name, Kind::Histogram, self.help);
        let bucket = format!("{}_bucket", self.name);
        let sum = format!("{}_sum", self.name);
        let count = format!("{}_count", self.name);
        let les: Vec<String> = self.bounds.iter().map(|b| Value(*b).to_string()).collect();

        let series = lock(&self.series);
        let empty;
        let mut all: Vec<(&[String], &HistogramSeries)> =
            series.iter().map(|(k, s)| (k.as_slice(), s)).collect();
        if self.labels.is_empty() && all.is_empty() {
            empty = HistogramSeries {
                buckets: vec![0; self.bounds.len()],
                count: 0,
                sum: 0.0,
            };
            all.push((&[], &empty));
        }
        for (values, s) in all {
            let labels = label_pairs(self.labels, values);
            let mut cumulative = 0u64;
            for (le, n) in les.iter().zip(&s.buckets) {
                cumulative += n;
                out.line(&bucket, &labels, Some(("le", le)), cumulative);
            }
            out.line(&bucket, &labels, Some(("le", "+Inf")), s.count);
            out.line(&sum, &labels, None, Value(s.sum));
            out.line(&count, &labels, None, s.count);
        }
    }
}

/// At most this many connections at once; more are closed on accept, so a
/// flood of clients cannot exhaust the daemon's file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this long (this also
/// closes idle keep-alive connections), so a silent client frees its slot.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A backstop for clients that send a request and then stop reading.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long a closing connection may take to finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves the metrics endpoint on `listener` until `shutdown` resolves:
/// `GET /metrics` answers `render()` as [`CONTENT_TYPE_TEXT`], `GET /` a
/// pointer to it, other paths 404 and other methods 405 (`HEAD` is
/// answered like `GET`, as HTTP requires).
///
/// `render` runs on the runtime for each scrape, so it should only read
/// state already in memory. Each connection is served in its own task with
/// timeouts, so a client that hangs holds nothing but its own connection.
/// Once `shutdown` resolves, no new connection is accepted and open ones
/// get a short grace period to finish their response.
///
/// Fails only if the listener itself is unusable; other accept errors
/// (such as running out of file descriptors) are waited out.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let result = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Over the limit: dropping the stream closes it.
                    if let Ok(slot) = slots.clone().try_acquire_owned() {
                        conns.spawn(serve_conn(stream, render.clone(), stop_rx.clone(), slot));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => break Err(e),
                Err(e) if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
                // EMFILE and the like: retrying at once would spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
        }
    };
    drop(listener);
    drop(stop_tx); // tells every connection to wind down
    let drain = async { while conns.join_next().await.is_some() {} };
    // Connections bound themselves by CLOSE_GRACE; this is a backstop.
    let _ = tokio::time::timeout(CLOSE_GRACE * 2, drain).await;
    conns.abort_all();
    result
}

async fn serve_conn(
    stream: TcpStream,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    mut stop: watch::Receiver<()>,
    _slot: OwnedSemaphorePermit,
) {
    // Responses are written in one go; don't let Nagle delay the tail.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req: Request<Incoming>| {
        let response = respond(&req, &*render);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        // Err means the server dropped its sender: it is shutting down.
        _ = stop.changed() => {}
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
}

fn respond(
    req: &Request<Incoming>,
    render: &(dyn Fn() -> String + Send + Sync),
) -> Response<Full<Bytes>> {
    let (body, content_type): (Bytes, &'static str) = match req.uri().path() {
        "/metrics" | "/" if !matches!(*req.method(), Method::GET | Method::HEAD) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        "/metrics" => (render().into(), CONTENT_TYPE_TEXT),
        "/" => (
            Bytes::from_static(b"Roomy metrics are at /metrics\n"),
            "text/plain; charset=utf-8",
        ),
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn exposition_escapes_and_formats() {
        let mut e = Exposition::new();
        e.family("roomy_x", Kind::Gauge, "a \\ b\nc \"q\"");
        e.sample("roomy_x", &[], 1.0);
        e.sample("roomy_x", &[("a", "q\"\\\nz"), ("b", "")], 0.5);
        e.sample("roomy_x", &[("a", "1")], f64::INFINITY);
        e.sample("roomy_x", &[("a", "2")], f64::NEG_INFINITY);
        e.sample("roomy_x", &[("a", "3")], f64::NAN);
        e.sample("roomy_x", &[("a", "4")], 1e21);
        e.sample("roomy_x", &[("a", "5")], -2.5e-7);
        e.sample("roomy_x", &[("a", "6")], 1_099_511_627_776.0);
        e.sample("roomy_x", &[("a", "7")], 0.0);
        assert_eq!(
            e.finish(),
            "# HELP roomy_x a \\\\ b\\nc \"q\"\n\
             # TYPE roomy_x gauge\n\
             roomy_x 1\n\
             roomy_x{a=\"q\\\"\\\\\\nz\",b=\"\"} 0.5\n\
             roomy_x{a=\"1\"} +Inf\n\
             roomy_x{a=\"2\"} -Inf\n\
             roomy_x{a=\"3\"} NaN\n\
             roomy_x{a=\"4\"} 1e21\n\
             roomy_x{a=\"5\"} -2.5e-7\n\
             roomy_x{a=\"6\"} 1099511627776\n\
             roomy_x{a=\"7\"} 0\n"
        );
        assert_eq!(Kind::Counter.as_str(), "counter");
        assert_eq!(Kind::Histogram.as_str(), "histogram");
    }

    #[test]
    fn counter_renders_sorted_and_counts() {
        static LABELS: &[&str] = &["result", "source"];
        let c = CounterVec::new("roomy_resizes_total", "Resizes.", LABELS);
        let mut e = Exposition::new();
        c.render(&mut e);
        assert_eq!(
            e.finish(),
            "# HELP roomy_resizes_total Resizes.\n# TYPE roomy_resizes_total counter\n"
        );

        c.inc(&["grown", "policy"]);
        c.add(&["failed", "api"], 3);
        c.inc(&["grown", "api"]);
        c.inc(&["grown", "policy"]);
        c.init(&["refused", "api"]);
        assert_eq!(c.get(&["grown", "policy"]), 2);
        assert_eq!(c.get(&["unchanged", "api"]), 0);
        let mut e = Exposition::new();
        c.render(&mut e);
        assert_eq!(
            e.finish(),
            "# HELP roomy_resizes_total Resizes.\n\
             # TYPE roomy_resizes_total counter\n\
             roomy_resizes_total{result=\"failed\",source=\"api\"} 3\n\
             roomy_resizes_total{result=\"grown\",source=\"api\"} 1\n\
             roomy_resizes_total{result=\"grown\",source=\"policy\"} 2\n\
             roomy_resizes_total{result=\"refused\",source=\"api\"} 0\n"
        );
    }

    #[test]
    fn unlabelled_counter_starts_at_zero() {
        let c = CounterVec::new("roomy_n_total", "N.", &[]);
        let mut e = Exposition::new();
        c.render(&mut e);
        assert!(e.finish().ends_with("counter\nroomy_n_total 0\n"));
        c.inc(&[]);
        let mut e = Exposition::new();
        c.render(&mut e);
        assert!(e.finish().ends_with("counter\nroomy_n_total 1\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        static LABELS: &[&str] = &["source"];
        static BOUNDS: &[f64] = &[0.1, 1.0, 2.5];
        let h = HistogramVec::new("roomy_d_seconds", "D.", LABELS, BOUNDS);
        for v in [0.05, 0.1, 0.7, 2.0, 100.0, f64::NAN] {
            h.observe(&["policy"], v);
        }
        h.observe_duration(&["api"], Duration::from_millis(250));
        let mut e = Exposition::new();
        h.render(&mut e);
        assert_eq!(
            e.finish(),
            "# HELP roomy_d_seconds D.\n\
             # TYPE roomy_d_seconds histogram\n\
             roomy_d_seconds_bucket{source=\"api\",le=\"0.1\"} 0\n\
             roomy_d_seconds_bucket{source=\"api\",le=\"1\"} 1\n\
             roomy_d_seconds_bucket{source=\"api\",le=\"2.5\"} 1\n\
             roomy_d_seconds_bucket{source=\"api\",le=\"+Inf\"} 1\n\
             roomy_d_seconds_sum{source=\"api\"} 0.25\n\
             roomy_d_seconds_count{source=\"api\"} 1\n\
             roomy_d_seconds_bucket{source=\"policy\",le=\"0.1\"} 2\n\
             roomy_d_seconds_bucket{source=\"policy\",le=\"1\"} 3\n\
             roomy_d_seconds_bucket{source=\"policy\",le=\"2.5\"} 4\n\
             roomy_d_seconds_bucket{source=\"policy\",le=\"+Inf\"} 5\n\
             roomy_d_seconds_sum{source=\"policy\"} 102.85\n\
             roomy_d_seconds_count{source=\"policy\"} 5\n"
        );
    }

    #[test]
    fn unlabelled_histogram_renders_empty_series() {
        let h = HistogramVec::new("roomy_h_seconds", "H.", &[], DURATION_BUCKETS);
        let mut e = Exposition::new();
        h.render(&mut e);
        let page = e.finish();
        assert!(page.contains("roomy_h_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(page.contains("roomy_h_seconds_bucket{le=\"120\"} 0\n"));
        assert!(page.contains("roomy_h_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(page.ends_with("roomy_h_seconds_sum 0\nroomy_h_seconds_count 0\n"));
    }

    /// Sends one raw request on its own connection and returns the reply.
    async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut reply))
            .await
            .expect("reply within 5s")
            .unwrap();
        reply
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Arc::new(CounterVec::new("roomy_t_total", "T.", &["k"]));
        c.inc(&["a\"b"]);
        let c2 = c.clone();
        let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
            let mut e = Exposition::new();
            c2.render(&mut e);
            e.finish()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, render, async {
            let _ = stopped.await;
        }));

        // A client that connects and says nothing must not hold up others.
        let _silent = TcpStream::connect(addr).await.unwrap();

        let reply = raw(addr, &get("/metrics")).await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{head}"
        );
        assert_eq!(
            body,
            "# HELP roomy_t_total T.\n# TYPE roomy_t_total counter\nroomy_t_total{k=\"a\\\"b\"} 1\n"
        );

        let reply = raw(addr, &get("/")).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("/metrics"));

        let reply = raw(addr, &get("/nope")).await;
        assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");

        let reply = raw(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            reply.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{reply}"
        );
        assert!(reply.to_ascii_lowercase().contains("allow: get, head\r\n"));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops after shutdown")
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }
}
