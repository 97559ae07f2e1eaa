//! TCP/UDP port numbers and ranges (`443`, `"8000-8100"`), and the transport protocol
//! an egress rule applies to.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// An inclusive port range; a single port has `lo == hi`. Always `1 <= lo <= hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self { lo: port, hi: port }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Why a value is not a usable port or port range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port {0} is out of range 1..=65535")]
    OutOfRange(i64),
    #[error("port range `{input}` is reversed; write `{hi}-{lo}`")]
    Reversed { input: String, lo: u16, hi: u16 },
    #[error("`{0}` is not a port or port range (expected e.g. 443 or \"8000-8100\")")]
    Syntax(String),
}

/// A port number from a TOML integer.
pub fn port_from_int(n: i64) -> Result<u16, PortError> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(PortError::OutOfRange(n)),
    }
}

/// A port range from a string: `"8000-8100"` or a single `"443"`.
pub fn parse_port_range(input: &str) -> Result<PortRange, PortError> {
    let number = |s: &str| -> Result<u16, PortError> {
        if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PortError::Syntax(input.to_owned()));
        }
        let n: i64 = s.parse().map_err(|_| PortError::Syntax(input.to_owned()))?;
        port_from_int(n)
    };
    let (lo, hi) = match input.split_once('-') {
        Some((lo, hi)) => (number(lo)?, number(hi)?),
        None => {
            let p = number(input)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(PortError::Reversed {
            input: input.to_owned(),
            lo,
            hi,
        });
    }
    Ok(PortRange { lo, hi })
}

/// Transport protocol of an egress rule. `Any` means TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    #[default]
    Any,
}

impl Proto {
    pub const NAMES: [&'static str; 3] = ["tcp", "udp", "any"];

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Any => "any",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a protocol name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown proto `{0}`; expected one of: tcp, udp, any")]
pub struct ProtoError(pub String);

impl FromStr for Proto {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "any" => Ok(Proto::Any),
            _ => Err(ProtoError(s.to_owned())),
        }
    }
}

/// Sorted, merged copy of `ranges` (overlapping and adjacent ranges joined); an empty
/// list or one covering 1..=65535 both come out empty, meaning "every port".
pub(crate) fn canonical_ranges(ranges: &[PortRange]) -> Vec<PortRange> {
    let mut sorted = ranges.to_vec();
    sorted.sort();
    let mut merged: Vec<PortRange> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => last.hi = last.hi.max(r.hi),
            _ => merged.push(r),
        }
    }
    if merged
        == [PortRange {
            lo: 1,
            hi: u16::MAX,
        }]
    {
        merged.clear();
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_integers() {
        assert_eq!(port_from_int(1), Ok(1));
        assert_eq!(port_from_int(65535), Ok(65535));
        assert_eq!(port_from_int(0), Err(PortError::OutOfRange(0)));
        assert_eq!(port_from_int(70000), Err(PortError::OutOfRange(70000)));
        assert_eq!(port_from_int(-1), Err(PortError::OutOfRange(-1)));
    }

    #[test]
    fn ranges_from_strings() {
        assert_eq!(
            parse_port_range("8000-8100"),
            Ok(PortRange { lo: 8000, hi: 8100 })
        );
        assert_eq!(parse_port_range("53"), Ok(PortRange::single(53)));
        assert_eq!(
            parse_port_range("8100-8000").unwrap_err().to_string(),
            "port range `8100-8000` is reversed; write `8000-8100`"
        );
        assert_eq!(parse_port_range("0-10"), Err(PortError::OutOfRange(0)));
        assert_eq!(
            parse_port_range("1-99999999999"),
            Err(PortError::Syntax("1-99999999999".into()))
        );
        for s in [
            "", "-", "1-", "-1", "1-2-3", " 1", "1 - 2", "+1", "http", "1.5",
        ] {
            assert_eq!(
                parse_port_range(s),
                Err(PortError::Syntax(s.into())),
                "{s:?}"
            );
        }
    }

    #[test]
    fn canonical_ranges_merge_and_sort() {
        let r = |lo, hi| PortRange { lo, hi };
        assert_eq!(
            canonical_ranges(&[r(443, 443), r(80, 81), r(82, 90)]),
            [r(80, 90), r(443, 443)]
        );
        assert_eq!(canonical_ranges(&[r(1, 100), r(50, 65535)]), []);
        assert_eq!(
            canonical_ranges(&[r(65535, 65535), r(65534, 65535)]),
            [r(65534, 65535)]
        );
    }

    #[test]
    fn proto_names() {
        assert_eq!("tcp".parse(), Ok(Proto::Tcp));
        assert_eq!("udp".parse(), Ok(Proto::Udp));
        assert_eq!("any".parse(), Ok(Proto::Any));
        assert!("TCP".parse::<Proto>().is_err());
        assert_eq!(Proto::default(), Proto::Any);
    }
}
