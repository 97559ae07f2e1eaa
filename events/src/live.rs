//! Live subscribers (`warden events`): every published event, in the format
//! each subscriber asked for, and the recent ones again for `--since`.
//!
//! The encoder thread publishes an [`Item`] (what it encodes from), so a
//! subscriber in another format than the sinks' gets its own encoding of the
//! same event, and a late subscriber gets the last [`HISTORY`] events encoded
//! for it. A subscriber whose queue is full is dropped, never waited for
//! (counted in `subscribers_dropped`): a slow terminal cannot slow the sinks
//! or enforcement.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde_json::Value;
use warden_common::FlowEvent;

use crate::aggregate::Repeats;
use crate::correlate::ProxyReport;
use crate::{Encoder, EventFormat};

/// Events kept for subscribers that ask for the recent past.
pub const HISTORY: usize = 4096;
/// A subscriber's queue; a subscriber this far behind is dropped.
pub const SUBSCRIBER_QUEUE: usize = 8192;

/// What an event is encoded from.
#[derive(Debug, Clone)]
pub enum Item {
    Flow(FlowEvent, Option<String>),
    Named(FlowEvent, Option<String>, Arc<str>),
    Repeats(Box<Repeats<Option<String>>>),
    Joined(FlowEvent, Option<String>, Option<Box<ProxyReport>>),
    Lifecycle(String, Value),
    /// One of the proxy's audit records (OCSF HTTP Activity, or a Detection
    /// Finding), shown to subscribers, not written to the sinks.
    ProxyAudit(Value),
}

impl Item {
    pub fn encode(&self, e: &mut Encoder) -> Value {
        match self {
            Self::Flow(ev, rule) => e.flow(ev, rule.as_deref()),
            Self::Named(ev, rule, name) => e.named(ev, rule.as_deref(), name),
            Self::Repeats(r) => e.repeats(r),
            Self::Joined(ev, rule, report) => e.joined(ev, rule.as_deref(), report.as_deref()),
            Self::Lifecycle(kind, fields) => e.lifecycle(kind, fields.clone()),
            Self::ProxyAudit(v) => match e.format {
                EventFormat::Ocsf | EventFormat::Compact => v.clone(),
                _ => serde_json::json!({ "type": "proxy_audit", "ocsf": v }),
            },
        }
    }
}

/// The line that follows the recent events a subscriber asked for: what
/// comes after it is live.
pub const LIVE_MARKER: &str = r#"{"warden":"live"}"#;

/// Which decisions a subscriber wants (every field given must match; no
/// field: everything, lifecycle events included).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `allow`, `deny` or `would_deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// A hook (`connect4`, `xdp`, `dns`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The cgroup path contains this, or the systemd unit is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The proxy identity a connection was correlated with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Filter {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn matches(&self, item: &Item, e: &mut Encoder) -> bool {
        if self.is_empty() {
            return true;
        }
        let (ev, report) = match item {
            Item::Flow(ev, _) | Item::Named(ev, _, _) => (ev, None),
            Item::Repeats(r) => (&r.last, None),
            Item::Joined(ev, _, r) => (ev, r.as_deref()),
            Item::Lifecycle(..) => return false,
            Item::ProxyAudit(v) => {
                // Only who: the identity the proxy authenticated.
                let only_identity = Filter {
                    identity: self.identity.clone(),
                    ..Filter::default()
                } == *self;
                return only_identity
                    && v["actor"]["user"]["name"].as_str() == self.identity.as_deref();
            }
        };
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if !is(&self.verdict, ev.verdict().as_str())
            || !is(&self.hook, ev.hook().as_str())
            || !is(&self.reason, ev.reason().as_str())
        {
            return false;
        }
        if let Some(want) = &self.identity
            && report.is_none_or(|r| &r.identity != want)
        {
            return false;
        }
        if let Some(want) = &self.cgroup {
            let c = e.enricher.cgroup(ev.cgroup_id, ev.tgid);
            let path = c.path.as_deref().is_some_and(|p| p.contains(want.as_str()));
            if !path && c.unit.as_deref() != Some(want.as_str()) {
                return false;
            }
        }
        true
    }
}

