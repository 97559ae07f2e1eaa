//! The proxy's server: accept, TLS handshake (bounded), HTTP/1.1 or HTTP/2 by
//! ALPN, one task per connection; SIGHUP or a change to the config, certificate,
//! key or client-CA file reloads them (a bad reload is reported and the running
//! configuration stays); SIGTERM/SIGINT stop accepting and let requests in
//! flight finish for a few seconds.

use super::audit::Audit;
use super::config::{self, Config};
use super::handler::{self, Client, Runtime, Shared};
use super::identity::{Authenticator, certificate_names, certificate_not_after};
use super::relay::Activity;
use super::tls;
use super::workers::Workers;
use anyhow::{Context, Result};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use warden_runtime::sync::{Locked, SharedLock};
use warden_runtime::watch::PolicyWatch;

const DRAIN: Duration = Duration::from_secs(5);
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How often the daemon hears the certificates' expiry (besides start and reload).
const CERTIFICATES_EVERY: Duration = Duration::from_secs(300);

/// Tells the daemon when the certificates in use expire.
fn report_certificates(shared: &Shared) {
    if let Some(r) = &shared.reporter {
        r.certificates(tls::expiries(&shared.runtime().cfg.tls));
    }
}
/// How long a connection may take to close once asked to (idle): a response
/// stuck behind a client's zero window or a full socket buffer, an HTTP/2
/// client that ignores GOAWAY. Then it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a full proxy waits for an evicted connection's slot.
const EVICT_WAIT: Duration = Duration::from_secs(1);

/// Connection-level counters, printed at exit.
#[derive(Default)]
struct Stats {
    refused_connections: AtomicU64,
    failed_handshakes: AtomicU64,
    /// Connections dropped at a deadline (no request head in time, or not
    /// closed within the grace after a graceful shutdown).
    deadline_closed: AtomicU64,
    /// Unauthenticated connections evicted to make room.
    evicted: AtomicU64,
    /// Connections from banned sources, closed at accept.
    banned_connections: AtomicU64,
}

/// Open connections, so a full proxy can evict the oldest that never
/// authenticated instead of refusing a newcomer.
#[derive(Default)]
struct Open {
    next: u64,
    conns: HashMap<u64, (std::time::Instant, Arc<Activity>)>,
}

impl Open {
    fn add(&mut self, a: Arc<Activity>) -> u64 {
        self.next += 1;
        self.conns.insert(self.next, (std::time::Instant::now(), a));
        self.next
    }

    /// Asks the oldest unauthenticated connection to drop; false if none.
    fn evict_oldest_unauthenticated(&self) -> bool {
        let oldest = self
            .conns
            .values()
            .filter(|(_, a)| !a.authenticated() && !a.killed())
            .min_by_key(|(t, _)| *t);
        match oldest {
            Some((_, a)) => {
                a.kill();
                true
            }
            None => false,
        }
    }
}

fn diagnostics(errs: Vec<warden_policy::Diagnostic>) -> anyhow::Error {
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("invalid proxy config:\n{}", text.join("\n"))
}

/// Validates a config file and its TLS files without serving.
pub fn check(path: &Path) -> Result<Config> {
    let cfg = config::load(path).map_err(diagnostics)?;
    tls::server_config(&cfg.tls)?;
    Ok(cfg)
}

fn watched(path: &Path, cfg: &Config) -> Vec<PathBuf> {
    let mut v = vec![path.to_owned(), cfg.tls.cert.clone(), cfg.tls.key.clone()];
    v.extend(cfg.tls.client_ca.clone());
    v
}

/// Large buffers (request bodies, argon2's 19 MiB) are mapped and unmapped
/// per use: glibc otherwise raises its mmap threshold after the first such
/// free and keeps later ones in per-thread arenas, so a password flood or a
/// few large bodies leave hundreds of MiB resident (measured: 654 MiB for
/// 64 MiB of bodies under `cargo xtask bench hostile`).
fn release_large_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

