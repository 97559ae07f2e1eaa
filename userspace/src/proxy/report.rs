//! Reports each upstream connection to `warden daemon` (a JSON line per
//! connection on the daemon's unix socket), so the daemon can join it with the
//! kernel's event for the same socket.
//!
//! A report is sent as soon as the upstream socket exists, before it connects:
//! the join waits neither for the TCP handshake nor for Ollama. Requests never wait for the
//! daemon: reports go through a bounded queue, the writer reconnects every
//! second while the daemon is away, and what cannot be queued or written is
//! counted (printed when the proxy stops).

use crate::events::correlate::ProxyReport;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const QUEUE: usize = 8192;
const BATCH: usize = 256;
const RECONNECT: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct ReportCounters {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<ProxyReport>,
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
        if self.tx.try_send(r).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_loop(socket: PathBuf, mut rx: mpsc::Receiver<ProxyReport>, c: Arc<ReportCounters>) {
    let mut conn: Option<UnixStream> = None;
    let mut complained = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Ok(r) = rx.try_recv()
        {
            batch.push(r);
        }
        if conn.is_none() {
            match UnixStream::connect(&socket).await {
                Ok(s) => {
                    if complained {
                        eprintln!("warden proxy: reporting to {} again", socket.display());
                    }
                    conn = Some(s);
                    complained = false;
                }
                Err(e) => {
                    if !complained {
                        eprintln!(
                            "warden proxy: daemon report socket {}: {e}; reports are counted as dropped until it is back",
                            socket.display()
                        );
                        complained = true;
                    }
                    c.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tokio::time::sleep(RECONNECT).await;
                    // Reports queued meanwhile are too old for the join's window.
                    while rx.try_recv().is_ok() {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
            }
        }
        let mut text = String::new();
        for r in &batch {
            text.push_str(&serde_json::to_string(r).expect("a report serialises"));
            text.push('\n');
        }
        let s = conn.as_mut().expect("connected");
        if s.write_all(text.as_bytes()).await.is_ok() {
            c.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        } else {
            c.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            conn = None;
        }
    }
}
