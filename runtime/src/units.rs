//! Sizes and durations as operators write them, in every file warden reads
//! (policy sinks, the proxy's config, bans).

use std::time::Duration;

const SIZE_EXAMPLE: &str = "e.g. 16MiB, 512K, 1000000";
const DURATION_EXAMPLE: &str = "e.g. 500ms, 10s, 5m, 1h, 30d";

/// Bytes: a number with an optional binary unit, `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB` (any case), or `B`. Zero is refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let not_a_size = || format!("not a size ({SIZE_EXAMPLE})");
    let n: u64 = n.parse().map_err(|_| not_a_size())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(not_a_size()),
    };
    match n.checked_mul(1 << shift) {
        Some(0) => Err("must be more than zero".into()),
        Some(b) => Ok(b),
        None => Err("out of range".into()),
    }
}

/// A number with a unit, `ms`, `s`, `m`, `h` or `d`. Zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let not_a_duration = || format!("`{s}` is not a duration ({DURATION_EXAMPLE})");
    let n: u64 = n.parse().map_err(|_| not_a_duration())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(not_a_duration()),
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_spelling_files_use() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in ["16 MB", "lots", "", "0", "0K", "99999999999999G", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in ["0s", "10", "1w", "s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
