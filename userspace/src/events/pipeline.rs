//! The event pipeline: kernel records and lifecycle events in, encoded events
//! out to every sink — without ever making the ring-buffer reader wait.
//!
//! ```text
//! reader ──try_send──▶ [record queue] ──▶ encoder thread ──try_send──▶ [sink queue] ──▶ sink thread ──▶ stdout/file/syslog/…
//!   (daemon loop)        full: counted     aggregate, enrich,           full: counted     write; errors counted
//!                                          encode once
//! ```
//!
//! Every record is accounted for: written by a sink, or counted as dropped
//! (a full queue) or failed (a write error, a dead receiver, a cut message).
//! Kernel reservation failures are counted by the eBPF programs; [`Pipeline::losses`]
//! puts the numbers together for loss events and `warden status`.

use super::aggregate::{Aggregator, Verdict};
use super::sink::{self, SinkSpec};
use super::syslog::{self, severity};
use super::{Encoder, EventFormat};
use crate::compile::Compiled;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError, channel, sync_channel,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use warden_common::{FlowEvent, verdict};

/// Kernel records waiting for the encoder (112 bytes each).
pub const RECORD_QUEUE: usize = 65_536;
/// Encoded events waiting for each sink.
pub const SINK_QUEUE: usize = 8_192;
/// Messages a sink writes in one go.
const SINK_BATCH: usize = 256;
/// How often the encoder closes expired aggregation windows.
const TICK: Duration = Duration::from_millis(100);
/// How long stopping waits for sinks to write what is queued.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Config {
    pub sinks: Vec<SinkSpec>,
    pub format: EventFormat,
    pub cgroup2: std::path::PathBuf,
    /// Window for aggregating repeated denies; zero = off.
    pub aggregate: Duration,
}

/// One encoded event, shared by every sink's queue.
struct Encoded {
    json: String,
    severity: u8,
    msgid: String,
    time_ms: u64,
    seq: u64,
}

enum Input {
    Flow(FlowEvent, Arc<Compiled>),
    Lifecycle(String, Value),
    /// A lifecycle event is waiting in the control queue.
    Wake,
}

#[derive(Default)]
struct SinkCounters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// In a queue or being written.
    pending: AtomicU64,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    queue_dropped: AtomicU64,
    aggregated: AtomicU64,
}

/// Loss and delivery counts since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Records the eBPF programs could not queue (ring buffer full).
    pub kernel_lost: u64,
    /// Records the daemon read from the kernel.
    pub records: u64,
    /// Records dropped because the encoder's queue was full.
    pub queue_dropped: u64,
    /// Denies folded into aggregate events (reported by count, not lost).
    pub aggregated: u64,
    pub sinks: Vec<SinkLosses>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkLosses {
    pub sink: String,
    pub written: u64,
    /// Dropped because the sink's queue was full (a slow or blocked receiver).
    pub dropped: u64,
    /// Lost to write errors (a dead receiver, a full disk, a cut connection).
    pub failed: u64,
    pub pending: u64,
}

impl Losses {
    /// Events lost anywhere (not counting aggregation, which loses nothing).
    pub fn total(&self) -> u64 {
        self.kernel_lost
            + self.queue_dropped
            + self.sinks.iter().map(|s| s.dropped + s.failed).sum::<u64>()
    }
}

struct SinkHandle {
    spec: SinkSpec,
    tx: Option<SyncSender<Arc<Encoded>>>,
    counters: Arc<SinkCounters>,
    thread: Option<JoinHandle<()>>,
}

pub struct Pipeline {
    tx: Option<SyncSender<Input>>,
    /// Lifecycle events: rare, never dropped, never waited for.
    ctl: Option<Sender<Input>>,
    counters: Arc<Counters>,
    sinks: Arc<Mutex<Vec<SinkHandle>>>,
    sink_counters: Vec<(String, Arc<SinkCounters>)>,
    encoder: Option<JoinHandle<()>>,
    /// Losses in the last loss event.
    reported: Losses,
}

