//! Aggregation of repeated denies, so a scan or a flood cannot drown the SIEM.
//!
//! The first deny of a kind (same hook, reason, rule, protocol, source and
//! destination) is reported at once. Repeats within the window are counted, and
//! when the window closes one event reports them with their count and the times
//! of the first and last. The next deny after that starts a new window. Allowed
//! flows are never aggregated. The table is bounded: when it is full a new kind
//! of deny is reported on its own, never dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use warden_common::FlowEvent;

/// Kinds of deny tracked at once.
pub const MAX_KEYS: usize = 16_384;

/// What makes two denies "the same": the source is the remote address for
/// packets, and the process (cgroup, uid, pid, comm) for system calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    hook: u8,
    verdict: u8,
    reason: u8,
    proto: u8,
    rule_id: u32,
    saddr: [u8; 16],
    cgroup_id: u64,
    uid: u32,
    tgid: u32,
    comm: [u8; 16],
    daddr: [u8; 16],
    dport: u16,
}

impl Key {
    fn of(ev: &FlowEvent) -> Self {
        let packet = ev.hook().is_packet();
        Self {
            hook: ev.hook,
            verdict: ev.verdict,
            reason: ev.reason,
            proto: ev.proto,
            rule_id: ev.rule_id,
            // The source port changes with every attempt; the source does not.
            saddr: if packet { ev.saddr } else { [0; 16] },
            cgroup_id: ev.cgroup_id,
            uid: ev.uid,
            tgid: ev.tgid,
            comm: ev.comm,
            daddr: ev.daddr,
            dport: ev.dport,
        }
    }
}

/// Repeats of one deny, reported when their window closes.
#[derive(Debug, Clone)]
pub struct Repeats<T> {
    /// The last repeat (its process and addresses are the ones reported).
    pub last: FlowEvent,
    /// How many denies this report stands for (the first one was reported alone).
    pub count: u64,
    /// Kernel times (CLOCK_BOOTTIME ns) of the first and last repeat.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Whatever the caller keeps with the deny (its rule text).
    pub context: T,
}

struct Window<T> {
    opened: Instant,
    repeats: Option<Repeats<T>>,
}

pub enum Verdict<T> {
    /// Report this record now; first report `closed`, the repeats of this kind's
    /// previous window if it had ended and not been reported yet.
    Report { closed: Option<Repeats<T>> },
    /// Counted; reported with its window.
    Counted,
}

pub struct Aggregator<T> {
    window: Duration,
    open: HashMap<Key, Window<T>>,
}