pub fn run(path: &Path) -> Result<()> {
    release_large_buffers();
    let cfg = check(path)?;
    // This thread accepts, reloads and reports; the workers serve.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let workers = Workers::per_core().context("worker threads")?;
    let (shared, stats, drained) = rt.block_on(serve(path, cfg, &workers))?;
    // Requests still in flight are dropped with the workers: their audit
    // records ("client went away") are written before the audit closes.
    workers.stop();
    if let Some(r) = &shared.reporter {
        rt.block_on(r.flush(Duration::from_secs(1)));
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    shared.audit.finish();
    let c = &shared.audit.counters;
    tracing::info!(
        "stopped{}; audit records written {} dropped {} failed {}; connections refused {} failed handshakes {}",
        if drained {
            ""
        } else {
            " (requests still in flight were cut)"
        },
        c.written.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        stats.refused_connections.load(Ordering::Relaxed),
        stats.failed_handshakes.load(Ordering::Relaxed),
    );
    if let Some(r) = &shared.reporter {
        let c = &r.counters;
        let (queued, sent, dropped) = (
            c.queued.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        );
        tracing::info!(
            "daemon reports {queued}: sent {sent} dropped {dropped} unsent {}",
            queued.saturating_sub(sent + dropped)
        );
    }
    Ok(())
}

async fn serve(
    path: &Path,
    cfg: Config,
    workers: &Workers,
) -> Result<(Arc<Shared>, Arc<Stats>, bool)> {
    // Before anything says the proxy is up: a reload sent then must not find
    // SIGHUP's default action (terminate).
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let tls_config = RwLock::new(tls::server_config(&cfg.tls)?);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let audit = Audit::start(&cfg.audit).context("audit sink")?;
    // Connection limits are read at start (a change needs a restart).
    let slots = Slots::new(
        cfg.limits.max_connections,
        cfg.limits.max_connections_per_ip,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut watch = PolicyWatch::new(&watched(path, &cfg)).context("watch config files")?;
    tracing::info!(
        "listening on https://{} for {} ({} identities, {} workers)",
        listener.local_addr()?,
        cfg.upstream.host,
        cfg.identities.len(),
        workers.len()
    );
    let reporter = cfg.report.clone().map(super::report::Reporter::start);
    if let Some(r) = &reporter {
        audit.report_to(r.clone());
        r.certificates(tls::expiries(&cfg.tls));
    }
    let metrics_addr = cfg.metrics;
    let shared = Arc::new(Shared::new(runtime(cfg), audit, reporter));
    let stats = Arc::new(Stats::default());
    if let Some(addr) = metrics_addr {
        serve_metrics(addr, shared.clone(), stats.clone());
    }
    let mut tick = tokio::time::interval(WATCH_EVERY);
    // The certificates' expiry again now and then, for a daemon that restarted.
    let mut certificates = tokio::time::interval(CERTIFICATES_EVERY);
    certificates.tick().await;
    loop {
        tokio::select! {
            _ = certificates.tick() => report_certificates(&shared),
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let acceptor = TlsAcceptor::from(tls_config.reading().clone());
                let to = Conn { acceptor, slots: &slots, shared: &shared, stats: &stats, stop: &stop_rx };
                accept(stream, peer, to, workers.next());
            }
            _ = hup.recv() => reload(path, &shared, &tls_config, &mut watch, "SIGHUP"),
            _ = tick.tick() => {
                if watch.changed() {
                    reload(path, &shared, &tls_config, &mut watch, "file change");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    // Open connections finish what they are doing and close.
    let _ = stop_tx.send(true);
    let drained = slots.all_free_within(DRAIN).await;
    Ok((shared, stats, drained))
}

/// What serving an accepted connection needs.
struct Conn<'a> {
    acceptor: TlsAcceptor,
    slots: &'a Slots,
    shared: &'a Arc<Shared>,
    stats: &'a Arc<Stats>,
    stop: &'a tokio::sync::watch::Receiver<bool>,
}

/// Takes a connection in: a banned source is closed before the handshake (it
/// costs nothing more), a source over its share is refused, the rest wait
/// for a slot and are served on a task of their own on `worker`.
fn accept(stream: TcpStream, peer: SocketAddr, to: Conn<'_>, worker: &tokio::runtime::Handle) {
    let Conn {
        acceptor,
        slots,
        shared,
        stats,
        stop,
    } = to;
    let ip = peer.ip().to_canonical();
    if shared.guard.banned(ip).is_some() {
        stats.banned_connections.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if !slots.enter(ip) {
        stats.refused_connections.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // The worker's own reactor takes the socket over.
    let Ok(stream) = stream.into_std() else {
        slots.leave(ip);
        return;
    };
    let (slots, shared, stats, stop) = (slots.clone(), shared.clone(), stats.clone(), stop.clone());
    worker.spawn(async move {
        let taken = match TcpStream::from_std(stream) {
            Ok(stream) => slots.take(&stats).await.map(|p| (p, stream)),
            Err(_) => None,
        };
        match taken {
            Some((permit, stream)) => {
                let activity = Activity::new();
                let key = slots.open.locked().add(activity.clone());
                connection(stream, peer, acceptor, shared, &stats, stop, activity).await;
                slots.open.locked().conns.remove(&key);
                drop(permit);
            }
            None => {
                stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            }
        }
        slots.leave(ip);
    });
}

/// Connection slots, per source and in total.
#[derive(Clone)]
struct Slots {
    total: Arc<Semaphore>,
    max: usize,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_max: usize,
    open: Arc<Mutex<Open>>,
}

impl Slots {
    fn new(max: usize, per_ip_max: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max)),
            max,
            per_ip: Arc::default(),
            per_ip_max,
            open: Arc::default(),
        }
    }

    /// Counts a connection from `ip`; false when that source has its share.
    fn enter(&self, ip: IpAddr) -> bool {
        let mut m = self.per_ip.locked();
        let n = m.entry(ip).or_default();
        if *n >= self.per_ip_max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.per_ip.locked();
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// A slot; when all are taken, the oldest connection that never
    /// authenticated makes room.
    async fn take(&self, stats: &Stats) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.total.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if self.open.locked().evict_oldest_unauthenticated() => {
                stats.evicted.fetch_add(1, Ordering::Relaxed);
                let wait = self.total.clone().acquire_owned();
                tokio::time::timeout(EVICT_WAIT, wait).await.ok()?.ok()
            }
            Err(_) => None,
        }
    }

    /// Whether every connection closed within `limit`.
    async fn all_free_within(&self, limit: Duration) -> bool {
        let all = self.total.acquire_many(self.max as u32);
        tokio::time::timeout(limit, all).await.is_ok()
    }
}

/// A counter's value, read at scrape time.
type Read = fn(&Shared, &Stats) -> u64;

/// The proxy's counters beyond its request metrics.
const PROXY_COUNTERS: [(&str, &str, Read); 8] = [
    (
        "warden_proxy_audit_written_total",
        "Audit records written",
        |sh, _| sh.audit.counters.written.load(Ordering::Relaxed),
    ),
    (
        "warden_proxy_audit_dropped_total",
        "Audit records dropped (queue full)",
        |sh, _| sh.audit.counters.dropped.load(Ordering::Relaxed),
    ),
    (
        "warden_proxy_audit_failed_total",
        "Audit records lost to write errors",
        |sh, _| sh.audit.counters.failed.load(Ordering::Relaxed),
    ),
    (
        "warden_proxy_connections_refused_total",
        "Connections refused by the connection limits",
        |_, st| st.refused_connections.load(Ordering::Relaxed),
    ),
    (
        "warden_proxy_handshakes_failed_total",
        "TLS handshakes that failed",
        |_, st| st.failed_handshakes.load(Ordering::Relaxed),
    ),
    (
        "warden_proxy_connections_deadline_closed_total",
        "Connections dropped at a deadline (no request in time, not closed within the grace)",
        |_, st| st.deadline_closed.load(Ordering::Relaxed),
    ),
    (
        "warden_proxy_connections_banned_total",
        "Connections from banned sources, closed at accept",
        |_, st| st.banned_connections.load(Ordering::Relaxed),
    ),
    (
        "warden_proxy_connections_evicted_total",
        "Unauthenticated connections evicted to make room for new ones",
        |_, st| st.evicted.load(Ordering::Relaxed),
    ),
];

fn serve_metrics(addr: SocketAddr, shared: Arc<Shared>, stats: Arc<Stats>) {
    let render = move || {
        let extra: Vec<_> = PROXY_COUNTERS
            .iter()
            .map(|(name, text, value)| (*name, *text, value(&shared, &stats)))
            .collect();
        shared.audit.metrics.render(&extra)
    };
    match warden_runtime::metrics::serve(addr, render) {
        Ok(a) => tracing::info!("metrics on http://{a}/metrics"),
        Err(e) => tracing::warn!("metrics on {addr}: {e}; serving without"),
    }
}

fn runtime(cfg: Config) -> Runtime {
    Runtime {
        auth: Authenticator::new(cfg.identities.clone()),
        cfg,
    }
}

/// Reloads identities, limits and TLS files. Where to listen, the upstream and
/// the audit sinks need a restart; a change to them is reported, not applied.
fn reload(
    path: &Path,
    shared: &Shared,
    tls_config: &RwLock<Arc<ServerConfig>>,
    watch: &mut PolicyWatch,
    why: &str,
) {
    let new = match config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            tracing::warn!(
                "reload ({why}) rejected, running configuration kept: {}",
                diagnostics(errs)
            );
            return;
        }
    };
    let tls_new = match tls::server_config(&new.tls) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("reload ({why}) rejected, running configuration kept: {e:#}");
            return;
        }
    };
    let old = shared.runtime();
    if new.listen != old.cfg.listen
        || new.upstream != old.cfg.upstream
        || new.audit != old.cfg.audit
        || new.report != old.cfg.report
        || new.metrics != old.cfg.metrics
    {
        tracing::warn!(
            "reload ({why}): listen, upstream, audit, report and metrics changes apply at restart"
        );
    }
    if let Ok(w) = PolicyWatch::new(&watched(path, &new)) {
        *watch = w;
    }
    let mut keep = new;
    keep.listen = old.cfg.listen;
    keep.upstream = old.cfg.upstream.clone();
    keep.audit = old.cfg.audit.clone();
    keep.report = old.cfg.report.clone();
    keep.metrics = old.cfg.metrics;
    let n = keep.identities.len();
    *shared.runtime.writing() = Arc::new(runtime(keep));
    report_certificates(shared);
    *tls_config.writing() = tls_new;
    tracing::info!("reloaded ({why}): {n} identities");
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    stats: &Stats,
    mut stop: tokio::sync::watch::Receiver<bool>,
    activity: Arc<Activity>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let limits = shared.runtime().cfg.limits.clone();
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let session = tls.get_ref().1;
    let h2 = session.alpn_protocol() == Some(b"h2");
    let cert = session.peer_certificates().and_then(|c| c.first());
    let client = Arc::new(Client {
        addr: peer,
        local,
        cert_names: cert
            .map(|c| certificate_names(c.as_ref()))
            .unwrap_or_default(),
        cert_not_after: cert.and_then(|c| certificate_not_after(c.as_ref())),
        activity: activity.clone(),
    });
    let deadlines = Deadlines {
        idle: limits.idle_timeout,
        // The handshake's deadline has passed; the first request head (for
        // HTTP/2 also the preface and SETTINGS) gets the header timeout.
        // HTTP/1.1: hyper's header timeout answers first (408); the watchdog
        // is the backstop.
        first_request: limits.header_timeout + if h2 { Duration::ZERO } else { CLOSE_GRACE },
    };
    let for_service = shared.clone();
    let service = service_fn(move |req| handler::handle(req, for_service.clone(), client.clone()));
    let received = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Counted {
        inner: tls,
        read: received.clone(),
    });
    // The protocol is the one ALPN chose: nothing is read before the timeouts apply.
    let dropped = if h2 {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(64)
            .max_header_list_size(64 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let conn = b.serve_connection(io, service);
        watch_connection(
            conn,
            |c| c.graceful_shutdown(),
            &activity,
            deadlines,
            &mut stop,
        )
        .await
    } else {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(64 * 1024)
            .max_headers(limits.max_headers)
            .keep_alive(true);
        let conn = b.serve_connection(io, service);
        watch_connection(
            conn,
            |c| c.graceful_shutdown(),
            &activity,
            deadlines,
            &mut stop,
        )
        .await
    };
    match dropped {
        Closed::AtDeadline => {
            stats.deadline_closed.fetch_add(1, Ordering::Relaxed);
        }
        Closed::Failed(e) => {
            let spoke = received.load(Ordering::Relaxed) > 0;
            if let Some((status, why)) = refused_by_http(&e, h2, spoke) {
                shared.audit.emit(super::audit::Record {
                    request_id: shared.new_request_id(),
                    time_ms: super::audit::now_ms(),
                    client: Some(peer),
                    http_version: if h2 { "HTTP/2" } else { "HTTP/1.1" },
                    status,
                    refused: Some(why),
                    ..Default::default()
                });
            }
        }
        Closed::Done | Closed::Killed => {}
    }
}

