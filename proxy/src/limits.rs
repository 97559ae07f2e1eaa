//! Per-identity admission: source addresses, time windows, a requests-per-minute
//! token bucket and a cap on concurrent requests.

use super::config::Identity;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warden_runtime::sync::Locked;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Source,
    Window,
    /// Over the rate; retry after this long.
    Rate(Duration),
    Concurrency,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "client address not allowed for this identity",
            Self::Window => "outside this identity's time windows",
            Self::Rate(_) => "rate limit",
            Self::Concurrency => "concurrent request limit",
        }
    }
}

#[derive(Default)]
struct State {
    /// (tokens left, when last refilled)
    bucket: Mutex<Option<(f64, Instant)>>,
    inflight: Arc<AtomicU32>,
}

/// Counters per identity name; kept across config reloads so a reload does not
/// reset anyone's limits.
#[derive(Default)]
pub struct Limiter {
    states: Mutex<HashMap<String, Arc<State>>>,
}

/// Holds one of an identity's concurrent-request slots until dropped.
pub struct Slot(Option<Arc<AtomicU32>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Limiter {
    fn state(&self, name: &str) -> Arc<State> {
        let mut states = self.states.locked();
        states.entry(name.to_owned()).or_default().clone()
    }

    /// Source and time-window checks (before the route is even looked at).
    pub fn check_where_and_when(
        id: &Identity,
        client: IpAddr,
        now_unix: i64,
    ) -> Result<(), Refusal> {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        if !id.sources.is_empty() && !id.sources.iter().any(|n| n.contains(&client)) {
            return Err(Refusal::Source);
        }
        if !id.windows.is_empty() {
            let days = now_unix.div_euclid(86_400);
            let weekday = (days + 3).rem_euclid(7) as u8; // 1970-01-01 was a Thursday
            let minute = (now_unix.rem_euclid(86_400) / 60) as u16;
            if !id.windows.iter().any(|w| w.contains(weekday, minute)) {
                return Err(Refusal::Window);
            }
        }
        Ok(())
    }

    /// Takes a concurrency slot, then a request from the identity's rate (a
    /// request refused for concurrency does not use up its rate).
    pub fn admit(&self, id: &Identity) -> Result<Slot, Refusal> {
        let state = self.state(&id.name);
        let slot = match id.concurrency {
            None => Slot(None),
            Some(max) => {
                let n = &state.inflight;
                let mut cur = n.load(Ordering::Acquire);
                loop {
                    if cur >= max {
                        return Err(Refusal::Concurrency);
                    }
                    match n.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => break Slot(Some(n.clone())),
                        Err(now) => cur = now,
                    }
                }
            }
        };
        if let Some(rate) = id.rate {
            let (cap, per_sec) = (rate.burst, rate.per_sec);
            let mut b = state.bucket.locked();
            let now = Instant::now();
            let (mut tokens, last) = b.unwrap_or((cap, now));
            tokens = (tokens + now.duration_since(last).as_secs_f64() * per_sec).min(cap);
            if tokens < 1.0 {
                *b = Some((tokens, now));
                let wait = (1.0 - tokens) / per_sec;
                return Err(Refusal::Rate(Duration::from_secs_f64(wait.max(0.001))));
            }
            *b = Some((tokens - 1.0, now));
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_window;

    fn id(rate: Option<&str>, conc: Option<u32>) -> Identity {
        Identity {
            name: "a".into(),
            tokens: vec![],
            basic: None,
            mtls: vec![],
            models: vec![],
            admin: false,
            sources: vec!["10.0.0.0/8".parse().unwrap()],
            windows: vec![
                parse_window("mon-fri 08:00-18:00").unwrap(),
                parse_window("sat 22:00-02:00").unwrap(),
            ],
            rate: rate.map(|r| crate::config::parse_rate(r).unwrap()),
            concurrency: conc,
            max_body: 1,
            max_tokens: None,
            max_prompt_chars: None,
            pull_from: None,
        }
    }

    #[test]
    fn sources_and_windows() {
        let i = id(None, None);
        // 2026-11-23 is a Monday.
        let monday = crate::config::days_from_civil(2026, 11, 23) * 86_400;
        let at = |d: i64, h: i64, m: i64| monday + d * 86_400 + h * 3600 + m * 60;
        let ok = |ip: &str, t| Limiter::check_where_and_when(&i, ip.parse().unwrap(), t);
        assert_eq!(ok("10.1.2.3", at(0, 9, 0)), Ok(()));
        assert_eq!(ok("::ffff:10.1.2.3", at(0, 9, 0)), Ok(()));
        assert_eq!(ok("192.168.1.1", at(0, 9, 0)), Err(Refusal::Source));
        assert_eq!(ok("10.1.2.3", at(0, 18, 0)), Err(Refusal::Window));
        assert_eq!(ok("10.1.2.3", at(0, 7, 59)), Err(Refusal::Window));
        assert_eq!(ok("10.1.2.3", at(4, 17, 59)), Ok(()));
        assert_eq!(ok("10.1.2.3", at(5, 9, 0)), Err(Refusal::Window));
        assert_eq!(ok("10.1.2.3", at(5, 23, 0)), Ok(()));
        assert_eq!(
            ok("10.1.2.3", at(6, 1, 59)),
            Ok(()),
            "Saturday's window runs past midnight"
        );
        assert_eq!(ok("10.1.2.3", at(6, 2, 0)), Err(Refusal::Window));
    }

    #[test]
    fn an_hourly_rate_is_hourly() {
        let l = Limiter::default();
        let i = id(Some("2/h"), None);
        assert!(l.admit(&i).is_ok() && l.admit(&i).is_ok());
        match l.admit(&i).err() {
            Some(Refusal::Rate(wait)) => assert!(wait > Duration::from_secs(1790), "{wait:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_and_concurrency() {
        let l = Limiter::default();
        let i = id(Some("3/min"), Some(2));
        let a = l.admit(&i).unwrap();
        let b = l.admit(&i).unwrap();
        assert_eq!(l.admit(&i).err(), Some(Refusal::Concurrency));
        drop(a);
        let _c = l.admit(&i).unwrap();
        drop(b);
        match l.admit(&i).err() {
            Some(Refusal::Rate(wait)) => assert!(
                wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
                "{wait:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
