//! One audit record per request, as OCSF HTTP Activity (class 4002), written to
//! the same kinds of sinks as the daemon's events. Records carry no prompt text;
//! `audit_body_sha256 = true` adds a SHA-256 of the request body.
//!
//! Requests never wait for the audit writer: records go through a bounded queue
//! and a record that does not fit is counted as dropped (the totals are printed
//! when the proxy stops), never lost silently.

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warden_events::ocsf::OCSF_VERSION;
use warden_events::sink::{self, SinkSpec, Writer};
use warden_runtime::sync::Locked;

const QUEUE: usize = 65_536;
const BATCH: usize = 256;

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

/// OCSF HTTP Activity.
pub fn ocsf(r: &Record) -> Value {
    let allowed = r.refused.is_none();
    let act = activity(&r.method);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut o = json!({
        "class_uid": 4002,
        "class_name": "HTTP Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": act,
        "type_uid": 400200 + u32::from(act),
        "time": r.time_ms,
        "start_time": r.time_ms,
        "end_time": r.time_ms + r.duration.as_millis() as u64,
        "duration": r.duration.as_millis() as u64,
        "severity_id": if allowed { 1 } else { 3 },
        "status_id": if allowed && r.status < 400 && r.incomplete.is_none() { 1 } else { 2 },
        "action_id": if allowed { 1 } else { 2 },
        "disposition_id": if allowed { 1 } else { 2 },
        "message": match &r.refused {
            None => format!("{} {} {}", r.method, r.path, r.status),
            Some(why) if r.method.is_empty() => format!("refused: {why}"),
            Some(why) => format!("{} {} refused: {why}", r.method, r.path),
        },
        "metadata": {
            "uid": r.request_id,
            "version": OCSF_VERSION,
            "profiles": ["host", "security_control"],
            "log_name": "proxy",
            "product": { "name": "ollama-warden", "vendor_name": "ollama-warden", "version": env!("CARGO_PKG_VERSION") },
        },
        "http_request": {
            "uid": r.request_id,
            "http_method": r.method,
            "version": r.http_version,
            "url": { "path": r.path },
            "length": r.bytes_in,
        },
        "http_response": { "code": r.status, "length": r.bytes_out },
        "traffic": { "bytes_in": r.bytes_in, "bytes_out": r.bytes_out },
    });
    if r.method.is_empty() {
        // Refused by the HTTP layer before a method could be read.
        if let Some(req) = o["http_request"].as_object_mut() {
            req.remove("http_method");
        }
    }
    if let Some(q) = &r.query {
        o["http_request"]["url"]["query_string"] = q.as_str().into();
    }
    if let Some(ua) = &r.user_agent {
        o["http_request"]["user_agent"] = ua.as_str().into();
    }
    if let Some(t) = r.ttfb {
        o["http_response"]["latency"] = (t.as_millis() as u64).into();
    }
    if let Some(c) = r.client {
        o["src_endpoint"] = json!({ "ip": c.ip().to_canonical().to_string(), "port": c.port() });
    }
    if let Some(id) = &r.identity {
        o["actor"] = json!({ "user": { "name": id } });
    }
    if let Some(why) = &r.refused {
        o["status_detail"] = why.as_str().into();
    } else if let Some(why) = r.incomplete {
        o["status_detail"] = why.into();
    }
    let mut warden = json!({});
    if let Some(m) = &r.model {
        warden["model"] = m.as_str().into();
    }
    if let Some(t) = r.ttfb {
        warden["ttfb_ms"] = ms(t).into();
    }
    if let Some(u) = r.upstream {
        o["dst_endpoint"] = json!({ "ip": u.addr.ip().to_string(), "port": u.addr.port() });
        warden["socket_cookie"] = u.cookie.into();
        warden["upstream_local_port"] = u.local.port().into();
        if u.reused {
            warden["upstream_reused"] = true.into();
        }
    }
    if let Some(h) = &r.body_sha256 {
        warden["body_sha256"] = h.as_str().into();
    }
    if let Some(why) = r.incomplete {
        warden["incomplete"] = why.into();
    }
    if !r.content_flags.is_empty() {
        warden["content_rules"] = r.content_flags.clone().into();
    }
    if let Some(days) = r.client_cert_days_left {
        warden["client_certificate_days_left"] = days.into();
    }
    o["unmapped"] = json!({ "warden": warden });
    o
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

pub struct Audit {
    tx: Mutex<Option<SyncSender<Item>>>,
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
        let (tx, rx) = sync_channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let live = Arc::new(std::sync::OnceLock::new());
        let to_daemon = live.clone();
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(rx, writers, &c, &to_daemon))?;
        Ok(Self {
            live,
            tx: Mutex::new(Some(tx)),
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
        let tx = self.tx.locked();
        let sent = match &*tx {
            Some(tx) => tx.try_send(item),
            None => Err(TrySendError::Disconnected(item)),
        };
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes what is queued and stops the writer.
    pub fn finish(&self) {
        self.tx.locked().take();
        if let Some(t) = self.thread.locked().take() {
            let _ = t.join();
        }
    }
}

type SinkWriter = (Box<dyn Writer>, sink::Framer);

fn write_loop(
    rx: Receiver<Item>,
    mut writers: Vec<SinkWriter>,
    c: &Counters,
    live: &std::sync::OnceLock<crate::report::Reporter>,
) {
    let mut seq = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Ok(r) = rx.try_recv()
        {
            batch.push(r);
        }
        // (line, syslog severity, time, MSGID)
        let lines: Vec<(String, u8, u64, &str)> = batch
            .iter()
            .map(|item| match item {
                Item::Request(r) => (
                    warden_events::pipeline::to_json(&ocsf(r)),
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
        let first_seq = seq;
        seq += lines.len() as u64;
        for (w, framer) in &mut writers {
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
}
