//! Community ID v1 (https://github.com/corelight/community-id-spec): one stable id
//! for a flow, so the kernel record, the proxy's record and a network sensor's
//! record of the same 5-tuple can be joined.

use base64::Engine;
use sha1::{Digest, Sha1};
use std::net::IpAddr;

/// `1:<base64(sha1)>` of a TCP/UDP flow with seed 0. IPv4-mapped IPv6 addresses
/// hash as IPv4: that is what goes on the wire, and what a sensor sees.
pub fn community_id(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> String {
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    };
    let (mut a, mut pa, mut b, mut pb) = (bytes(src), sport, bytes(dst), dport);
    // The endpoint that sorts lower goes first, so both directions hash the same.
    if (&a, pa) > (&b, pb) {
        std::mem::swap(&mut a, &mut b);
        std::mem::swap(&mut pa, &mut pb);
    }
    let mut h = Sha1::new();
    h.update(0u16.to_be_bytes()); // seed
    h.update(&a);
    h.update(&b);
    h.update([proto, 0]);
    h.update(pa.to_be_bytes());
    h.update(pb.to_be_bytes());
    format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode(h.finalize())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_spec_baseline() {
        // From the community-id-spec baseline (tcp and udp, seed 0), both directions.
        let tcp = community_id(
            6,
            "128.232.110.120".parse().unwrap(),
            34855,
            "66.35.250.204".parse().unwrap(),
            80,
        );
        assert_eq!(tcp, "1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
        let back = community_id(
            6,
            "66.35.250.204".parse().unwrap(),
            80,
            "128.232.110.120".parse().unwrap(),
            34855,
        );
        assert_eq!(back, tcp);
        let udp = community_id(
            17,
            "192.168.1.52".parse().unwrap(),
            54585,
            "8.8.8.8".parse().unwrap(),
            53,
        );
        assert_eq!(udp, "1:d/FP5EW3wiY1vCndhwleRRKHowQ=");
        let mapped = community_id(
            17,
            "::ffff:192.168.1.52".parse().unwrap(),
            54585,
            "8.8.8.8".parse().unwrap(),
            53,
        );
        assert_eq!(mapped, udp);
    }
}
