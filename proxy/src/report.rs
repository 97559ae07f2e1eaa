//! Reports each upstream connection to `warden daemon` (a JSON line per
//! connection on the daemon's unix socket), so the daemon can join it with the
//! kernel's event for the same socket.
//!
//! A report is sent as soon as the upstream socket exists, before it connects:
//! the join waits neither for the TCP handshake nor for Ollama. The session
//! with the daemon is opened at start (and reopened every second while the
//! daemon is away), so the daemon knows the proxy before its first request.
//! The daemon end must belong to root: reports name identities and clients.
//!
//! Requests never wait for the daemon: reports go through a bounded queue; a
//! batch that fails to write is retried once on a new session; what cannot be
//! queued or written is counted, and the totals are printed at stop.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use warden_events::correlate::ProxyReport;
use warden_events::reports::{BanRequest, ProxyMessage};

const QUEUE: usize = 8192;
const BATCH: usize = 256;
const RECONNECT: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct ReportCounters {
    pub queued: AtomicU64,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<ProxyMessage>,
    pub counters: Arc<ReportCounters>,
}

impl Reporter {
    /// Starts the writer task (inside a tokio runtime).
    pub fn start(socket: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(ReportCounters::default());
        tokio::spawn(write_loop(socket, rx, counters.clone()));
        Self { tx, counters }
    }

    pub fn report(&self, r: ProxyReport) {
        self.send(ProxyMessage::Report(r));
    }

    /// An audit record (its JSON line), for the daemon's live view.
    pub fn audit(&self, line: &str) {
        if let Ok(audit) = serde_json::from_str(line) {
            self.send(ProxyMessage::Audit(warden_events::reports::AuditLine {
                audit,
            }));
        }
    }

    /// The proxy's certificates and their expiry.
    pub fn certificates(&self, certificates: Vec<warden_events::reports::CertificateInfo>) {
        self.send(ProxyMessage::Certificates(
            warden_events::reports::Certificates { certificates },
        ));
    }

    /// Asks the daemon to ban a source in the kernel.
    pub fn ban(&self, b: BanRequest) {
        self.send(ProxyMessage::Ban(b));
    }

    fn send(&self, m: ProxyMessage) {
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(m).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `limit`) until every queued report is written or dropped.
    pub async fn flush(&self, limit: Duration) {
        let c = &self.counters;
        let done = || {
            c.sent.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed)
                >= c.queued.load(Ordering::Relaxed)
        };
        let _ = tokio::time::timeout(limit, async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// A session with the daemon, if one can be had (and the daemon is root's).
async fn connect(socket: &PathBuf, complained: &mut bool) -> Option<UnixStream> {
    let refused = match UnixStream::connect(socket).await {
        Ok(s) => match s.peer_cred() {
            Ok(c) if c.uid() == 0 => {
                if *complained {
                    tracing::info!("reporting to {} again", socket.display());
                }
                *complained = false;
                return Some(s);
            }
            Ok(c) => format!("it belongs to uid {}, not root", c.uid()),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    if !*complained {
        tracing::warn!(
            "daemon report socket {}: {refused}; reports are counted as dropped until it is back",
            socket.display()
        );
        *complained = true;
    }
    None
}

async fn write_loop(socket: PathBuf, mut rx: mpsc::Receiver<ProxyMessage>, c: Arc<ReportCounters>) {
    let mut complained = false;
    let mut conn = connect(&socket, &mut complained).await;
    // The last certificates message, for each new session.
    let mut certificates: Option<ProxyMessage> = None;
    let mut retry_at = tokio::time::Instant::now() + RECONNECT;
    loop {
        // While the daemon is away, reconnect every second even without reports.
        let first = if conn.is_none() {
            match tokio::time::timeout_at(retry_at, rx.recv()).await {
                Ok(Some(r)) => Some(r),
                Ok(None) => return,
                Err(_) => None,
            }
        } else {
            match rx.recv().await {
                Some(r) => Some(r),
                None => return,
            }
        };
        if conn.is_none() && tokio::time::Instant::now() >= retry_at {
            conn = connect(&socket, &mut complained).await;
            retry_at = tokio::time::Instant::now() + RECONNECT;
        }
        let Some(first) = first else { continue };
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Ok(r) = rx.try_recv()
        {
            batch.push(r);
        }
        let mut text = String::new();
        for r in &batch {
            if matches!(r, ProxyMessage::Certificates(_)) {
                certificates = Some(r.clone());
            }
            text.push_str(&serde_json::to_string(r).expect("a report serialises"));
            text.push('\n');
        }
        let mut written = false;
        for attempt in 0..2 {
            if attempt == 1 {
                // The session broke (a daemon restart): one retry on a new one,
                // which hears the certificates again first.
                conn = connect(&socket, &mut complained).await;
                retry_at = tokio::time::Instant::now() + RECONNECT;
                if let Some(c) = &certificates {
                    let line = serde_json::to_string(c).expect("a report serialises");
                    text = format!("{line}\n{text}");
                }
            }
            let Some(s) = conn.as_mut() else { break };
            if s.write_all(text.as_bytes()).await.is_ok() {
                written = true;
                break;
            }
            conn = None;
        }
        let n = batch.len() as u64;
        if written {
            c.sent.fetch_add(n, Ordering::Relaxed);
        } else {
            c.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}
