//! One audit record per request, as OCSF HTTP Activity (class 4002), written to
//! the same kinds of sinks as the daemon's events. Records carry no prompt text;
//! `audit_body_sha256 = true` adds a SHA-256 of the request body.
//!
//! Requests never wait for the audit writer: records go through a bounded queue
//! and a record that does not fit is counted as dropped (the totals are printed
//! when the proxy stops), never lost silently.

use serde::Serialize;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use warden_events::ocsf::{OCSF_VERSION, PRODUCT, Product};
use warden_events::sink::{self, SinkSpec, Writer};
use warden_runtime::sync::Locked;

const QUEUE: usize = 65_536;
const BATCH: usize = 256;
/// How long records gather before the writer takes them (unless a quarter
/// of the queue fills first).
const GATHER: Duration = Duration::from_millis(5);

/// The upstream connection a request went over (for correlation with the
/// kernel's connection events).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamConn {
    pub addr: SocketAddr,
    pub local: SocketAddr,
    /// SO_COOKIE of the proxy's socket (the kernel's id for the connection).
    pub cookie: u64,
    /// The connection was opened for an earlier request of the same identity
    /// (its kernel connection event and report came with that one).
    pub reused: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Record {
    pub request_id: String,
    pub time_ms: u64,
    pub client: Option<SocketAddr>,
    pub http_version: &'static str,
    pub identity: Option<String>,
    pub method: String,
    /// The canonical path when the target was canonical, else the raw target (cut).
    pub path: String,
    pub query: Option<String>,
    pub user_agent: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    /// Why the proxy refused or failed the request (`None`: forwarded).
    pub refused: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub ttfb: Option<Duration>,
    pub duration: Duration,
    pub upstream: Option<UpstreamConn>,
    pub body_sha256: Option<String>,
    /// The response ended early (client gone, upstream failed or timed out).
    pub incomplete: Option<&'static str>,
    /// Days the client certificate has left, when fewer than 30.
    pub client_cert_days_left: Option<i64>,
    /// Flagging content rules the prompt matched (never the text).
    pub content_flags: Vec<String>,
}

pub use warden_runtime::clock::unix_ms as now_ms;

fn activity(method: &str) -> u8 {
    match method {
        "CONNECT" => 1,
        "DELETE" => 2,
        "GET" => 3,
        "HEAD" => 4,
        "OPTIONS" => 5,
        "POST" => 6,
        "PUT" => 7,
        "TRACE" => 8,
        "PATCH" => 9,
        _ => 99,
    }
}

/// OCSF HTTP Activity, as a `Value` (tests and tools; the writer serializes
/// [`HttpActivity`] straight to bytes).
pub fn ocsf(r: &Record) -> Value {
    serde_json::to_value(HttpActivity::new(r)).expect("plain data serializes")
}

/// A record's OCSF HTTP Activity line.
pub fn ocsf_line(r: &Record) -> String {
    serde_json::to_string(&HttpActivity::new(r)).expect("plain data serializes")
}

/// OCSF HTTP Activity (class 4002), borrowed from a [`Record`]: serialized
/// straight to bytes, with no `Value` tree per request.
#[derive(Serialize)]
struct HttpActivity<'a> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u8,
    category_name: &'static str,
    activity_id: u8,
    type_uid: u32,
    time: u64,
    start_time: u64,
    end_time: u64,
    duration: u64,
    severity_id: u8,
    status_id: u8,
    action_id: u8,
    disposition_id: u8,
    message: String,
    metadata: Metadata<'a>,
    http_request: HttpRequest<'a>,
    http_response: HttpResponse,
    traffic: Traffic,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<&'a str>,
    unmapped: Unmapped<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    uid: &'a str,
    version: &'static str,
    profiles: [&'static str; 2],
    log_name: &'static str,
    product: Product,
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    uid: &'a str,
    /// Absent when the HTTP layer refused the request before its method.
    #[serde(skip_serializing_if = "str::is_empty")]
    http_method: &'a str,
    version: &'static str,
    url: Url<'a>,
    length: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
}

#[derive(Serialize)]
struct Url<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string: Option<&'a str>,
}

#[derive(Serialize)]
struct HttpResponse {
    code: u16,
    length: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency: Option<u64>,
}

#[derive(Serialize)]
struct Traffic {
    bytes_in: u64,
    bytes_out: u64,
}

#[derive(Serialize)]
struct Endpoint {
    ip: std::net::IpAddr,
    port: u16,
}

