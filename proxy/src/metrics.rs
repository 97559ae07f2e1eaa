//! The proxy's request metrics (Prometheus text), counted as each request's
//! audit record is written.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use warden_runtime::metrics::{Histogram, help, label};
use warden_runtime::sync::Locked;

/// (route group, status) → requests.
type ByGroup = HashMap<(&'static str, u16), u64>;

/// The proxy's request metrics, updated as each request's record is written.
#[derive(Default)]
pub struct ProxyMetrics {
    /// identity → (route group, status) → requests. Bounded: identities come
    /// from the config, groups from the route table, statuses from HTTP.
    requests: Mutex<HashMap<String, ByGroup>>,
    duration: Histogram,
    ttfb: Histogram,
    /// Requests being answered now (streams included).
    pub in_flight: AtomicI64,
}

impl ProxyMetrics {
    pub fn request(
        &self,
        identity: Option<&str>,
        group: &'static str,
        status: u16,
        duration: Duration,
        ttfb: Option<Duration>,
    ) {
        let identity = identity.unwrap_or("-");
        let mut requests = self.requests.locked();
        // The identity's name is copied once, not per request.
        if !requests.contains_key(identity) {
            requests.insert(identity.to_owned(), HashMap::new());
        }
        if let Some(by_group) = requests.get_mut(identity) {
            *by_group.entry((group, status)).or_default() += 1;
        }
        self.duration.observe(duration);
        if let Some(t) = ttfb {
            self.ttfb.observe(t);
        }
    }

    /// `extra`: further counters as (name, help, value).
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut o = String::new();
        help(
            &mut o,
            "warden_proxy_requests_total",
            "counter",
            "Requests by identity (- = none), route group and status",
        );
        let mut rows: Vec<_> = self
            .requests
            .locked()
            .iter()
            .flat_map(|(identity, by_group)| {
                by_group
                    .iter()
                    .map(|(&(group, status), &n)| ((identity.clone(), group, status), n))
            })
            .collect();
        rows.sort();
        for ((identity, group, status), n) in rows {
            let _ = writeln!(
                o,
                "warden_proxy_requests_total{{identity=\"{}\",route_group=\"{group}\",status=\"{status}\"}} {n}",
                label(&identity)
            );
        }
        help(
            &mut o,
            "warden_proxy_request_duration_seconds",
            "histogram",
            "Time from request to the end of the response",
        );
        self.duration
            .render(&mut o, "warden_proxy_request_duration_seconds");
        help(
            &mut o,
            "warden_proxy_time_to_first_byte_seconds",
            "histogram",
            "Time from request to the first response byte from Ollama",
        );
        self.ttfb
            .render(&mut o, "warden_proxy_time_to_first_byte_seconds");
        help(
            &mut o,
            "warden_proxy_active_requests",
            "gauge",
            "Requests being answered now, streams included",
        );
        let _ = writeln!(
            o,
            "warden_proxy_active_requests {}",
            self.in_flight.load(Relaxed)
        );
        for (name, text, v) in extra {
            help(&mut o, name, "counter", text);
            let _ = writeln!(o, "{name} {v}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let p = ProxyMetrics::default();
        p.request(
            Some("alice"),
            "inference",
            200,
            Duration::from_millis(3),
            Some(Duration::from_micros(900)),
        );
        p.request(None, "none", 401, Duration::from_secs(60), None);
        let m = p.render(&[]);
        assert!(m.contains("warden_proxy_requests_total{identity=\"alice\",route_group=\"inference\",status=\"200\"} 1"));
        assert!(m.contains(
            "warden_proxy_requests_total{identity=\"-\",route_group=\"none\",status=\"401\"} 1"
        ));
        assert!(m.contains("warden_proxy_request_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(m.contains("warden_proxy_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(m.contains("warden_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(m.contains("warden_proxy_time_to_first_byte_seconds_bucket{le=\"0.001\"} 1\n"));
    }
}
