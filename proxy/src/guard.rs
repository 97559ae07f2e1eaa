//! Brute force: failed authentications counted per source and per claimed
//! identity in a sliding window. A source crossing `[brute_force] failures`
//! is banned for `ban` (its connections are closed, new ones dropped at
//! accept, and, with a daemon, its packets dropped in the kernel); an identity
//! crossing `identity_failures` raises an alert only (locking it out would hand
//! its owner's access to whoever floods it).
//!
//! Memory is bounded: at most [`MAX_TRACKED`] sources and identities are
//! tracked, each with at most `failures` timestamps; when full, the oldest
//! entries go first.

use super::config::BruteForce;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use warden_runtime::sync::Locked;

pub const MAX_TRACKED: usize = 65_536;

/// What crossing a threshold produced (one each time, not per failure after).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// A source failed `failures` times in `window`; banned for `ban` (zero:
    /// alert only, or exempt).
    Source {
        source: IpAddr,
        failures: u32,
        window: Duration,
        ban: Duration,
        claimed: Option<String>,
    },
    /// An identity was tried and failed `failures` times in `window`.
    Identity {
        identity: String,
        failures: u32,
        window: Duration,
        source: IpAddr,
    },
}

#[derive(Default)]
struct State {
    sources: HashMap<IpAddr, VecDeque<Instant>>,
    identities: HashMap<String, VecDeque<Instant>>,
    banned: HashMap<IpAddr, Instant>,
}

pub struct Guard {
    cfg: BruteForce,
    state: Mutex<State>,
}

/// Records a failure at `now`; true when this one reaches `limit` within `window`.
fn count(q: &mut VecDeque<Instant>, now: Instant, window: Duration, limit: u32) -> bool {
    while q.front().is_some_and(|t| now.duration_since(*t) > window) {
        q.pop_front();
    }
    q.push_back(now);
    while q.len() > limit as usize {
        q.pop_front();
    }
    q.len() == limit as usize
}

fn bounded<K: std::hash::Hash + Eq + Clone>(m: &mut HashMap<K, VecDeque<Instant>>) {
    if m.len() >= MAX_TRACKED {
        // The entries whose last failure is oldest go first.
        let mut by_age: Vec<(K, Instant)> = m
            .iter()
            .filter_map(|(k, q)| q.back().map(|t| (k.clone(), *t)))
            .collect();
        by_age.sort_by_key(|(_, t)| *t);
        for (k, _) in by_age.into_iter().take(MAX_TRACKED / 4) {
            m.remove(&k);
        }
    }
}

impl Guard {
    pub fn new(cfg: BruteForce) -> Self {
        Self {
            cfg,
            state: Mutex::default(),
        }
    }

    /// How long `source` stays banned, if it is.
    pub fn banned(&self, source: IpAddr) -> Option<Duration> {
        let mut s = self.state.locked();
        let until = *s.banned.get(&source)?;
        let now = Instant::now();
        if until <= now {
            s.banned.remove(&source);
            return None;
        }
        Some(until - now)
    }

    /// A failed authentication from `source`, naming `claimed` if the
    /// credentials named an identity (a basic-auth user).
    pub fn failed(&self, source: IpAddr, claimed: Option<&str>) -> Vec<Alert> {
        let now = Instant::now();
        let c = &self.cfg;
        let mut s = self.state.locked();
        let mut alerts = Vec::new();
        bounded(&mut s.sources);
        let q = s.sources.entry(source).or_default();
        if count(q, now, c.window, c.failures) {
            q.clear();
            let exempt = c.exempt.iter().any(|n| n.contains(&source));
            let ban = if exempt { Duration::ZERO } else { c.ban };
            if !ban.is_zero() {
                s.banned.insert(source, now + ban);
            }
            alerts.push(Alert::Source {
                source,
                failures: c.failures,
                window: c.window,
                ban,
                claimed: claimed.map(str::to_owned),
            });
        }
        if let Some(name) = claimed {
            bounded(&mut s.identities);
            let q = s.identities.entry(name.to_owned()).or_default();
            if count(q, now, c.window, c.identity_failures) {
                q.clear();
                alerts.push(Alert::Identity {
                    identity: name.to_owned(),
                    failures: c.identity_failures,
                    window: c.window,
                    source,
                });
            }
        }
        alerts
    }
}