#[derive(Serialize)]
struct Actor<'a> {
    user: User<'a>,
}

#[derive(Serialize)]
struct User<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    warden: Warden<'a>,
}

#[derive(Serialize)]
struct Warden<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttfb_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_cookie: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_local_port: Option<u16>,
    /// Only ever `true`: absent for a request that opened its connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_reused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    incomplete: Option<&'static str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    content_rules: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_days_left: Option<i64>,
}

impl<'a> HttpActivity<'a> {
    fn new(r: &'a Record) -> Self {
        let allowed = r.refused.is_none();
        let act = activity(&r.method);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let duration = r.duration.as_millis() as u64;
        Self {
            class_uid: 4002,
            class_name: "HTTP Activity",
            category_uid: 4,
            category_name: "Network Activity",
            activity_id: act,
            type_uid: 400200 + u32::from(act),
            time: r.time_ms,
            start_time: r.time_ms,
            end_time: r.time_ms + duration,
            duration,
            severity_id: if allowed { 1 } else { 3 },
            status_id: if allowed && r.status < 400 && r.incomplete.is_none() {
                1
            } else {
                2
            },
            action_id: if allowed { 1 } else { 2 },
            disposition_id: if allowed { 1 } else { 2 },
            message: match &r.refused {
                None => format!("{} {} {}", r.method, r.path, r.status),
                Some(why) if r.method.is_empty() => format!("refused: {why}"),
                Some(why) => format!("{} {} refused: {why}", r.method, r.path),
            },
            metadata: Metadata {
                uid: &r.request_id,
                version: OCSF_VERSION,
                profiles: ["host", "security_control"],
                log_name: "proxy",
                product: PRODUCT,
            },
            http_request: HttpRequest {
                uid: &r.request_id,
                http_method: &r.method,
                version: r.http_version,
                url: Url {
                    path: &r.path,
                    query_string: r.query.as_deref(),
                },
                length: r.bytes_in,
                user_agent: r.user_agent.as_deref(),
            },
            http_response: HttpResponse {
                code: r.status,
                length: r.bytes_out,
                latency: r.ttfb.map(|t| t.as_millis() as u64),
            },
            traffic: Traffic {
                bytes_in: r.bytes_in,
                bytes_out: r.bytes_out,
            },
            src_endpoint: r.client.map(|c| Endpoint {
                ip: c.ip().to_canonical(),
                port: c.port(),
            }),
            dst_endpoint: r.upstream.map(|u| Endpoint {
                ip: u.addr.ip(),
                port: u.addr.port(),
            }),
            actor: r.identity.as_deref().map(|name| Actor {
                user: User { name },
            }),
            status_detail: r.refused.as_deref().or(r.incomplete),
            unmapped: Unmapped {
                warden: Warden {
                    model: r.model.as_deref(),
                    ttfb_ms: r.ttfb.map(ms),
                    socket_cookie: r.upstream.map(|u| u.cookie),
                    upstream_local_port: r.upstream.map(|u| u.local.port()),
                    upstream_reused: r.upstream.filter(|u| u.reused).map(|_| true),
                    body_sha256: r.body_sha256.as_deref(),
                    incomplete: r.incomplete,
                    content_rules: &r.content_flags,
                    client_certificate_days_left: r.client_cert_days_left,
                },
            },
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// The audit writer: a bounded queue and one thread writing every sink.
/// What the audit writer writes: a request's record, or a security finding
/// (brute force), already encoded.
enum Item {
    Request(Box<Record>),
    Finding(Value, u64),
}

/// The records waiting for the writer. A request's record is a push under a
/// lock: the writer is woken only when the queue was empty and it sleeps
/// (once per burst, not per request), or a quarter full; otherwise it takes
/// what gathered every [`GATHER`]. A wake-up per record (a futex call, and
/// the writer's thread scheduled in between requests) cost more than
/// writing the record.
#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    items: Vec<Item>,
    /// Cleared by `finish`: no more records are taken.
    closed: bool,
    /// The writer waits for a first record (it must be woken).
    idle: bool,
}

impl Queue {
    /// Queues `item`; false when the queue is full or closed.
    fn push(&self, item: Item) -> bool {
        let mut p = self.pending.locked();
        if p.closed || p.items.len() >= QUEUE {
            return false;
        }
        p.items.push(item);
        if (p.idle && p.items.len() == 1) || p.items.len() == QUEUE / 4 {
            p.idle = false;
            self.wake.notify_one();
        }
        true
    }

    fn close(&self) {
        self.pending.locked().closed = true;
        self.wake.notify_one();
    }

    /// What gathered, once there is some; `None` once closed and drained.
    fn take(&self) -> Option<Vec<Item>> {
        let mut p = self.pending.locked();
        while p.items.is_empty() && !p.closed {
            p.idle = true;
            p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.idle = false;
        if !p.closed && p.items.len() < QUEUE / 4 {
            p = self
                .wake
                .wait_timeout_while(p, GATHER, |p| !p.closed && p.items.len() < QUEUE / 4)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if p.items.is_empty() && p.closed {
            return None;
        }
        Some(std::mem::take(&mut p.items))
    }
}

pub struct Audit {
    queue: Arc<Queue>,
    /// The daemon's report channel: each encoded record also goes there, for
    /// `warden events` (set once the reporter runs).
    live: Arc<std::sync::OnceLock<crate::report::Reporter>>,
    pub counters: Arc<Counters>,
    /// Request metrics, counted as records are emitted.
    pub metrics: crate::metrics::ProxyMetrics,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Audit {
    pub fn start(specs: &[SinkSpec]) -> std::io::Result<Self> {
        let mut writers = Vec::new();
        for s in specs {
            writers.push((sink::open(s)?, sink::Framer::new(s)));
        }
        let queue = Arc::new(Queue::default());
        let rx = queue.clone();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let live = Arc::new(std::sync::OnceLock::new());
        let to_daemon = live.clone();
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(rx, writers, &c, &to_daemon))?;
        Ok(Self {
            live,
            queue,
            counters,
            metrics: Default::default(),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Sends every record from now on to the daemon too (its live view).
    pub fn report_to(&self, reporter: crate::report::Reporter) {
        let _ = self.live.set(reporter);
    }

    pub fn emit(&self, r: Record) {
        let group =
            super::routes::find(&r.method, &r.path).map_or("none", |(route, _)| route.group.name());
        self.metrics
            .request(r.identity.as_deref(), group, r.status, r.duration, r.ttfb);
        self.queue(Item::Request(Box::new(r)));
    }

    /// A security finding (OCSF Detection Finding) for the audit sinks.
    pub fn finding(&self, event: Value) {
        self.queue(Item::Finding(event, now_ms()));
    }

    fn queue(&self, item: Item) {
        if !self.queue.push(item) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes what is queued and stops the writer.
    pub fn finish(&self) {
        self.queue.close();
        if let Some(t) = self.thread.locked().take() {
            let _ = t.join();
        }
    }
}

type SinkWriter = (Box<dyn Writer>, sink::Framer);

fn write_loop(
    rx: Arc<Queue>,
    mut writers: Vec<SinkWriter>,
    c: &Counters,
    live: &std::sync::OnceLock<crate::report::Reporter>,
) {
    let mut seq = 0u64;
    while let Some(items) = rx.take() {
        for batch in items.chunks(BATCH) {
            write_batch(batch, &mut writers, &mut seq, c, live);
        }
    }
}

/// Encodes `batch` once and writes it to every sink.
fn write_batch(
    batch: &[Item],
    writers: &mut [SinkWriter],
    seq: &mut u64,
    c: &Counters,
    live: &std::sync::OnceLock<crate::report::Reporter>,
) {
    // (line, syslog severity, time, MSGID)
    let lines: Vec<(String, u8, u64, &str)> = batch
        .iter()
        .map(|item| match item {
            Item::Request(r) => (
                ocsf_line(r),
                if r.refused.is_some() { 4 } else { 6 },
                r.time_ms,
                "http",
            ),
            Item::Finding(v, t) => (warden_events::pipeline::to_json(v), 4, *t, "finding"),
        })
        .collect();
    if let Some(reporter) = live.get() {
        for (line, ..) in &lines {
            reporter.audit(line);
        }
    }
    let first_seq = *seq;
    *seq += lines.len() as u64;
    for (w, framer) in writers.iter_mut() {
        let msgs: Vec<Vec<u8>> = lines
            .iter()
            .zip(first_seq + 1..)
            .map(|((line, severity, time_ms, msgid), seq)| {
                framer.frame(line, *severity, *time_ms, msgid, seq)
            })
            .collect();
        let out = w.write_batch(&msgs);
        c.written.fetch_add(out.ok as u64, Ordering::Relaxed);
        c.failed.fetch_add(out.failed as u64, Ordering::Relaxed);
        if let Some(e) = out.error {
            tracing::warn!("audit sink: {e}");
        }
    }
}