/// A connection error that refused a request before the handler saw it (a
/// malformed head, an HTTP/2 protocol error, a head that never completed):
/// the status the client got and why. `None` for a client that just went away.
fn refused_by_http(e: &hyper::Error, h2: bool, spoke: bool) -> Option<(u16, String)> {
    if e.is_parse_too_large() {
        return Some((431, format!("refused by the HTTP layer: {e}")));
    }
    if e.is_parse() || e.is_parse_status() {
        return Some((400, format!("refused by the HTTP layer: {e}")));
    }
    // A head that timed out is a request only if some of it arrived.
    if e.is_timeout() && spoke {
        return Some((
            408,
            "refused by the HTTP layer: request head timed out".into(),
        ));
    }
    // hyper has no predicate for HTTP/2 protocol errors; they are what is
    // left once the client's going away is set apart.
    let io =
        std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    if h2 && !e.is_closed() && !e.is_incomplete_message() && !e.is_canceled() && !io {
        let text = e.to_string();
        if !text.contains("reset")
            && !text.contains("broken pipe")
            && !text.contains("not connected")
        {
            return Some((400, format!("refused by the HTTP layer: {text}")));
        }
    }
    None
}

#[derive(Clone, Copy)]
struct Deadlines {
    idle: Duration,
    first_request: Duration,
}

