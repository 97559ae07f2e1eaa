//! Bodies in flight: the request body streamed upstream with a size cap and an
//! idle timeout, and the response body relayed frame by frame to the client,
//! which completes the request's audit record when it ends, fails or is
//! dropped by a client that went away.

use super::audit::{Audit, Record};
use super::limits::Slot;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub struct BodyError(pub &'static str);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyError {}

/// A client's request body on its way upstream: at most `max` bytes, at most
/// `idle` between frames; `count` sees every byte.
pub struct Upload {
    inner: Incoming,
    max: u64,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    pub count: Arc<AtomicU64>,
    /// Why the body was cut off, if it was (the request then fails upstream).
    pub failure: Arc<std::sync::OnceLock<&'static str>>,
}

impl Upload {
    pub fn new(inner: Incoming, max: u64, idle: Duration) -> Self {
        Self {
            inner,
            max,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            count: Arc::default(),
            failure: Arc::default(),
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n =
                        this.count.fetch_add(d.len() as u64, Ordering::Relaxed) + d.len() as u64;
                    if n > this.max {
                        let _ = this.failure.set(TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyError(TOO_LARGE).into())));
                    }
                }
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.sleep.as_mut().poll(cx));
                let _ = this.failure.set(TIMED_OUT);
                Poll::Ready(Some(Err(BodyError(TIMED_OUT).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub const TOO_LARGE: &str = "request body too large";
pub const TIMED_OUT: &str = "request body timed out";

/// Reads a whole request body, holding budget for what has arrived: `Err`
/// names why it was not read.
pub async fn read_all(
    body: Incoming,
    max: u64,
    idle: Duration,
    budget: &mut super::budget::Reservation,
) -> Result<Bytes, &'static str> {
    use http_body_util::BodyExt;
    use hyper::body::Body;
    // The declared length (bounded by `max`) is reserved once: growing by
    // doubling would hold up to three times the body while it copies.
    let declared = body.size_hint().lower().min(max) as usize;
    let mut up = Upload::new(body, max, idle);
    let mut buf = bytes::BytesMut::with_capacity(declared);
    while let Some(frame) = up.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    budget
                        .cover((buf.len() + d.len()) as u64)
                        .map_err(super::budget::Exhausted::as_str)?;
                    buf.extend_from_slice(&d);
                }
            }
            Err(e) => {
                return Err(match e.downcast_ref::<BodyError>() {
                    Some(BodyError(why)) => why,
                    None => "request body broken off",
                });
            }
        }
    }
    Ok(buf.freeze())
}

/// What a connection is doing, for its idle timeout and for cutting it off.
#[derive(Default)]
pub struct Activity {
    inflight: AtomicU64,
    /// Requests begun on this connection.
    requests: AtomicU64,
    last_ms: AtomicU64,
    kill: std::sync::atomic::AtomicBool,
    /// A request on this connection authenticated (eviction spares these first).
    authenticated: std::sync::atomic::AtomicBool,
}

fn mono_ms() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Activity {
    pub fn new() -> Arc<Self> {
        let a = Self::default();
        a.last_ms.store(mono_ms(), Ordering::Relaxed);
        Arc::new(a)
    }

    /// A request starts; it ends when the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_ms.store(mono_ms(), Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// No request in flight, and none for at least `d`.
    pub fn idle_for(&self, d: Duration) -> bool {
        self.inflight.load(Ordering::Acquire) == 0
            && mono_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed))
                >= d.as_millis() as u64
    }

    /// Whether a request head arrived on this connection.
    pub fn any_request(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    pub fn set_authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    /// Asks the connection to be dropped (a client that stopped reading).
    pub fn kill(&self) {
        self.kill.store(true, Ordering::Relaxed);
    }

    pub fn killed(&self) -> bool {
        self.kill.load(Ordering::Relaxed)
    }
}

pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.last_ms.store(mono_ms(), Ordering::Relaxed);
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's audit record until it is written: exactly once, by
/// [`Finish::emit`] or, if the request is dropped first (the client went away
/// mid-request, hyper gave up on the connection), by `Drop`.
pub struct Finish {
    record: Option<Record>,
    started: Instant,
    audit: Arc<Audit>,
    /// Bytes of a streamed request body, counted as they go upstream.
    pub uploaded: Option<Arc<AtomicU64>>,
    /// Keeps the connection's request count until the response is done.
    active: Option<ActiveGuard>,
}

