//! Joining the proxy's reports with the kernel's connection events, by socket
//! cookie: the proxy reports the `SO_COOKIE` of each upstream connection it
//! opens, and the kernel's connect hook reports the same cookie for the same
//! socket. Exact, never by time or ports.
//!
//! Allowed connections to a protected port wait here for their report at most
//! the window; one that no report explains comes back as *unattributed*.
//! Reports wait for their flow the same window. Memory is bounded: beyond
//! [`MAX_PENDING`] entries on either side the oldest is let go (a flow then is
//! reported unattributed at once, a report is counted as unmatched).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use warden_common::FlowEvent;

pub const MAX_PENDING: usize = 65_536;

/// One upstream connection, as the proxy reports it (a JSON line on the
/// daemon's proxy socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyReport {
    /// SO_COOKIE of the proxy's upstream socket.
    pub cookie: u64,
    pub request_id: String,
    pub identity: String,
    #[serde(default)]
    pub model: Option<String>,
    /// The outer leg: the client, and the proxy address it connected to.
    pub client: SocketAddr,
    pub listener: SocketAddr,
    /// The inner leg: the proxy's upstream socket and Ollama.
    pub local: SocketAddr,
    pub upstream: SocketAddr,
    pub time_ms: u64,
}

/// What the join gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum Joined<T> {
    /// A flow and the report that explains it.
    Correlated(T, Box<ProxyReport>),
    /// A flow no report explained within the window.
    Unattributed(T),
}

pub struct Correlator<T> {
    window: Duration,
    flows: HashMap<u64, (T, Instant)>,
    reports: HashMap<u64, (ProxyReport, Instant)>,
    /// Arrival order, for expiry and eviction (entries may be stale).
    order: VecDeque<(Instant, u64, bool)>,
    /// Reports no flow matched within the window.
    pub unmatched_reports: u64,
}

impl<T> Correlator<T> {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            flows: HashMap::new(),
            reports: HashMap::new(),
            order: VecDeque::new(),
            unmatched_reports: 0,
        }
    }

    pub fn pending(&self) -> (usize, usize) {
        (self.flows.len(), self.reports.len())
    }

    /// An allowed connection to a protected port (`cookie` from its event).
    pub fn offer_flow(&mut self, cookie: u64, flow: T, now: Instant) -> Vec<Joined<T>> {
        if let Some((r, _)) = self.reports.remove(&cookie) {
            return vec![Joined::Correlated(flow, Box::new(r))];
        }
        let mut out = Vec::new();
        if cookie == 0 {
            out.push(Joined::Unattributed(flow));
            return out;
        }
        if self.flows.len() >= MAX_PENDING {
            out.extend(self.evict(true));
        }
        if let Some((old, _)) = self.flows.insert(cookie, (flow, now)) {
            out.push(Joined::Unattributed(old));
        }
        self.order.push_back((now, cookie, true));
        out
    }

    pub fn offer_report(&mut self, r: ProxyReport, now: Instant) -> Option<Joined<T>> {
        if let Some((flow, _)) = self.flows.remove(&r.cookie) {
            return Some(Joined::Correlated(flow, Box::new(r)));
        }
        if self.reports.len() >= MAX_PENDING {
            self.evict(false);
        }
        let cookie = r.cookie;
        if self.reports.insert(cookie, (r, now)).is_some() {
            self.unmatched_reports += 1;
        }
        self.order.push_back((now, cookie, false));
        None
    }

    /// Flows whose window ended without a report; expired reports are counted.
    pub fn expired(&mut self, now: Instant) -> Vec<Joined<T>> {
        let mut out = Vec::new();
        while let Some(&(at, cookie, is_flow)) = self.order.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            self.take(cookie, is_flow, at, &mut out);
        }
        out
    }

    /// Everything still waiting (at stop).
    pub fn drain(&mut self) -> Vec<Joined<T>> {
        self.unmatched_reports += self.reports.len() as u64;
        self.reports.clear();
        self.order.clear();
        self.flows
            .drain()
            .map(|(_, (f, _))| Joined::Unattributed(f))
            .collect()
    }

    /// Lets the oldest entry of one side go.
    fn evict(&mut self, flows: bool) -> Vec<Joined<T>> {
        let mut out = Vec::new();
        let before = (self.flows.len(), self.reports.len());
        while let Some((at, cookie, is_flow)) = self.order.pop_front() {
            self.take(cookie, is_flow, at, &mut out);
            let after = (self.flows.len(), self.reports.len());
            if (flows && after.0 < before.0) || (!flows && after.1 < before.1) {
                break;
            }
        }
        out
    }

    /// Removes an entry if `order` still describes it (same arrival time).
    fn take(&mut self, cookie: u64, is_flow: bool, at: Instant, out: &mut Vec<Joined<T>>) {
        if is_flow {
            if self.flows.get(&cookie).is_some_and(|(_, t)| *t == at) {
                let (f, _) = self.flows.remove(&cookie).expect("present");
                out.push(Joined::Unattributed(f));
            }
        } else if self.reports.get(&cookie).is_some_and(|(_, t)| *t == at) {
            self.reports.remove(&cookie);
            self.unmatched_reports += 1;
        }
    }
}