impl Pipeline {
    /// Opens every sink (a file that cannot be opened is an error; network
    /// receivers are connected lazily) and starts the threads.
    pub fn start(cfg: Config) -> std::io::Result<Self> {
        let mut handles = Vec::new();
        for spec in &cfg.sinks {
            let writer = sink::open(spec)?;
            let counters = Arc::new(SinkCounters::default());
            let (tx, rx) = sync_channel(SINK_QUEUE);
            let thread = {
                let (spec, counters) = (spec.clone(), counters.clone());
                std::thread::Builder::new()
                    .name("warden-sink".into())
                    .spawn(move || run_sink(&spec, writer, rx, &counters))?
            };
            handles.push(SinkHandle {
                spec: spec.clone(),
                tx: Some(tx),
                counters,
                thread: Some(thread),
            });
        }
        let sink_counters = handles
            .iter()
            .map(|h| (h.spec.text.clone(), h.counters.clone()))
            .collect();
        let sinks = Arc::new(Mutex::new(handles));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = sync_channel(RECORD_QUEUE);
        let (ctl, ctl_rx) = channel();
        let encoder = {
            let (sinks, counters) = (sinks.clone(), counters.clone());
            std::thread::Builder::new()
                .name("warden-encode".into())
                .spawn(move || run_encoder(cfg, rx, ctl_rx, &sinks, &counters))?
        };
        Ok(Self {
            tx: Some(tx),
            ctl: Some(ctl),
            counters,
            sinks,
            sink_counters,
            encoder: Some(encoder),
            reported: Losses::default(),
        })
    }