impl Finish {
    pub fn new(record: Record, started: Instant, audit: Arc<Audit>, active: ActiveGuard) -> Self {
        audit.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            record: Some(record),
            started,
            audit,
            uploaded: None,
            active: Some(active),
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn record(&mut self) -> &mut Record {
        self.record.as_mut().expect("the record is not written yet")
    }

    /// Hands the record on (to the response relay); this one is then spent.
    pub fn take(&mut self) -> Finish {
        Finish {
            record: self.record.take(),
            started: self.started,
            audit: self.audit.clone(),
            uploaded: self.uploaded.take(),
            active: self.active.take(),
        }
    }

    pub fn emit(&mut self, bytes_out: Option<u64>, incomplete: Option<&'static str>) {
        let Some(mut r) = self.record.take() else {
            return;
        };
        if let Some(n) = bytes_out {
            r.bytes_out = n;
        }
        self.audit.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        r.incomplete = incomplete;
        r.duration = self.started.elapsed();
        if let Some(n) = &self.uploaded {
            r.bytes_in = n.load(Ordering::Relaxed);
        }
        // The audit record is the request's account; this line is for the
        // operator following one request through the proxy's log.
        tracing::debug!(
            request_id = %r.request_id,
            identity = r.identity.as_deref().unwrap_or("-"),
            status = r.status,
            refused = r.refused.as_deref().unwrap_or("-"),
            "{} {}",
            r.method,
            r.path
        );
        self.audit.emit(r);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.emit(None, Some("client went away"));
        }
    }
}

/// The upstream response body relayed to the client frame by frame.
pub struct Relay {
    inner: Incoming,
    finish: Finish,
    bytes: u64,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    task: AbortHandle,
    /// When hyper last asked for data (ms, monotonic); the watchdog reads it.
    polled: Arc<AtomicU64>,
    /// Set by the watchdog: the client stopped taking data.
    stalled: Arc<std::sync::atomic::AtomicBool>,
    watchdog: JoinHandle<()>,
    _slot: Slot,
}

impl Relay {
    /// `idle`: how long the upstream may be silent; `send_timeout`: how long
    /// the client may leave data untaken before the upstream request is
    /// cancelled and the connection dropped.
    pub fn new(
        inner: Incoming,
        finish: Finish,
        idle: Duration,
        send_timeout: Duration,
        task: AbortHandle,
        slot: Slot,
        activity: Arc<Activity>,
    ) -> Self {
        let polled = Arc::new(AtomicU64::new(mono_ms()));
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let abort = task.clone();
        let (p, st) = (polled.clone(), stalled.clone());
        let limit = send_timeout.as_millis() as u64;
        let watchdog = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis((limit / 4).clamp(10, 1000))).await;
                if mono_ms().saturating_sub(p.load(Ordering::Relaxed)) > limit {
                    st.store(true, Ordering::Relaxed);
                    abort.abort();
                    activity.kill();
                    return;
                }
            }
        });
        Self {
            inner,
            finish,
            bytes: 0,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            task,
            polled,
            stalled,
            watchdog,
            _slot: slot,
        }
    }

    fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn end(&mut self, incomplete: Option<&'static str>) {
        self.finish.emit(Some(self.bytes), incomplete);
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.polled.store(mono_ms(), Ordering::Relaxed);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if this.bytes == 0 && !d.is_empty() {
                        let ttfb = this.finish.started().elapsed();
                        if let Some(r) = this.finish.record.as_mut() {
                            r.ttfb = Some(ttfb);
                        }
                    }
                    this.bytes += d.len() as u64;
                }
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let why = if this.stalled() {
                    "client stopped reading"
                } else {
                    "upstream failed"
                };
                this.end(Some(why));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.watchdog.abort();
                this.end(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(this.sleep.as_mut().poll(cx));
                this.end(Some("upstream timed out"));
                this.task.abort();
                Poll::Ready(Some(Err(BodyError("upstream timed out").into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.watchdog.abort();
        // Dropped before the end: the client went away. Closing the upstream
        // socket is what tells Ollama to stop generating.
        if self.finish.record.is_some() {
            if self.inner.is_end_stream() {
                self.end(None);
            } else {
                self.task.abort();
                let why = if self.stalled() {
                    "client stopped reading"
                } else {
                    "client went away"
                };
                self.end(Some(why));
            }
        }
    }
}
