//! Joining the proxy's reports with the kernel's connection events, by socket
//! cookie: the proxy reports the `SO_COOKIE` of each upstream socket it opens,
//! and the kernel's connect hook reports the same cookie for the same socket.
//! Exact, never by time or ports.
//!
//! A report explains a connection only if the process that sent it (its
//! verified pid) is the process that connected, and the connection goes to the
//! port the report names. Allowed connections to a protected port wait here
//! for their report at most the window; one that no report explains comes back
//! as *unattributed*. Reports wait for their flow the same window. Memory is
//! bounded: each side holds at most [`MAX_PENDING`] entries, and when one is
//! full its own oldest entry is let go (a flow is then reported unattributed at
//! once, a report is counted as unmatched).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use warden_common::FlowEvent;

pub const MAX_PENDING: usize = 65_536;
/// The longest window accepted (longer would hold every local connection's
/// event back that long).
pub const MAX_WINDOW: Duration = Duration::from_secs(30);

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

/// What a flow needs for the join: its cookie, process and destination port.
pub trait Joinable {
    fn cookie(&self) -> u64;
    fn tgid(&self) -> u32;
    fn dport(&self) -> u16;
}

impl<R> Joinable for (FlowEvent, R) {
    fn cookie(&self) -> u64 {
        self.0.cookie
    }
    fn tgid(&self) -> u32 {
        self.0.tgid
    }
    fn dport(&self) -> u16 {
        self.0.dport
    }
}

/// What the join gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum Joined<T> {
    /// A flow and the report that explains it.
    Correlated(T, Box<ProxyReport>),
    /// A flow no report explained within the window.
    Unattributed(T),
}

/// One side of the join: entries by cookie, and their arrival order.
struct Side<V> {
    map: HashMap<u64, (V, Instant)>,
    /// Arrival order; an entry whose map entry is gone (joined) is stale.
    order: VecDeque<(Instant, u64)>,
}

impl<V> Side<V> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Adds an entry; returns one displaced by the same cookie.
    fn insert(&mut self, cookie: u64, v: V, now: Instant) -> Option<V> {
        let old = self.map.insert(cookie, (v, now)).map(|(v, _)| v);
        self.order.push_back((now, cookie));
        if self.order.len() > 2 * MAX_PENDING {
            // Only stale entries can make it this long: drop them.
            let map = &self.map;
            self.order
                .retain(|(t, c)| map.get(c).is_some_and(|(_, at)| at == t));
        }
        old
    }

    fn remove(&mut self, cookie: u64) -> Option<V> {
        self.map.remove(&cookie).map(|(v, _)| v)
    }

    /// The oldest live entry, if it arrived before `before` (any age if None).
    fn pop_oldest(&mut self, before: Option<Instant>) -> Option<V> {
        while let Some(&(at, cookie)) = self.order.front() {
            if before.is_some_and(|b| at > b) {
                return None;
            }
            self.order.pop_front();
            if self.map.get(&cookie).is_some_and(|(_, t)| *t == at) {
                return self.map.remove(&cookie).map(|(v, _)| v);
            }
        }
        None
    }
}

pub struct Correlator<T> {
    window: Duration,
    flows: Side<T>,
    /// Reports with the pid of the process that sent them.
    reports: Side<(ProxyReport, u32)>,
    /// Reports that explained nothing: no flow within the window, a flow of
    /// another process or port, or cookie 0.
    pub unmatched_reports: u64,
}

