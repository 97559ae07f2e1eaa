//! Addresses and networks as policies write them: `10.20.30.0/24`, `fd00:20::/64`, or a
//! bare address meaning one host (`/32`, `/128`).
//!
//! Anything whose meaning is not the obvious one is an error with a suggested fix: host
//! bits set (`10.0.0.1/24`: the network or the host?), IPv4-mapped IPv6 (matched as IPv4
//! by the enforcer, so the rule would never match as written), and the bare unspecified
//! address (`0.0.0.0`, which is one address, not "any").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a string is not a usable network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error(
        "`{0}` is not an IP address or CIDR (expected e.g. 10.20.30.0/24, fd00:20::/64 or 192.0.2.7)"
    )]
    Syntax(String),
    #[error("`{0}` has leading or trailing whitespace; write `{trimmed}`", trimmed = .0.trim())]
    Whitespace(String),
    #[error("`{input}`: prefix length /{prefix} is too long for {family} (at most /{max})")]
    PrefixTooLong {
        input: String,
        prefix: u32,
        family: &'static str,
        max: u8,
    },
    #[error("host bits set in `{input}`; did you mean {network}? (or {host} for that one host)")]
    HostBits {
        input: String,
        network: IpNet,
        host: IpAddr,
    },
    #[error(
        "`{input}` is an IPv4-mapped IPv6 network; write it as IPv4 ({ipv4}): mapped addresses are matched as IPv4"
    )]
    Mapped { input: String, ipv4: Ipv4Net },
    #[error(
        "`{input}` is the unspecified address, which matches no real host; for every {family} address write {any}"
    )]
    Unspecified {
        input: String,
        family: &'static str,
        any: &'static str,
    },
}

/// Parses a CIDR or a bare address (a single host).
pub fn parse_net(input: &str) -> Result<IpNet, NetError> {
    let syntax = || NetError::Syntax(input.to_owned());
    if input.trim() != input && parse_net(input.trim()).is_ok() {
        return Err(NetError::Whitespace(input.to_owned()));
    }
    let (addr_part, prefix_part) = match input.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (input, None),
    };
    let addr: IpAddr = addr_part.parse().map_err(|_| syntax())?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix = match prefix_part {
        None => {
            if addr.is_unspecified() {
                let (family, any) = match addr {
                    IpAddr::V4(_) => ("IPv4", "0.0.0.0/0"),
                    IpAddr::V6(_) => ("IPv6", "::/0"),
                };
                return Err(NetError::Unspecified {
                    input: input.to_owned(),
                    family,
                    any,
                });
            }
            max
        }
        Some(p) => {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let prefix: u32 = p.parse().map_err(|_| syntax())?;
            if prefix > u32::from(max) {
                let family = if max == 32 { "IPv4" } else { "IPv6" };
                return Err(NetError::PrefixTooLong {
                    input: input.to_owned(),
                    prefix,
                    family,
                    max,
                });
            }
            // Checked just above: prefix <= max <= 128.
            u8::try_from(prefix).map_err(|_| syntax())?
        }
    };
    let net = match addr {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix).map_err(|_| syntax())?),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix).map_err(|_| syntax())?),
    };
    if let IpNet::V6(v6) = net
        && let Some(ipv4) = mapped_ipv4(v6)
    {
        return Err(NetError::Mapped {
            input: input.to_owned(),
            ipv4,
        });
    }
    if net.trunc() != net {
        return Err(NetError::HostBits {
            input: input.to_owned(),
            network: net.trunc(),
            host: addr,
        });
    }
    Ok(net)
}

/// The IPv4 network an IPv4-mapped IPv6 network (inside `::ffff:0:0/96`) stands for.
fn mapped_ipv4(net: Ipv6Net) -> Option<Ipv4Net> {
    let prefix = net.prefix_len().checked_sub(96)?;
    let ipv4 = net.addr().to_ipv4_mapped()?;
    Ipv4Net::new(ipv4, prefix).ok()
}

/// True if every address of `net` is a loopback address.
pub(crate) fn is_loopback(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8)
            .map(|lo| lo.contains(n))
            .unwrap_or(false),
        IpNet::V6(n) => n.prefix_len() == 128 && n.addr() == Ipv6Addr::LOCALHOST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        parse_net(s)
            .map(|n| n.to_string())
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match parse_net(s) {
            Ok(n) => panic!("{s} accepted as {n}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn ipv4_cidrs_and_bare_addresses() {
        assert_eq!(ok("10.20.30.0/24"), "10.20.30.0/24");
        assert_eq!(ok("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(ok("192.0.2.7/32"), "192.0.2.7/32");
    }

    #[test]
    fn ipv6_cidrs_and_bare_addresses() {
        assert_eq!(ok("fd00:20::/64"), "fd00:20::/64");
        assert_eq!(ok("2001:db8::1"), "2001:db8::1/128");
        assert_eq!(ok("::/0"), "::/0");
        assert_eq!(ok("FD00:20::/64"), "fd00:20::/64");
    }

    #[test]
    fn host_bits_suggest_the_network() {
        assert_eq!(
            err("10.0.0.1/24"),
            "host bits set in `10.0.0.1/24`; did you mean 10.0.0.0/24? (or 10.0.0.1 for that one host)"
        );
        assert!(err("fd00:20::1/64").contains("did you mean fd00:20::/64?"));
    }

    #[test]
    fn malformed_input_is_rejected() {
        for s in [
            "",
            "10.0.0",
            "10.0.0.256",
            "010.0.0.1",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "fe80::1%eth0",
            "10.0.0.0/0008",
            "example.com",
            "10.0.0.0 /8",
        ] {
            assert!(err(s).contains("is not an IP address or CIDR"), "{s:?}");
        }
        assert_eq!(
            err(" 10.0.0.0/8"),
            "` 10.0.0.0/8` has leading or trailing whitespace; write `10.0.0.0/8`"
        );
        assert!(err(" nope").contains("is not an IP address"));
        assert!(err("10.0.0.0/33").contains("/33 is too long for IPv4 (at most /32)"));
        assert!(err("::/129").contains("at most /128"));
    }

    #[test]
    fn mapped_and_unspecified_forms_are_rejected_with_a_fix() {
        assert!(err("::ffff:10.0.0.1").contains("write it as IPv4 (10.0.0.1/32)"));
        assert!(err("::ffff:10.0.0.0/120").contains("(10.0.0.0/24)"));
        assert!(err("0.0.0.0").contains("write 0.0.0.0/0"));
        assert!(err("::").contains("write ::/0"));
        assert!(err("::ffff:0:0/96").contains("(0.0.0.0/0)"));
        // Wider than the mapped range: an ordinary IPv6 network.
        assert_eq!(ok("::/64"), "::/64");
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback(&"127.0.0.1/32".parse().unwrap()));
        assert!(is_loopback(&"127.0.0.0/8".parse().unwrap()));
        assert!(is_loopback(&"::1/128".parse().unwrap()));
        assert!(!is_loopback(&"0.0.0.0/0".parse().unwrap()));
        assert!(!is_loopback(&"126.0.0.0/7".parse().unwrap()));
    }
}