impl<T: Clone> Aggregator<T> {
    /// `window` zero turns aggregation off.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: HashMap::new(),
        }
    }

    /// Whether `ev` is reported now or counted into an open window.
    pub fn offer(&mut self, ev: &FlowEvent, context: &T, now: Instant) -> Verdict<T> {
        let report = Verdict::Report { closed: None };
        if self.window.is_zero() || ev.verdict() == warden_common::kinds::Verdict::Allow {
            return report;
        }
        let key = Key::of(ev);
        match self.open.get_mut(&key) {
            Some(w) if now.duration_since(w.opened) < self.window => {
                let r = w.repeats.get_or_insert_with(|| Repeats {
                    last: *ev,
                    count: 0,
                    first_ns: ev.ts_ns,
                    last_ns: ev.ts_ns,
                    context: context.clone(),
                });
                r.count += 1;
                r.last = *ev;
                r.last_ns = ev.ts_ns;
                Verdict::Counted
            }
            // The window ended and `expired` has not run yet: close it here and
            // open the next one with this deny as its first.
            Some(w) => {
                w.opened = now;
                Verdict::Report {
                    closed: w.repeats.take(),
                }
            }
            None => {
                if self.open.len() < MAX_KEYS {
                    self.open.insert(
                        key,
                        Window {
                            opened: now,
                            repeats: None,
                        },
                    );
                }
                report
            }
        }
    }

    /// Closes the windows that ended by `now`; returns their repeats to report.
    pub fn expired(&mut self, now: Instant) -> Vec<Repeats<T>> {
        let window = self.window;
        let mut out = Vec::new();
        self.open.retain(|_, w| {
            if now.duration_since(w.opened) < window {
                return true;
            }
            out.extend(w.repeats.take());
            false
        });
        out.sort_by_key(|r| r.first_ns);
        out
    }

    /// Closes every window (at shutdown).
    pub fn drain(&mut self) -> Vec<Repeats<T>> {
        let mut out: Vec<_> = self
            .open
            .drain()
            .filter_map(|(_, mut w)| w.repeats.take())
            .collect();
        out.sort_by_key(|r| r.first_ns);
        out
    }

    /// Denies counted and not yet reported.
    pub fn pending(&self) -> u64 {
        self.open
            .values()
            .filter_map(|w| w.repeats.as_ref())
            .map(|r| r.count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_common::kinds::{Hook, Reason, Verdict as Kernel};
    use warden_common::mapped_v4;

    fn deny(src: [u8; 4], ts_ns: u64) -> FlowEvent {
        // SAFETY: FlowEvent is plain data.
        let mut ev: FlowEvent = unsafe { std::mem::zeroed() };
        ev.hook = Hook::Xdp.code();
        ev.verdict = Kernel::Deny.code();
        ev.reason = Reason::IngressNotAllowed.code();
        ev.proto = 6;
        ev.saddr = mapped_v4(src);
        ev.daddr = mapped_v4([10, 0, 0, 1]);
        ev.dport = 11434;
        ev.sport = (ts_ns % 60_000) as u16;
        ev.ts_ns = ts_ns;
        ev
    }

    fn report(v: Verdict<()>) -> bool {
        matches!(v, Verdict::Report { closed: None })
    }

    #[test]
    fn first_deny_is_reported_and_repeats_are_counted_into_one_event() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut a = Aggregator::new(w);
        assert!(report(a.offer(&deny([1, 2, 3, 4], 1), &(), t0)));
        for i in 2..=1000 {
            assert!(!report(a.offer(&deny([1, 2, 3, 4], i), &(), t0)));
        }
        // Another source is its own kind: reported at once.
        assert!(report(a.offer(&deny([5, 6, 7, 8], 5), &(), t0)));
        assert_eq!(a.pending(), 999);
        assert!(a.expired(t0 + Duration::from_secs(9)).is_empty());
        let out = a.expired(t0 + w);
        assert_eq!(out.len(), 1, "one report for the repeated source");
        assert_eq!(out[0].count, 999);
        assert_eq!((out[0].first_ns, out[0].last_ns), (2, 1000));
        assert_eq!(a.pending(), 0);
        // After the window, the next deny is reported at once again.
        assert!(report(a.offer(&deny([1, 2, 3, 4], 2000), &(), t0 + w)));
    }

    #[test]
    fn a_window_that_ended_before_its_tick_closes_when_the_kind_comes_back() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut a = Aggregator::new(w);
        assert!(report(a.offer(&deny([1, 2, 3, 4], 1), &(), t0)));
        for i in 2..=10 {
            assert!(!report(a.offer(&deny([1, 2, 3, 4], i), &(), t0)));
        }
        // The window ended; the flood goes on before `expired` runs.
        let later = t0 + w + Duration::from_millis(50);
        match a.offer(&deny([1, 2, 3, 4], 11), &(), later) {
            Verdict::Report { closed: Some(r) } => assert_eq!(r.count, 9),
            _ => panic!("the ended window's repeats come with this report"),
        }
        for i in 12..=20 {
            assert!(
                !report(a.offer(&deny([1, 2, 3, 4], i), &(), later)),
                "the flood is counted in the new window, not reported one by one"
            );
        }
        assert!(a.expired(later + Duration::from_secs(9)).is_empty());
        assert_eq!(a.expired(later + w)[0].count, 9);
    }

    #[test]
    fn allowed_flows_and_a_zero_window_are_never_aggregated() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(Duration::from_secs(10));
        let mut ok = deny([1, 2, 3, 4], 1);
        ok.verdict = Kernel::Allow.code();
        assert!(report(a.offer(&ok, &(), t0)));
        assert!(report(a.offer(&ok, &(), t0)));
        let mut off = Aggregator::new(Duration::ZERO);
        assert!(report(off.offer(&deny([1, 2, 3, 4], 1), &(), t0)));
        assert!(report(off.offer(&deny([1, 2, 3, 4], 2), &(), t0)));
    }

    #[test]
    fn a_full_table_reports_new_kinds_alone() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(Duration::from_secs(10));
        for i in 0..MAX_KEYS as u32 {
            assert!(report(a.offer(&deny(i.to_be_bytes(), 1), &(), t0)));
        }
        let extra = deny([255, 255, 255, 255], 1);
        assert!(report(a.offer(&extra, &(), t0)));
        assert!(
            report(a.offer(&extra, &(), t0)),
            "untracked: every one reported"
        );
        let drained = a.drain();
        assert!(drained.is_empty());
    }
}
