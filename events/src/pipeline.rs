//! The event pipeline: kernel records and lifecycle events in, encoded events
//! out to every sink — without ever making the ring-buffer reader wait.
//!
//! ```text
//! reader ──try_send──▶ [record queue] ──▶ encoder thread ──try_send──▶ [sink queue] ──▶ sink thread ──▶ stdout/file/syslog/…
//!   (daemon loop)        full: counted     aggregate, enrich,           full: counted     write; errors counted
//!                                          encode once
//! lifecycle ──▶ [control queue, unbounded] ──▶ encoder ──▶ [per-sink lifecycle queue, unbounded] ──▶ sink thread
//! ```
//!
//! Every record is accounted for: written by a sink, or counted as dropped
//! (a full queue) or failed (a write error, a dead receiver, a cut message).
//! Lifecycle events (policy applied or rejected, losses, stop) are rare and are
//! never dropped by a queue. Kernel reservation failures are counted by the eBPF
//! programs; [`Pipeline::losses`] puts the numbers together for loss events and
//! `warden status`.

use super::aggregate::{Aggregator, Verdict};
use super::correlate::{Correlator, Joined, ProxyReport, is_local_access};
use super::sink::{self, SinkSpec};
use super::syslog::severity;
use super::{Encoder, EventFormat};
use crate::live::Item;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError, TrySendError, channel,
    sync_channel,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use warden_common::FlowEvent;
use warden_runtime::sync::Locked;

/// Kernel records waiting for the encoder (112 bytes each).
pub const RECORD_QUEUE: usize = 65_536;
/// Encoded flow events waiting for each sink.
pub const SINK_QUEUE: usize = 8_192;
/// Messages a sink writes in one go.
const SINK_BATCH: usize = 256;
/// When a sink wakes to fewer than `SINK_BATCH / 4` events, it waits this long
/// once for more: under load one write carries many events instead of one
/// write (and one wake-up) per event; at rest an event is at most this late.
const SINK_LINGER: Duration = Duration::from_millis(2);
/// How often the encoder closes expired aggregation windows.
const TICK: Duration = Duration::from_millis(100);
/// How long stopping waits for the backlog to be encoded and written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Config {
    pub sinks: Vec<SinkSpec>,
    pub format: EventFormat,
    pub cgroup2: std::path::PathBuf,
    /// Window for aggregating repeated denies; zero = off.
    pub aggregate: Duration,
    /// How long a local connection to a protected port waits for the proxy's
    /// report that explains it; zero = no join (reported at once, unmarked).
    pub correlate: Duration,
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
    Flow(FlowEvent, Option<Arc<str>>),
    /// A flow about a host name (neither joined nor aggregated).
    Named(FlowEvent, Option<Arc<str>>, Arc<str>),
    Lifecycle(String, Value),
    /// A lifecycle event is waiting in the control queue.
    Wake,
    /// An upstream-connection report from the proxy (peer pid).
    Report(Box<ProxyReport>, u32),
    /// A live subscriber (`warden events`).
    Subscribe(crate::live::Subscribe),
    /// One of the proxy's audit records: for live subscribers only.
    ProxyAudit(Value),
    /// The last input: report what aggregation holds, then `stop` with these
    /// fields and the final record counts (the kernel's given).
    Stop(Value, KernelLosses),
}

#[derive(Default)]
struct SinkCounters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// In a queue or being written.
    pending: AtomicU64,
    /// Set when stopping gave up on a stuck sink: its thread no longer counts.
    /// Taken with the lock, so the give-up and a late count never both happen.
    abandoned: Mutex<bool>,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    queue_dropped: AtomicU64,
    aggregated: AtomicU64,
    reports: AtomicU64,
    reports_dropped: AtomicU64,
    reports_unmatched: AtomicU64,
    correlated: AtomicU64,
    unattributed: AtomicU64,
    undetermined: AtomicU64,
    subscribers_dropped: AtomicU64,
}