/// A subscription as the encoder thread receives it.
pub struct Subscribe {
    pub format: EventFormat,
    /// Unix milliseconds: the recent events from then on are sent first.
    pub since_ms: Option<u64>,
    pub filter: Filter,
    pub tx: SyncSender<Arc<str>>,
}

/// A new subscription and the receiving end the caller reads lines from.
pub fn subscription(
    format: EventFormat,
    since_ms: Option<u64>,
    filter: Filter,
) -> (Subscribe, Receiver<Arc<str>>) {
    let (tx, rx) = sync_channel(SUBSCRIBER_QUEUE);
    (
        Subscribe {
            format,
            since_ms,
            filter,
            tx,
        },
        rx,
    )
}

/// The encoder thread's subscribers, their encoders and the history.
pub struct Live {
    subs: Vec<(EventFormat, Filter, SyncSender<Arc<str>>)>,
    encoders: Vec<Encoder>,
    history: VecDeque<(u64, Item)>,
    cgroup2: std::path::PathBuf,
    /// Subscribers dropped for falling behind.
    pub dropped: u64,
}

impl Live {
    pub fn new(cgroup2: std::path::PathBuf) -> Self {
        Self {
            subs: Vec::new(),
            encoders: Vec::new(),
            history: VecDeque::with_capacity(HISTORY),
            cgroup2,
            dropped: 0,
        }
    }

    /// Adds a subscriber; sends it the recent events it asked for first.
    pub fn subscribe(&mut self, s: Subscribe) {
        if let Some(since) = s.since_ms {
            let history = std::mem::take(&mut self.history);
            let encoder = self.encoder(s.format);
            let mut sent = true;
            for (_, item) in history.iter().filter(|(t, _)| *t >= since) {
                if !s.filter.matches(item, encoder) {
                    continue;
                }
                let line: Arc<str> = crate::pipeline::to_json(&item.encode(encoder)).into();
                if s.tx.try_send(line).is_err() {
                    sent = false;
                    break;
                }
            }
            self.history = history;
            if !sent {
                self.dropped += 1;
                return;
            }
        }
        if s.tx.try_send(LIVE_MARKER.into()).is_err() {
            self.dropped += 1;
            return;
        }
        self.subs.push((s.format, s.filter, s.tx));
    }

    /// Offers an event (encoded for the sinks as `main`: format, line, if it
    /// went to them) to every subscriber, and keeps it for later ones.
    pub fn publish(&mut self, item: &Item, main: Option<(EventFormat, &str)>) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history
            .push_back((warden_runtime::clock::unix_ms(), item.clone()));
        if self.subs.is_empty() {
            return;
        }
        let (main_format, main): (Option<EventFormat>, Arc<str>) = match main {
            Some((f, line)) => (Some(f), line.into()),
            None => (None, "".into()),
        };
        let mut other: Vec<(EventFormat, Arc<str>)> = Vec::new();
        let mut keep = Vec::with_capacity(self.subs.len());
        for (format, filter, tx) in std::mem::take(&mut self.subs) {
            if !filter.matches(item, self.encoder(format)) {
                keep.push((format, filter, tx));
                continue;
            }
            let line = if Some(format) == main_format {
                main.clone()
            } else if let Some((_, l)) = other.iter().find(|(f, _)| *f == format) {
                l.clone()
            } else {
                let l: Arc<str> =
                    crate::pipeline::to_json(&item.encode(self.encoder(format))).into();
                other.push((format, l.clone()));
                l
            };
            match tx.try_send(line) {
                Ok(()) => keep.push((format, filter, tx)),
                Err(TrySendError::Full(_)) => self.dropped += 1,
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        self.subs = keep;
    }

    fn encoder(&mut self, format: EventFormat) -> &mut Encoder {
        match self.encoders.iter().position(|e| e.format == format) {
            Some(i) => &mut self.encoders[i],
            None => {
                self.encoders
                    .push(Encoder::new(format, self.cgroup2.clone()));
                self.encoders.last_mut().expect("just pushed")
            }
        }
    }
}
