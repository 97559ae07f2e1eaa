//! Any UTF-8 text fed to `warden_policy::parse_str` must give a policy or diagnostics,
//! never a panic; an accepted policy must hold the invariants the backends rely on.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use warden_policy::{CgroupPath, parse_str};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match parse_str(Path::new("fuzz.toml"), text) {
        Ok(policy) => policy,
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "rejected without a reason");
            for d in &diagnostics {
                assert!(d.origin.line >= 1 && d.origin.col >= 1, "{d}");
            }
            return;
        }
    };
    assert!(!policy.ports.is_empty(), "accepted without protected ports");
    assert!(
        policy.ports.windows(2).all(|w| w[0] < w[1]),
        "ports not sorted/deduplicated"
    );
    assert!(!policy.ports.contains(&0));
    let cgroups = policy
        .server_cgroups
        .iter()
        .chain(&policy.local_allow)
        .map(|c| &c.value)
        .chain(policy.egress.iter().map(|e| &e.cgroup));
    for c in cgroups {
        // Normalised paths are fixed points: never the root, never re-normalised differently.
        assert_eq!(CgroupPath::new(c.as_str()).as_ref(), Ok(c));
    }
    for rule in policy.egress.iter().flat_map(|e| &e.allow) {
        assert!(rule.ports.iter().all(|r| 1 <= r.lo && r.lo <= r.hi));
        assert_eq!(rule.net, rule.net.trunc(), "host bits set in {}", rule.net);
    }
    for port in &policy.ports {
        let _ = policy.ingress_allow_for(*port);
    }
    // Deterministic: the same text gives the same digest.
    let again = parse_str(Path::new("other.toml"), text).map(|p| p.digest());
    assert_eq!(again, Ok(policy.digest()));
});