impl<T: Joinable> Correlator<T> {
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.min(MAX_WINDOW),
            flows: Side::new(),
            reports: Side::new(),
            unmatched_reports: 0,
        }
    }

    pub fn pending(&self) -> (usize, usize) {
        (self.flows.map.len(), self.reports.map.len())
    }

    /// Whether `r`, sent by `pid`, explains `flow`.
    fn explains(flow: &T, r: &ProxyReport, pid: u32) -> bool {
        flow.tgid() == pid && flow.dport() == r.upstream.port()
    }

    fn join(&mut self, flow: T, r: ProxyReport, pid: u32) -> Joined<T> {
        if Self::explains(&flow, &r, pid) {
            Joined::Correlated(flow, Box::new(r))
        } else {
            self.unmatched_reports += 1;
            Joined::Unattributed(flow)
        }
    }

    /// An allowed connection to a protected port.
    pub fn offer_flow(&mut self, flow: T, now: Instant) -> Vec<Joined<T>> {
        let cookie = flow.cookie();
        if cookie == 0 {
            return vec![Joined::Unattributed(flow)];
        }
        if let Some((r, pid)) = self.reports.remove(cookie) {
            return vec![self.join(flow, r, pid)];
        }
        let mut out = Vec::new();
        if self.flows.map.len() >= MAX_PENDING
            && let Some(old) = self.flows.pop_oldest(None)
        {
            out.push(Joined::Unattributed(old));
        }
        if let Some(old) = self.flows.insert(cookie, flow, now) {
            out.push(Joined::Unattributed(old));
        }
        out
    }

    /// A report from the process `pid` (verified by the socket's credentials).
    pub fn offer_report(&mut self, r: ProxyReport, pid: u32, now: Instant) -> Option<Joined<T>> {
        if r.cookie == 0 {
            self.unmatched_reports += 1;
            return None;
        }
        if let Some(flow) = self.flows.remove(r.cookie) {
            return Some(self.join(flow, r, pid));
        }
        if self.reports.map.len() >= MAX_PENDING && self.reports.pop_oldest(None).is_some() {
            self.unmatched_reports += 1;
        }
        let cookie = r.cookie;
        if self.reports.insert(cookie, (r, pid), now).is_some() {
            self.unmatched_reports += 1;
        }
        None
    }

    /// Flows whose window ended without a report; expired reports are counted.
    pub fn expired(&mut self, now: Instant) -> Vec<Joined<T>> {
        let Some(cutoff) = now.checked_sub(self.window) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(f) = self.flows.pop_oldest(Some(cutoff)) {
            out.push(Joined::Unattributed(f));
        }
        while self.reports.pop_oldest(Some(cutoff)).is_some() {
            self.unmatched_reports += 1;
        }
        out
    }

    /// Flows still waiting when the daemon stops: their reports may still be
    /// on the way, so they are neither explained nor unexplained.
    pub fn drain(&mut self) -> Vec<T> {
        self.unmatched_reports += self.reports.map.len() as u64;
        self.reports = Side::new();
        let mut out = Vec::new();
        while let Some(f) = self.flows.pop_oldest(None) {
            out.push(f);
        }
        out
    }
}