/// What the kernel counted but did not deliver, since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelLosses {
    /// Ring buffer full (eBPF) or NFLOG overrun.
    pub lost: u64,
    /// Beyond the per-CPU event budget (a flood); verdicts still counted per rule.
    pub suppressed: u64,
}

/// Loss and delivery counts since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Records the kernel could not queue (ring buffer full, NFLOG overrun).
    pub kernel_lost: u64,
    /// Records the kernel did not emit because a CPU's event budget was spent.
    #[serde(default)]
    pub kernel_suppressed: u64,
    /// Records the daemon read from the kernel.
    pub records: u64,
    /// Records dropped because the encoder's queue was full.
    pub queue_dropped: u64,
    /// Denies folded into aggregate events (reported by count, not lost).
    pub aggregated: u64,
    /// Proxy reports received, dropped (queue full), and left unmatched (no
    /// kernel connection of the proxy's within the window).
    #[serde(default)]
    pub proxy_reports: u64,
    #[serde(default)]
    pub proxy_reports_dropped: u64,
    #[serde(default)]
    pub proxy_reports_unmatched: u64,
    /// Local connections joined with a proxy report, and those no report explained.
    #[serde(default)]
    pub correlated: u64,
    #[serde(default)]
    pub unattributed: u64,
    /// Local connections still waiting for a report when the daemon stopped
    /// (published unmarked).
    #[serde(default)]
    pub undetermined: u64,
    /// Live subscribers (`warden events`) dropped for falling behind: they
    /// lose what they did not read, the sinks lose nothing.
    #[serde(default)]
    pub subscribers_dropped: u64,
    pub sinks: Vec<SinkLosses>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkLosses {
    pub sink: String,
    pub written: u64,
    /// Dropped because the sink's queue was full (a slow or blocked receiver),
    /// or still queued when stopping gave up on it.
    pub dropped: u64,
    /// Lost to write errors (a dead receiver, a full disk, a cut connection).
    pub failed: u64,
    pub pending: u64,
}

impl Losses {
    /// Events lost anywhere (not counting aggregation, which loses nothing).
    pub fn total(&self) -> u64 {
        self.kernel_lost
            + self.kernel_suppressed
            + self.queue_dropped
            + self.proxy_reports_dropped
            + self.sinks.iter().map(|s| s.dropped + s.failed).sum::<u64>()
    }
}

/// A handle that takes live subscriptions (`warden events`), for the
/// daemon's subscription socket.
#[derive(Clone)]
pub struct Subscriptions {
    tx: SyncSender<Input>,
    ctl: Sender<Input>,
}

impl Subscriptions {
    /// Every event from now on (and the recent ones from `since_ms`,
    /// followed by [`crate::live::LIVE_MARKER`]) that `filter` matches, as
    /// JSON lines in `format`, until the receiver is dropped or falls
    /// [`crate::live::SUBSCRIBER_QUEUE`] events behind.
    pub fn subscribe(
        &self,
        format: crate::EventFormat,
        since_ms: Option<u64>,
        filter: crate::live::Filter,
    ) -> Receiver<Arc<str>> {
        let (s, rx) = crate::live::subscription(format, since_ms, filter);
        let _ = self.ctl.send(Input::Subscribe(s));
        let _ = self.tx.try_send(Input::Wake);
        rx
    }
}

/// What the encoder holds of a sink.
struct SinkQueues {
    name: String,
    /// `None` wakes the sink for a lifecycle event.
    flows: SyncSender<Option<Arc<Encoded>>>,
    lifecycle: Sender<Arc<Encoded>>,
    counters: Arc<SinkCounters>,
}

struct SinkThread {
    spec: SinkSpec,
    counters: Arc<SinkCounters>,
    thread: JoinHandle<()>,
}

pub struct Pipeline {
    tx: SyncSender<Input>,
    /// Lifecycle events: rare, never dropped, never waited for.
    ctl: Sender<Input>,
    counters: Arc<Counters>,
    sinks: Vec<SinkThread>,
    encoder: JoinHandle<()>,
    stopping: Arc<AtomicBool>,
    /// Losses in the last loss event.
    reported: Losses,
}