/// An alert as an OCSF 1.8.0 Detection Finding (class 2004): what was seen
/// (failures in a window), from where, against whom, and what was done.
pub fn finding(alert: &Alert, proxy: std::net::SocketAddr) -> serde_json::Value {
    use serde_json::json;
    let now = super::audit::now_ms();
    let (title, source, identity, failures, window, ban) = match alert {
        Alert::Source {
            source,
            failures,
            window,
            ban,
            claimed,
        } => (
            if ban.is_zero() {
                "brute force from one source (not banned: exempt or bans off)"
            } else {
                "brute force from one source: banned"
            },
            *source,
            claimed.clone(),
            *failures,
            *window,
            *ban,
        ),
        Alert::Identity {
            identity,
            failures,
            window,
            source,
        } => (
            "brute force against one identity",
            *source,
            Some(identity.clone()),
            *failures,
            *window,
            Duration::ZERO,
        ),
    };
    let mut observables = vec![
        json!({ "name": "src_endpoint.ip", "type_id": 2, "type": "IP Address", "value": source.to_string() }),
    ];
    if let Some(id) = &identity {
        observables
            .push(json!({ "name": "user.name", "type_id": 4, "type": "User Name", "value": id }));
    }
    json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "severity_id": 4,
        "severity": "High",
        "is_alert": true,
        "time": now,
        "start_time": now.saturating_sub(window.as_millis() as u64),
        "end_time": now,
        "count": failures,
        "message": format!("{title}: {failures} failed authentications in {}s from {source}", window.as_secs()),
        "finding_info": {
            "uid": format!("brute-force-{source}-{now}"),
            "title": title,
            "types": ["Brute Force"],
        },
        "observables": observables,
        "metadata": {
            "version": "1.8.0",
            "product": { "name": "ollama-warden", "vendor_name": "ollama-warden", "version": env!("CARGO_PKG_VERSION") },
        },
        "unmapped": { "warden": {
            "source": source.to_string(),
            "identity": identity,
            "failures": failures,
            "window_seconds": window.as_secs(),
            "banned_seconds": ban.as_secs(),
            "proxy": proxy.to_string(),
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(failures: u32, ban: u64, exempt: &[&str]) -> Guard {
        Guard::new(BruteForce {
            failures,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(ban),
            identity_failures: 3,
            exempt: exempt.iter().map(|n| n.parse().unwrap()).collect(),
        })
    }

    #[test]
    fn a_source_is_banned_once_at_the_threshold() {
        let g = guard(3, 600, &[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(g.failed(a, None).is_empty());
        assert!(g.failed(a, None).is_empty());
        assert!(g.banned(a).is_none());
        let alerts = g.failed(a, None);
        assert!(matches!(&alerts[..], [Alert::Source { ban, .. }] if ban.as_secs() == 600));
        assert!(g.banned(a).is_some_and(|d| d.as_secs() > 590));
        assert!(g.banned("10.0.0.2".parse().unwrap()).is_none());
        // Counting starts again: no alert per failure after the threshold.
        assert!(g.failed(a, None).is_empty());
    }

    #[test]
    fn exempt_sources_alert_without_a_ban_and_identities_alert_from_anywhere() {
        let g = guard(2, 600, &["10.1.0.0/16"]);
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        g.failed(a, Some("alice"));
        let alerts = g.failed(a, Some("alice"));
        assert!(matches!(&alerts[..], [Alert::Source { ban, .. }] if ban.is_zero()));
        assert!(g.banned(a).is_none());
        let b: IpAddr = "10.9.9.9".parse().unwrap();
        let alerts = g.failed(b, Some("alice"));
        assert!(
            alerts
                .iter()
                .any(|a| matches!(a, Alert::Identity { identity, .. } if identity == "alice")),
            "{alerts:?}"
        );
    }
}