/// A connection's stream, counting the bytes the client sent (after TLS),
/// so a connection that timed out can be told from one that never spoke.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Closed {
    /// The connection finished (or was closed gracefully in time).
    Done,
    /// The connection ended with an error (a malformed request, a protocol
    /// error, the client going away).
    Failed(hyper::Error),
    /// Dropped: killed by a relay or an eviction.
    Killed,
    /// Dropped: no request head in time, or not closed within the grace.
    AtDeadline,
}

/// Drives a connection. Every way it can hang has a deadline: no request head
/// within `first_request` (a TLS client that never sends an HTTP/2 preface),
/// idle too long, the proxy stopping; each asks for a graceful shutdown, and a
/// connection still open `CLOSE_GRACE` later (a response stuck behind a zero
/// window, a client ignoring GOAWAY) is dropped. Killed (a relay found its
/// client gone, an eviction): dropped at once.
async fn watch_connection<C: Future<Output = Result<(), hyper::Error>>>(
    conn: C,
    shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    deadlines: Deadlines,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Closed {
    let started = tokio::time::Instant::now();
    let mut conn = std::pin::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // When the graceful shutdown was asked for, and how long it may take.
    let mut closing: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        tokio::select! {
            done = conn.as_mut() => return match done {
                Ok(()) => Closed::Done,
                Err(e) => Closed::Failed(e),
            },
            _ = tick.tick() => {
                if activity.killed() {
                    return Closed::Killed;
                }
                if let Some((since, grace)) = closing {
                    if since.elapsed() >= grace {
                        return Closed::AtDeadline;
                    }
                    continue;
                }
                if !activity.any_request() && started.elapsed() >= deadlines.first_request {
                    return Closed::AtDeadline;
                }
                if activity.idle_for(deadlines.idle) {
                    shutdown(conn.as_mut());
                    closing = Some((tokio::time::Instant::now(), CLOSE_GRACE));
                }
            }
            changed = stop.changed(), if closing.is_none() => {
                if changed.is_err() || *stop.borrow() {
                    shutdown(conn.as_mut());
                    // Requests in flight may finish while the proxy drains.
                    closing = Some((tokio::time::Instant::now(), DRAIN));
                }
            }
        }
    }
}
