//! RFC 5424 syslog messages, and the RFC 6587 octet-counted framing for TCP.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`: the event itself
//! (OCSF/ECS/raw JSON) is MSG; MSGID names the event kind (`flow`,
//! `policy_applied`, `loss`, …). Structured data uses only IANA-registered SD-IDs
//! (`origin`, `meta`), so no private enterprise number is needed.

use super::ecs::rfc3339_ms;

/// Syslog facilities warden can be configured with (RFC 5424 §6.2.1).
pub const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("authpriv", 10),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// Severities (RFC 5424 §6.2.1).
pub mod severity {
    pub const ERROR: u8 = 3;
    pub const WARNING: u8 = 4;
    pub const NOTICE: u8 = 5;
    pub const INFO: u8 = 6;
}

pub fn facility(name: &str) -> Option<u8> {
    FACILITIES.iter().find(|(n, _)| *n == name).map(|f| f.1)
}

/// What every message of this process shares.
#[derive(Debug, Clone)]
pub struct Header {
    pub facility: u8,
    pub hostname: String,
    pub procid: u32,
}

impl Header {
    pub fn new(facility: u8) -> Self {
        Self {
            facility,
            hostname: hostname(),
            procid: std::process::id(),
        }
    }

    /// One RFC 5424 message.
    pub fn message(
        &self,
        severity: u8,
        time_ms: u64,
        msgid: &str,
        sequence: u64,
        msg: &str,
    ) -> String {
        format!(
            "<{}>1 {} {} ollama-warden {} {} [origin software=\"ollama-warden\" swVersion=\"{}\"][meta sequenceId=\"{}\"] {msg}",
            self.facility as u32 * 8 + severity as u32,
            rfc3339_ms(time_ms),
            self.hostname,
            self.procid,
            printable(msgid, 32),
            env!("CARGO_PKG_VERSION"),
            // RFC 5424 §7.3.1: sequenceId is 1..2147483647 and wraps.
            (sequence.saturating_sub(1) % 2_147_483_647) + 1,
        )
    }
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn octet_counted(msg: &str) -> String {
    format!("{} {msg}", msg.len())
}

/// A header field: printable US-ASCII without spaces, at most `max` characters,
/// `-` when empty.
fn printable(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if out.is_empty() { "-".into() } else { out }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    printable(&name, 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let h = Header {
            facility: facility("auth").unwrap(),
            hostname: "gpu-7".into(),
            procid: 42,
        };
        let m = h.message(severity::WARNING, 1_795_335_280_773, "flow", 7, "{\"a\":1}");
        assert_eq!(
            m,
            format!(
                "<36>1 2026-11-22T08:14:40.773Z gpu-7 ollama-warden 42 flow [origin software=\"ollama-warden\" swVersion=\"{}\"][meta sequenceId=\"7\"] {{\"a\":1}}",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(octet_counted("abc"), "3 abc");
    }

    #[test]
    fn header_fields_are_printable_and_never_empty() {
        assert_eq!(printable("policy applied\n", 32), "policyapplied");
        assert_eq!(printable("", 32), "-");
        assert_eq!(printable(&"x".repeat(40), 32).len(), 32);
    }

    #[test]
    fn sequence_ids_stay_in_range() {
        let h = Header::new(16);
        assert!(h.message(6, 0, "x", 0, "").contains("sequenceId=\"1\""));
        assert!(
            h.message(6, 0, "x", 2_147_483_648, "")
                .contains("sequenceId=\"1\"")
        );
    }
}