/// Whether a flow is one the join waits for: a connect to a protected port that
/// went through (the kernel's view of somebody reaching Ollama), allowed or let
/// through by audit mode.
pub fn is_local_access(ev: &FlowEvent) -> bool {
    use warden_common::kinds::{Reason, Verdict};
    ev.hook().is_connect()
        && matches!(
            (ev.verdict(), ev.reason()),
            (Verdict::Allow, Reason::LocalAllowed) | (Verdict::WouldDeny, Reason::LocalNotAllowed)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow: (cookie, tgid, dport).
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct F(u64, u32, u16);

    impl Joinable for F {
        fn cookie(&self) -> u64 {
            self.0
        }
        fn tgid(&self) -> u32 {
            self.1
        }
        fn dport(&self) -> u16 {
            self.2
        }
    }

    const PROXY: u32 = 100;

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

    fn flow(cookie: u64) -> F {
        F(cookie, PROXY, 11434)
    }

    #[test]
    fn joins_by_cookie_whichever_comes_first() {
        let t0 = Instant::now();
        let mut c = Correlator::new(Duration::from_secs(2));
        assert!(c.offer_flow(flow(1), t0).is_empty());
        assert_eq!(
            c.offer_report(report(1), PROXY, t0),
            Some(Joined::Correlated(flow(1), Box::new(report(1))))
        );
        assert_eq!(c.offer_report(report(2), PROXY, t0), None);
        assert_eq!(
            c.offer_flow(flow(2), t0),
            vec![Joined::Correlated(flow(2), Box::new(report(2)))]
        );
        assert_eq!(c.pending(), (0, 0));
        assert_eq!(
            c.offer_flow(F(0, 1, 11434), t0),
            vec![Joined::Unattributed(F(0, 1, 11434))]
        );
        assert_eq!(c.unmatched_reports, 0);
    }

    #[test]
    fn a_report_explains_only_its_own_process_and_port() {
        let t0 = Instant::now();
        let mut c = Correlator::new(Duration::from_secs(2));
        // Report first, then a flow of another process with that cookie.
        c.offer_report(report(1), PROXY, t0);
        assert_eq!(
            c.offer_flow(F(1, 999, 11434), t0),
            vec![Joined::Unattributed(F(1, 999, 11434))]
        );
        // Flow first, then the report.
        c.offer_flow(F(2, 999, 11434), t0);
        assert_eq!(
            c.offer_report(report(2), PROXY, t0),
            Some(Joined::Unattributed(F(2, 999, 11434)))
        );
        // The right process, another port.
        c.offer_flow(F(3, PROXY, 22), t0);
        assert_eq!(
            c.offer_report(report(3), PROXY, t0),
            Some(Joined::Unattributed(F(3, PROXY, 22)))
        );
        // Cookie 0 explains nothing.
        assert_eq!(c.offer_report(report(0), PROXY, t0), None);
        assert_eq!(c.unmatched_reports, 4);
        assert_eq!(c.pending(), (0, 0));
    }

    #[test]
    fn what_the_window_does_not_explain_is_unattributed() {
        let t0 = Instant::now();
        let mut c = Correlator::new(Duration::from_secs(2));
        c.offer_flow(flow(1), t0);
        c.offer_report(report(9), PROXY, t0);
        c.offer_flow(flow(2), t0 + Duration::from_secs(1));
        assert!(c.expired(t0 + Duration::from_millis(1999)).is_empty());
        assert_eq!(
            c.expired(t0 + Duration::from_secs(2)),
            vec![Joined::Unattributed(flow(1))]
        );
        assert_eq!(c.unmatched_reports, 1);
        // A report after its flow expired explains nothing.
        assert_eq!(
            c.offer_report(report(1), PROXY, t0 + Duration::from_secs(2)),
            None
        );
        assert_eq!(c.drain(), vec![flow(2)]);
        assert_eq!(c.unmatched_reports, 2);
    }

    #[test]
    fn memory_is_bounded_per_side() {
        let t0 = Instant::now();
        let mut c = Correlator::new(Duration::from_secs(2));
        // A full report side never pushes flows out, and the reverse.
        for i in 0..(MAX_PENDING as u64 + 5) {
            c.offer_report(report(1_000_000 + i), PROXY, t0);
        }
        assert_eq!(c.pending().1, MAX_PENDING);
        assert_eq!(c.unmatched_reports, 5);
        let mut out = Vec::new();
        for i in 1..=(MAX_PENDING as u64 + 10) {
            out.extend(c.offer_flow(flow(i), t0));
        }
        assert_eq!(c.pending(), (MAX_PENDING, MAX_PENDING));
        assert_eq!(
            out,
            (1..=10)
                .map(|i| Joined::Unattributed(flow(i)))
                .collect::<Vec<_>>()
        );
        // Joined entries leave stale order entries; they are compacted.
        for round in 0..3u64 {
            for i in 0..(MAX_PENDING as u64) {
                let k = 10_000_000 * (round + 1) + i;
                c.offer_report(report(k), PROXY, t0);
                c.offer_flow(flow(k), t0);
            }
        }
        assert!(c.reports.order.len() <= 2 * MAX_PENDING + 1);
        assert!(c.flows.order.len() <= 2 * MAX_PENDING + 1);
        assert_eq!(
            Correlator::<F>::new(Duration::from_secs(3600)).window,
            MAX_WINDOW
        );
    }
}