    /// Queues a kernel record; never blocks (a full queue is counted).
    pub fn flow(&self, ev: FlowEvent, compiled: &Arc<Compiled>) {
        self.counters.records.fetch_add(1, Relaxed);
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            tx.try_send(Input::Flow(ev, compiled.clone()))
        {
            self.counters.queue_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Queues a lifecycle event. These are rare and matter (policy applied or
    /// rejected), so they have their own unbounded queue: never dropped, never
    /// waited for.
    pub fn lifecycle(&self, kind: &str, fields: Value) {
        if let Some(ctl) = &self.ctl {
            let _ = ctl.send(Input::Lifecycle(kind.into(), fields));
        }
        if let Some(tx) = &self.tx {
            // Wakes an idle encoder; a busy one looks at the control queue anyway.
            let _ = tx.try_send(Input::Wake);
        }
    }

    pub fn losses(&self, kernel_lost: u64) -> Losses {
        Losses {
            kernel_lost,
            records: self.counters.records.load(Relaxed),
            queue_dropped: self.counters.queue_dropped.load(Relaxed),
            aggregated: self.counters.aggregated.load(Relaxed),
            sinks: self
                .sink_counters
                .iter()
                .map(|(name, c)| SinkLosses {
                    sink: name.clone(),
                    written: c.written.load(Relaxed),
                    dropped: c.dropped.load(Relaxed),
                    failed: c.failed.load(Relaxed),
                    pending: c.pending.load(Relaxed),
                })
                .collect(),
        }
    }

    /// Emits a `loss` event when anything was lost since the last one; returns
    /// the current numbers.
    pub fn report_losses(&mut self, kernel_lost: u64) -> Losses {
        let now = self.losses(kernel_lost);
        if now.total() != self.reported.total() {
            let prev = &self.reported;
            let since = serde_json::json!({
                "kernel_lost": now.kernel_lost - prev.kernel_lost.min(now.kernel_lost),
                "queue_dropped": now.queue_dropped - prev.queue_dropped,
                "sink_dropped": now.sinks.iter().map(|s| s.dropped).sum::<u64>()
                    - prev.sinks.iter().map(|s| s.dropped).sum::<u64>(),
                "sink_failed": now.sinks.iter().map(|s| s.failed).sum::<u64>()
                    - prev.sinks.iter().map(|s| s.failed).sum::<u64>(),
            });
            let mut fields = serde_json::to_value(&now).unwrap_or_default();
            fields["since_last_report"] = since;
            fields["lost_total"] = now.total().into();
            self.lifecycle("loss", fields);
            self.reported = now.clone();
        }
        now
    }

    /// Stops the threads: everything queued is encoded and handed to the sinks,
    /// which get [`SHUTDOWN_GRACE`] to write it; what they could not is counted
    /// as dropped. Returns the final numbers.
    pub fn shutdown(mut self, kernel_lost: u64) -> Losses {
        self.tx = None;
        self.ctl = None;
        if let Some(t) = self.encoder.take() {
            let _ = t.join();
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        for s in sinks.iter_mut() {
            s.tx = None;
        }
        for s in sinks.iter_mut() {
            let Some(t) = s.thread.take() else { continue };
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                // Stuck in a write (a blocked pipe): what it holds is lost.
                let stuck = s.counters.pending.swap(0, Relaxed);
                s.counters.dropped.fetch_add(stuck, Relaxed);
                eprintln!(
                    "warden: event sink {} did not finish writing; {stuck} event(s) dropped",
                    s.spec
                );
            }
        }
        drop(sinks);
        self.losses(kernel_lost)
    }
}

fn run_encoder(
    cfg: Config,
    rx: Receiver<Input>,
    ctl: Receiver<Input>,
    sinks: &Mutex<Vec<SinkHandle>>,
    counters: &Counters,
) {
    let mut encoder = Encoder::new(cfg.format, cfg.cgroup2);
    let mut aggregator: Aggregator<Option<String>> = Aggregator::new(cfg.aggregate);
    let mut seq = 0u64;
    let mut publish = |v: Value, severity: u8, msgid: &str| {
        seq += 1;
        let e = Arc::new(Encoded {
            json: v.to_string(),
            severity,
            msgid: msgid.to_owned(),
            time_ms: super::now_ms(),
            seq,
        });
        let sinks = sinks.lock().unwrap_or_else(|e| e.into_inner());
        for s in sinks.iter() {
            let Some(tx) = &s.tx else { continue };
            s.counters.pending.fetch_add(1, Relaxed);
            if tx.try_send(e.clone()).is_err() {
                s.counters.pending.fetch_sub(1, Relaxed);
                s.counters.dropped.fetch_add(1, Relaxed);
            }
        }
    };
    let flow_severity = |ev: &FlowEvent| {
        if ev.verdict == verdict::ALLOW {
            severity::INFO
        } else {
            severity::WARNING
        }
    };
    let rule_of = |ev: &FlowEvent, c: &Compiled| {
        c.rules
            .get(ev.rule_id as usize)
            .map(|r| r.description.clone())
    };
    let mut next_tick = Instant::now() + TICK;
    let mut open = true;
    while open {
        let mut inputs = Vec::with_capacity(2);
        match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(input) => inputs.push(input),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        inputs.extend(ctl.try_iter());
        if !open {
            // Stopping: what aggregation holds goes out before the `stop` event.
            for r in aggregator.drain() {
                let v = encoder.repeats(&r);
                publish(v, flow_severity(&r.last), "flow");
            }
        }
        for input in inputs {
            match input {
                Input::Flow(ev, compiled) => {
                    let rule = rule_of(&ev, &compiled);
                    match aggregator.offer(&ev, &rule, Instant::now()) {
                        Verdict::Report => {
                            let v = encoder.flow(&ev, rule.as_deref());
                            publish(v, flow_severity(&ev), "flow");
                        }
                        Verdict::Counted => {
                            counters.aggregated.fetch_add(1, Relaxed);
                        }
                    }
                }
                Input::Lifecycle(kind, fields) => {
                    let sev = match kind.as_str() {
                        "policy_rejected" => severity::ERROR,
                        "backend_fallback" | "loss" => severity::WARNING,
                        _ => severity::NOTICE,
                    };
                    let v = encoder.lifecycle(&kind, fields);
                    publish(v, sev, &kind);
                }
                Input::Wake => {}
            }
        }
        if Instant::now() >= next_tick {
            for r in aggregator.expired(Instant::now()) {
                let v = encoder.repeats(&r);
                publish(v, flow_severity(&r.last), "flow");
            }
            next_tick = Instant::now() + TICK;
        }
    }
}

fn run_sink(
    spec: &SinkSpec,
    mut writer: Box<dyn sink::Writer>,
    rx: Receiver<Arc<Encoded>>,
    counters: &SinkCounters,
) {
    let header = spec.syslog_facility.map(syslog::Header::new);
    let stream = matches!(
        spec.target,
        sink::Target::Stdout | sink::Target::File { .. } | sink::Target::Tcp(_)
    );
    let frame = |e: &Encoded| -> Vec<u8> {
        match &header {
            Some(h) => {
                let m = h.message(e.severity, e.time_ms, &e.msgid, e.seq, &e.json);
                if stream {
                    syslog::octet_counted(&m).into_bytes()
                } else {
                    m.into_bytes()
                }
            }
            None if stream => format!("{}\n", e.json).into_bytes(),
            None => e.json.clone().into_bytes(),
        }
    };
    let mut last_complaint: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![frame(&first)];
        while batch.len() < SINK_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(frame(&e)),
                Err(_) => break,
            }
        }
        let w = writer.write_batch(&batch);
        counters.written.fetch_add(w.ok as u64, Relaxed);
        counters.failed.fetch_add(w.failed as u64, Relaxed);
        counters.pending.fetch_sub(batch.len() as u64, Relaxed);
        if let Some(e) = w.error
            && last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            // Counted either way; said at most every 10 s so a dead sink cannot flood stderr.
            eprintln!(
                "warden: event sink {spec}: {e} ({} event(s) lost in this batch)",
                w.failed
            );
            last_complaint = Some(Instant::now());
        }
    }
}
