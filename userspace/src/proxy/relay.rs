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
use tokio::task::JoinHandle;
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
}

impl Upload {
    pub fn new(inner: Incoming, max: u64, idle: Duration) -> Self {
        Self {
            inner,
            max,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            count: Arc::default(),
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
                        return Poll::Ready(Some(Err(BodyError("request body too large").into())));
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
                Poll::Ready(Some(Err(BodyError("request body timed out").into())))
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

/// Reads a whole request body: `Err` names why it was not read.
pub async fn read_all(body: Incoming, max: u64, idle: Duration) -> Result<Bytes, &'static str> {
    use http_body_util::BodyExt;
    let mut up = Upload::new(body, max, idle);
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = up.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
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

/// What the response relay needs to finish a request's record.
pub struct Finish {
    pub record: Record,
    pub started: Instant,
    pub audit: Arc<Audit>,
    pub uploaded: Option<Arc<AtomicU64>>,
}

impl Finish {
    pub fn emit(mut self, bytes_out: u64, incomplete: Option<&'static str>) {
        self.record.bytes_out = bytes_out;
        self.record.incomplete = incomplete;
        self.record.duration = self.started.elapsed();
        if let Some(n) = &self.uploaded {
            self.record.bytes_in = n.load(Ordering::Relaxed);
        }
        self.audit.emit(self.record);
    }
}

/// The upstream response body relayed to the client frame by frame.
pub struct Relay {
    inner: Incoming,
    finish: Option<Finish>,
    bytes: u64,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    task: JoinHandle<()>,
    _slot: Slot,
}

impl Relay {
    pub fn new(
        inner: Incoming,
        finish: Finish,
        idle: Duration,
        task: JoinHandle<()>,
        slot: Slot,
    ) -> Self {
        Self {
            inner,
            finish: Some(finish),
            bytes: 0,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            task,
            _slot: slot,
        }
    }

    fn end(&mut self, incomplete: Option<&'static str>) {
        if let Some(f) = self.finish.take() {
            f.emit(self.bytes, incomplete);
        }
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if this.bytes == 0
                        && !d.is_empty()
                        && let Some(f) = &mut this.finish
                    {
                        f.record.ttfb = Some(f.started.elapsed());
                    }
                    this.bytes += d.len() as u64;
                }
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Some("upstream failed"));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
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
        // Dropped before the end: the client went away. Closing the upstream
        // socket is what tells Ollama to stop generating.
        if self.finish.is_some() {
            if self.inner.is_end_stream() {
                self.end(None);
            } else {
                self.task.abort();
                self.end(Some("client went away"));
            }
        }
    }
}