impl Pipeline {
    /// Opens every sink (a file that cannot be opened is an error; network
    /// receivers are connected lazily) and starts the threads.
    pub fn start(cfg: Config) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut sinks = Vec::new();
        for spec in &cfg.sinks {
            let writer = sink::open(spec)?;
            let counters = Arc::new(SinkCounters::default());
            let (flows, flows_rx) = sync_channel(SINK_QUEUE);
            let (lifecycle, lifecycle_rx) = channel();
            let thread = {
                let (spec, counters) = (spec.clone(), counters.clone());
                std::thread::Builder::new()
                    .name("warden-sink".into())
                    .spawn(move || run_sink(&spec, writer, flows_rx, lifecycle_rx, &counters))?
            };
            queues.push(SinkQueues {
                name: spec.text.clone(),
                flows,
                lifecycle,
                counters: counters.clone(),
            });
            sinks.push(SinkThread {
                spec: spec.clone(),
                counters,
                thread,
            });
        }
        let counters = Arc::new(Counters::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel(RECORD_QUEUE);
        let (ctl, ctl_rx) = channel();
        let encoder = {
            let (counters, stopping) = (counters.clone(), stopping.clone());
            std::thread::Builder::new()
                .name("warden-encode".into())
                .spawn(move || {
                    Encoding {
                        encoder: Encoder::new(cfg.format, cfg.cgroup2.clone()),
                        live: crate::live::Live::new(cfg.cgroup2.clone()),
                        format: cfg.format,
                        style: if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                            crate::compact::Style::Ansi
                        } else {
                            crate::compact::Style::Plain
                        },
                        queues,
                        counters,
                        stopping,
                        deadline: None,
                    }
                    .run(cfg.aggregate, cfg.correlate, rx, ctl_rx)
                })?
        };
        Ok(Self {
            tx,
            ctl,
            counters,
            sinks,
            encoder,
            stopping,
            reported: Losses::default(),
        })
    }

    /// A handle for the proxy-report listener.
    pub fn reports(&self) -> ReportTx {
        ReportTx {
            tx: self.tx.clone(),
            ctl: self.ctl.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Queues a kernel record; never blocks (a full queue is counted).
    /// `rule`: the description of the rule that decided, from the policy in force.
    pub fn flow(&self, ev: FlowEvent, rule: Option<Arc<str>>) {
        self.counters.records.fetch_add(1, Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Input::Flow(ev, rule))
        {
            self.counters.queue_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Queues a flow about a host name: an allowed connection and the name
    /// its address was learned for, or a DNS question and its name.
    pub fn named(&self, ev: FlowEvent, rule: Option<Arc<str>>, name: Arc<str>) {
        self.counters.records.fetch_add(1, Relaxed);
        if self.tx.try_send(Input::Named(ev, rule, name)).is_err() {
            self.counters.queue_dropped.fetch_add(1, Relaxed);
        }
    }

    /// A live subscription: every event from now on (and the recent ones
    /// from `since_ms`), as JSON lines in `format`, until the receiver is
    /// dropped or falls [`crate::live::SUBSCRIBER_QUEUE`] events behind.
    pub fn subscriptions(&self) -> Subscriptions {
        Subscriptions {
            tx: self.tx.clone(),
            ctl: self.ctl.clone(),
        }
    }

    /// Queues a lifecycle event: never dropped, never waited for.
    pub fn lifecycle(&self, kind: &str, fields: Value) {
        let _ = self.ctl.send(Input::Lifecycle(kind.into(), fields));
        // Wakes an idle encoder; a busy one looks at the control queue anyway.
        let _ = self.tx.try_send(Input::Wake);
    }

    pub fn losses(&self, kernel: KernelLosses) -> Losses {
        losses(
            &self.counters,
            self.sinks
                .iter()
                .map(|s| (s.spec.text.as_str(), s.counters.as_ref())),
            kernel,
        )
    }

    /// Emits a `loss` event when anything was lost since the last one; returns
    /// the current numbers.
    pub fn report_losses(&mut self, kernel: KernelLosses) -> Losses {
        let now = self.losses(kernel);
        if now.total() != self.reported.total() {
            let prev = &self.reported;
            let sum = |l: &Losses, f: fn(&SinkLosses) -> u64| l.sinks.iter().map(f).sum::<u64>();
            let since = serde_json::json!({
                "kernel_lost": now.kernel_lost.saturating_sub(prev.kernel_lost),
                "kernel_suppressed": now.kernel_suppressed.saturating_sub(prev.kernel_suppressed),
                "queue_dropped": now.queue_dropped - prev.queue_dropped,
                "sink_dropped": sum(&now, |s| s.dropped) - sum(prev, |s| s.dropped),
                "sink_failed": sum(&now, |s| s.failed) - sum(prev, |s| s.failed),
                "proxy_reports_dropped": now.proxy_reports_dropped - prev.proxy_reports_dropped,
            });
            let mut fields = serde_json::to_value(&now).unwrap_or_default();
            fields["since_last_report"] = since;
            fields["lost_total"] = now.total().into();
            self.lifecycle("loss", fields);
            self.reported = now.clone();
        }
        now
    }

    /// Stops: the queued records are encoded and what aggregation holds is
    /// reported, then the `stop` event (`fields` plus the record counts) goes out
    /// last; sinks get until [`SHUTDOWN_GRACE`] after the call to write it all.
    /// What a stuck sink still holds then is counted as dropped. Returns the
    /// final numbers.
    pub fn shutdown(self, stop_fields: Value, kernel: KernelLosses) -> Losses {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        self.stopping.store(true, Relaxed);
        // Blocking is fine now: the encoder drains the queue in front of it.
        let _ = self.tx.send(Input::Stop(stop_fields, kernel));
        drop(self.tx);
        drop(self.ctl);
        let _ = self.encoder.join();
        for s in &self.sinks {
            while !s.thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !s.thread.is_finished() {
                // Stuck in a write (a blocked pipe): what it holds is lost.
                let mut abandoned = s.counters.abandoned.locked();
                *abandoned = true;
                let stuck = s.counters.pending.swap(0, Relaxed);
                s.counters.dropped.fetch_add(stuck, Relaxed);
                tracing::warn!(
                    sink = %s.spec,
                    "event sink {} did not finish writing; {stuck} event(s) dropped",
                    s.spec
                );
            }
        }
        let last = losses(
            &self.counters,
            self.sinks
                .iter()
                .map(|s| (s.spec.text.as_str(), s.counters.as_ref())),
            kernel,
        );
        for s in self.sinks {
            if s.thread.is_finished() {
                let _ = s.thread.join();
            }
        }
        last
    }
}

fn losses<'a>(
    counters: &Counters,
    sinks: impl Iterator<Item = (&'a str, &'a SinkCounters)>,
    kernel: KernelLosses,
) -> Losses {
    Losses {
        kernel_lost: kernel.lost,
        kernel_suppressed: kernel.suppressed,
        records: counters.records.load(Relaxed),
        queue_dropped: counters.queue_dropped.load(Relaxed),
        aggregated: counters.aggregated.load(Relaxed),
        proxy_reports: counters.reports.load(Relaxed),
        proxy_reports_dropped: counters.reports_dropped.load(Relaxed),
        proxy_reports_unmatched: counters.reports_unmatched.load(Relaxed),
        correlated: counters.correlated.load(Relaxed),
        unattributed: counters.unattributed.load(Relaxed),
        undetermined: counters.undetermined.load(Relaxed),
        subscribers_dropped: counters.subscribers_dropped.load(Relaxed),
        sinks: sinks
            .map(|(name, c)| SinkLosses {
                sink: name.to_owned(),
                written: c.written.load(Relaxed),
                dropped: c.dropped.load(Relaxed),
                failed: c.failed.load(Relaxed),
                pending: c.pending.load(Relaxed),
            })
            .collect(),
    }
}

/// Hands proxy reports to the encoder; never blocks (a full queue is counted).
#[derive(Clone)]
pub struct ReportTx {
    tx: SyncSender<Input>,
    ctl: Sender<Input>,
    counters: Arc<Counters>,
}

impl ReportTx {
    pub fn send(&self, r: ProxyReport, peer_pid: u32) {
        self.counters.reports.fetch_add(1, Relaxed);
        if self
            .tx
            .try_send(Input::Report(Box::new(r), peer_pid))
            .is_err()
        {
            self.counters.reports_dropped.fetch_add(1, Relaxed);
        }
    }

    /// One of the proxy's audit records, for live subscribers only (dropped
    /// when the queue is full: the proxy's own audit sinks keep it).
    pub fn audit(&self, record: Value) {
        let _ = self.tx.try_send(Input::ProxyAudit(record));
    }

    /// A lifecycle event about the proxy channel (never dropped).
    pub fn lifecycle(&self, kind: &str, fields: Value) {
        let _ = self.ctl.send(Input::Lifecycle(kind.into(), fields));
        let _ = self.tx.try_send(Input::Wake);
    }
}

type Pending = (FlowEvent, Option<String>);

/// The encoder thread's state.
struct Encoding {
    encoder: Encoder,
    format: crate::EventFormat,
    /// Colours for [`EventFormat::Compact`] (stdout is a terminal).
    style: crate::compact::Style,
    live: crate::live::Live,
    queues: Vec<SinkQueues>,
    counters: Arc<Counters>,
    stopping: Arc<AtomicBool>,
    /// Set when stopping: flows then wait for room until it, instead of dropping.
    deadline: Option<Instant>,
}

impl Encoding {
    fn run(
        mut self,
        window: Duration,
        correlate: Duration,
        rx: Receiver<Input>,
        ctl: Receiver<Input>,
    ) {
        let mut aggregator: Aggregator<Option<String>> = Aggregator::new(window);
        let mut join: Option<Correlator<Pending>> =
            (!correlate.is_zero()).then(|| Correlator::new(correlate));
        // The join starts with the first proxy session: before any proxy has
        // connected, local connections are published at once, unmarked.
        let mut proxy_seen = false;
        let mut next_tick = Instant::now() + TICK;
        loop {
            let mut inputs = Vec::with_capacity(2);
            match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(input) => inputs.push(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.deadline.is_none() && self.stopping.load(Relaxed) {
                self.deadline = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            // Lifecycle events queued before this input go first.
            let mut ordered: Vec<Input> = ctl.try_iter().collect();
            ordered.append(&mut inputs);
            for input in ordered {
                match input {
                    Input::Flow(ev, rule) => {
                        let rule = rule.map(|r| r.to_string());
                        if let Some(j) =
                            join.as_mut().filter(|_| proxy_seen && is_local_access(&ev))
                        {
                            for joined in j.offer_flow((ev, rule), Instant::now()) {
                                self.publish_joined(joined);
                            }
                            continue;
                        }
                        match aggregator.offer(&ev, &rule, Instant::now()) {
                            Verdict::Report { closed } => {
                                if let Some(r) = closed {
                                    self.emit_flow(Item::Repeats(Box::new(r)));
                                }
                                self.emit_flow(Item::Flow(ev, rule));
                            }
                            Verdict::Counted => {
                                self.counters.aggregated.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    Input::Named(ev, rule, name) => {
                        self.emit_flow(Item::Named(ev, rule.map(|r| r.to_string()), name));
                    }
                    Input::Subscribe(s) => self.live.subscribe(s),
                    Input::ProxyAudit(v) => self.live.publish(&Item::ProxyAudit(v), None),
                    Input::Lifecycle(kind, fields) => {
                        proxy_seen |= kind == "proxy_connected";
                        self.publish_lifecycle(&kind, fields);
                    }
                    Input::Report(r, pid) => {
                        if let Some(j) = join.as_mut() {
                            proxy_seen = true;
                            if let Some(joined) = j.offer_report(*r, pid, Instant::now()) {
                                self.publish_joined(joined);
                            }
                        }
                    }
                    Input::Wake => {}
                    Input::Stop(mut fields, kernel) => {
                        if let Some(j) = join.as_mut() {
                            // Their reports may still be on the way: published
                            // as plain flows, counted as undetermined.
                            for (ev, rule) in j.drain() {
                                self.counters.undetermined.fetch_add(1, Relaxed);
                                self.emit_flow(Item::Flow(ev, rule));
                            }
                            self.counters
                                .reports_unmatched
                                .store(j.unmatched_reports, Relaxed);
                        }
                        for r in aggregator.drain() {
                            self.emit_flow(Item::Repeats(Box::new(r)));
                        }
                        fields["events"] =
                            serde_json::to_value(self.losses(kernel)).unwrap_or_default();
                        self.publish_lifecycle("stop", fields);
                        return;
                    }
                }
            }
            if Instant::now() >= next_tick {
                if let Some(j) = join.as_mut() {
                    for joined in j.expired(Instant::now()) {
                        self.publish_joined(joined);
                    }
                    // The correlator is the one source of this count.
                    self.counters
                        .reports_unmatched
                        .store(j.unmatched_reports, Relaxed);
                }
                for r in aggregator.expired(Instant::now()) {
                    self.emit_flow(Item::Repeats(Box::new(r)));
                }
                next_tick = Instant::now() + TICK;
            }
        }
    }

    fn losses(&self, kernel: KernelLosses) -> Losses {
        losses(
            &self.counters,
            self.queues
                .iter()
                .map(|q| (q.name.as_str(), q.counters.as_ref())),
            kernel,
        )
    }

    /// `v` was just made by the encoder: its sequence number is the encoder's.
    fn encoded(&self, v: Value, severity: u8, msgid: &str) -> Arc<Encoded> {
        let json = match self.format {
            EventFormat::Compact => crate::compact::line(&v, &|_| None, self.style),
            _ => to_json(&v),
        };
        self.encoded_line(json, severity, msgid)
    }

    fn encoded_line(&self, json: String, severity: u8, msgid: &str) -> Arc<Encoded> {
        Arc::new(Encoded {
            json,
            severity,
            msgid: msgid.to_owned(),
            time_ms: super::now_ms(),
            seq: self.encoder.seq(),
        })
    }

    /// Offers a flow event to every sink; a full queue drops it (counted), except
    /// while stopping, when it waits for room until the deadline.
    fn emit_flow(&mut self, item: Item) {
        let ev = match &item {
            Item::Flow(ev, _) | Item::Named(ev, _, _) | Item::Joined(ev, _, _) => ev,
            Item::Repeats(r) => &r.last,
            Item::Lifecycle(..) | Item::ProxyAudit(_) => {
                return self.publish(item, severity::NOTICE);
            }
        };
        let sev = if ev.verdict() == warden_common::kinds::Verdict::Allow {
            severity::INFO
        } else {
            severity::WARNING
        };
        self.publish(item, sev);
    }

    fn publish(&mut self, item: Item, sev: u8) {
        // A plain flow goes straight to bytes where the format can.
        let line = match &item {
            Item::Flow(ev, rule) => self.encoder.flow_line(ev, rule.as_deref()),
            _ => None,
        };
        let e = match line {
            Some(json) => self.encoded_line(json, sev, "flow"),
            None => {
                let v = item.encode(&mut self.encoder);
                self.encoded(v, sev, "flow")
            }
        };
        self.live.publish(&item, Some((self.format, &e.json)));
        self.counters
            .subscribers_dropped
            .store(self.live.dropped, Relaxed);
        for q in &self.queues {
            q.counters.pending.fetch_add(1, Relaxed);
            let mut item = Some(e.clone());
            loop {
                match q.flows.try_send(item.take()) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back))
                        if self.deadline.is_some_and(|d| Instant::now() < d) =>
                    {
                        item = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => {
                        q.counters.pending.fetch_sub(1, Relaxed);
                        q.counters.dropped.fetch_add(1, Relaxed);
                        break;
                    }
                }
            }
        }
    }

    /// Publishes a local connection after the join.
    fn publish_joined(&mut self, joined: Joined<Pending>) {
        let ((ev, rule), report) = match joined {
            Joined::Correlated(pending, r) => (pending, Some(r)),
            Joined::Unattributed(pending) => (pending, None),
        };
        let c = if report.is_some() {
            &self.counters.correlated
        } else {
            &self.counters.unattributed
        };
        c.fetch_add(1, Relaxed);
        let sev = if report.is_some() {
            severity::INFO
        } else {
            severity::WARNING
        };
        self.publish(Item::Joined(ev, rule, report), sev);
    }

    /// Hands a lifecycle event to every sink's unbounded lifecycle queue.
    fn publish_lifecycle(&mut self, kind: &str, fields: Value) {
        let sev = match kind {
            "policy_rejected" => severity::ERROR,
            "backend_fallback" | "loss" => severity::WARNING,
            _ => severity::NOTICE,
        };
        let item = Item::Lifecycle(kind.to_owned(), fields);
        let v = item.encode(&mut self.encoder);
        let e = self.encoded(v, sev, kind);
        self.live.publish(&item, Some((self.format, &e.json)));
        self.counters
            .subscribers_dropped
            .store(self.live.dropped, Relaxed);
        for q in &self.queues {
            q.counters.pending.fetch_add(1, Relaxed);
            if q.lifecycle.send(e.clone()).is_err() {
                q.counters.pending.fetch_sub(1, Relaxed);
                q.counters.dropped.fetch_add(1, Relaxed);
            }
            // Wakes a sink waiting for flows; a full queue means it is busy anyway.
            let _ = q.flows.try_send(None);
        }
    }
}

/// `v` as one JSON line. Written straight into a byte buffer sized for a
/// typical event: `Value`'s `Display` goes through the formatter and costs
/// twice as much, a third of the encoder's time at full load.
pub fn to_json(v: &Value) -> String {
    let mut buf = Vec::with_capacity(1536);
    serde_json::to_writer(&mut buf, v).expect("a Value always serializes");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

fn run_sink(
    spec: &SinkSpec,
    mut writer: Box<dyn sink::Writer>,
    flows: Receiver<Option<Arc<Encoded>>>,
    lifecycle: Receiver<Arc<Encoded>>,
    counters: &SinkCounters,
) {
    let framer = sink::Framer::new(spec);
    let frame = |e: &Encoded| framer.frame(&e.json, e.severity, e.time_ms, &e.msgid, e.seq);
    let mut last_complaint: Option<Instant> = None;
    let mut open = true;
    while open {
        let mut batch = Vec::new();
        let first = flows.recv();
        // Lifecycle events first: they are never dropped and usually explain
        // the flows around them.
        batch.extend(lifecycle.try_iter().map(|e| frame(&e)));
        match first {
            Ok(Some(e)) => batch.push(frame(&e)),
            Ok(None) => {}
            Err(_) => open = false,
        }
        let mut lingered = false;
        while batch.len() < SINK_BATCH {
            match flows.try_recv() {
                Ok(Some(e)) => batch.push(frame(&e)),
                Ok(None) => {}
                Err(TryRecvError::Empty) if open && !lingered && batch.len() < SINK_BATCH / 4 => {
                    lingered = true;
                    std::thread::sleep(SINK_LINGER);
                }
                Err(_) => break,
            }
        }
        batch.extend(lifecycle.try_iter().map(|e| frame(&e)));
        if batch.is_empty() {
            continue;
        }
        let w = writer.write_batch(&batch);
        let abandoned = counters.abandoned.locked();
        if *abandoned {
            return;
        }
        counters.written.fetch_add(w.ok as u64, Relaxed);
        counters.failed.fetch_add(w.failed as u64, Relaxed);
        counters.pending.fetch_sub(batch.len() as u64, Relaxed);
        drop(abandoned);
        if let Some(e) = w.error
            && last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            // Counted either way; said at most every 10 s so a dead sink cannot flood stderr.
            tracing::warn!(
                sink = %spec,
                "event sink {spec}: {e} ({} event(s) lost in this batch)",
                w.failed
            );
            last_complaint = Some(Instant::now());
        }
    }
}
