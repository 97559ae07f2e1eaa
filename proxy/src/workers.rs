//! The threads that serve connections: one per core, each running a
//! single-threaded runtime of its own, as nginx runs one worker per core.
//!
//! A connection stays on the worker it was handed to, from its TLS handshake
//! to its close, and so do the upstream connections its requests ride (the
//! pool keeps them per worker): a request's client side, its upstream side
//! and the tasks driving them wake each other on one thread, never across
//! threads, and no task is stolen to another core. Work that could hold a
//! worker up (argon2, large bodies) runs on the worker's blocking threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::runtime::Handle;

/// How long a stopping worker lets the tasks it still runs finish.
const STOP_GRACE: Duration = Duration::from_secs(1);

pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    quit: tokio::sync::watch::Sender<bool>,
    next: AtomicUsize,
}

impl Workers {
    /// `n` workers (at least one).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let (quit, quit_rx) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let mut quit = quit_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = quit.wait_for(|q| *q).await;
                    });
                    // Requests still in flight are dropped with the runtime:
                    // their audit records ("client went away") are queued.
                    rt.shutdown_timeout(STOP_GRACE);
                })?;
            threads.push(thread);
        }
        Ok(Self {
            handles,
            threads,
            quit,
            next: AtomicUsize::new(0),
        })
    }

    /// As many workers as this process may use cores.
    pub fn per_core() -> std::io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The worker for the next connection (in turn).
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops every worker; what they still run is dropped after a grace.
    pub fn stop(self) {
        let _ = self.quit.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_handed_out_in_turn_and_each_worker_is_one_thread() {
        let w = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            w.next().spawn(async move {
                tx.send(std::thread::current().name().map(str::to_owned))
                    .unwrap();
            });
        }
        let mut names: Vec<_> = (0..4).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["proxy-0", "proxy-0", "proxy-1", "proxy-1"]);
        w.stop();
    }

    #[test]
    fn stopping_drops_what_still_runs() {
        let w = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        w.next().spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        w.stop();
        // The task was dropped with its runtime, and its sender with it.
        assert!(rx.recv().is_err());
    }
}