/// Whether a flow is one the join waits for: an allowed connect to a protected
/// port (the kernel's view of somebody reaching Ollama).
pub fn is_local_access(ev: &FlowEvent) -> bool {
    use warden_common::{hook, verdict};
    ev.verdict == verdict::ALLOW && matches!(ev.hook, hook::CONNECT4 | hook::CONNECT6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cookie: u64) -> ProxyReport {
        ProxyReport {
            cookie,
            request_id: format!("r{cookie}"),
            identity: "alice".into(),
            model: None,
            client: "10.0.0.1:5000".parse().unwrap(),
            listener: "10.0.0.2:8443".parse().unwrap(),
            local: "127.0.0.1:40000".parse().unwrap(),
            upstream: "127.0.0.1:11434".parse().unwrap(),
            time_ms: 0,
        }
    }

    #[test]
    fn joins_by_cookie_whichever_comes_first() {
        let t0 = Instant::now();
        let mut c: Correlator<&str> = Correlator::new(Duration::from_secs(2));
        assert!(c.offer_flow(1, "flow1", t0).is_empty());
        assert_eq!(
            c.offer_report(report(1), t0),
            Some(Joined::Correlated("flow1", Box::new(report(1))))
        );
        assert_eq!(c.offer_report(report(2), t0), None);
        assert_eq!(
            c.offer_flow(2, "flow2", t0),
            vec![Joined::Correlated("flow2", Box::new(report(2)))]
        );
        assert_eq!(c.pending(), (0, 0));
        assert_eq!(
            c.offer_flow(0, "xdp", t0),
            vec![Joined::Unattributed("xdp")]
        );
    }

    #[test]
    fn what_the_window_does_not_explain_is_unattributed() {
        let t0 = Instant::now();
        let mut c: Correlator<&str> = Correlator::new(Duration::from_secs(2));
        c.offer_flow(1, "rogue", t0);
        c.offer_report(report(9), t0);
        c.offer_flow(2, "later", t0 + Duration::from_secs(1));
        assert!(c.expired(t0 + Duration::from_millis(1999)).is_empty());
        assert_eq!(
            c.expired(t0 + Duration::from_secs(2)),
            vec![Joined::Unattributed("rogue")]
        );
        assert_eq!(c.unmatched_reports, 1);
        // A report after its flow expired explains nothing.
        assert_eq!(c.offer_report(report(1), t0 + Duration::from_secs(2)), None);
        assert_eq!(c.drain(), vec![Joined::Unattributed("later")]);
        assert_eq!(c.unmatched_reports, 2);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut c: Correlator<u64> = Correlator::new(Duration::from_secs(2));
        let mut out = Vec::new();
        for i in 1..=(MAX_PENDING as u64 + 10) {
            out.extend(c.offer_flow(i, i, t0));
        }
        assert_eq!(c.pending().0, MAX_PENDING);
        assert_eq!(out, (1..=10).map(Joined::Unattributed).collect::<Vec<_>>());
        for i in 0..(MAX_PENDING as u64 + 5) {
            c.offer_report(report(1_000_000 + i), t0);
        }
        assert_eq!(c.pending().1, MAX_PENDING);
        assert_eq!(c.unmatched_reports, 5);
    }
}
