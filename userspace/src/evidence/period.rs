//! What the event log says about a period, read back from the daemon's own
//! records (warden's JSON, OCSF or ECS lines, as its sinks wrote them):
//! decisions by verdict, hook and reason, lifecycle events, the losses the
//! daemon reported, bans and policy changes. Aggregated records count as
//! many decisions as they fold. A line that is none of these is counted as
//! unreadable, never guessed at.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::BufRead;

#[derive(Debug, Default, Serialize)]
pub struct Period {
    pub since_ms: u64,
    pub until_ms: u64,
    /// Where the records were read from.
    pub sources: Vec<String>,
    /// Why nothing was read, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Records read, records outside the period, lines that are no record.
    pub records: u64,
    pub outside_period: u64,
    pub unreadable: u64,
    /// The first and last record time seen in the period: the log's coverage.
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    /// Decisions by verdict (allow, deny, would_deny).
    pub decisions: BTreeMap<String, u64>,
    /// Decisions by `verdict hook reason`.
    pub by_reason: BTreeMap<String, u64>,
    /// Lifecycle events by kind (start, stop, policy_applied, loss, ban, ...).
    pub lifecycle: BTreeMap<String, u64>,
    /// Other records (the proxy's audit records, findings) by class.
    pub other: BTreeMap<String, u64>,
    /// The losses the daemon reported in the period, summed (`loss` events).
    pub losses: BTreeMap<String, u64>,
    /// Each ban: its time and fields (source, seconds, identity, enforced).
    pub bans: Vec<Value>,
    /// Each policy applied or rejected: time, generation, digest or error.
    pub policy_changes: Vec<Value>,
}

/// One record, whatever its encoding.
#[derive(Debug, PartialEq)]
enum Record {
    Decision {
        verdict: String,
        hook: String,
        reason: String,
        count: u64,
    },
    Lifecycle {
        kind: String,
        fields: Value,
    },
    Other(String),
}

impl Period {
    pub fn new(since_ms: u64, until_ms: u64) -> Self {
        Self {
            since_ms,
            until_ms,
            ..Self::default()
        }
    }

    /// Counts every line of `input` (named `source`).
    pub fn read(&mut self, source: &str, input: impl BufRead) {
        self.sources.push(source.to_owned());
        for line in input.lines() {
            let Ok(line) = line else {
                self.unreadable += 1;
                break;
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line)
                .ok()
                .as_ref()
                .and_then(decode)
            {
                Some((time_ms, record)) => self.add(time_ms, record),
                None => self.unreadable += 1,
            }
        }
    }

    fn add(&mut self, time_ms: u64, record: Record) {
        self.records += 1;
        if time_ms < self.since_ms || time_ms > self.until_ms {
            self.outside_period += 1;
            return;
        }
        self.first_ms = Some(self.first_ms.map_or(time_ms, |t| t.min(time_ms)));
        self.last_ms = Some(self.last_ms.map_or(time_ms, |t| t.max(time_ms)));
        match record {
            Record::Decision {
                verdict,
                hook,
                reason,
                count,
            } => {
                *self
                    .by_reason
                    .entry(format!("{verdict} {hook} {reason}"))
                    .or_default() += count;
                *self.decisions.entry(verdict).or_default() += count;
            }
            Record::Lifecycle { kind, fields } => {
                match kind.as_str() {
                    "loss" => {
                        if let Some(since) = fields["since_last_report"].as_object() {
                            for (k, v) in since {
                                *self.losses.entry(k.clone()).or_default() +=
                                    v.as_u64().unwrap_or(0);
                            }
                        }
                    }
                    "ban" => self.bans.push(with_time(time_ms, &fields, BAN_FIELDS)),
                    "policy_applied" | "policy_rejected" => {
                        let mut v = with_time(time_ms, &fields, POLICY_FIELDS);
                        v["event"] = kind.clone().into();
                        self.policy_changes.push(v);
                    }
                    _ => {}
                }
                *self.lifecycle.entry(kind).or_default() += 1;
            }
            Record::Other(class) => *self.other.entry(class).or_default() += 1,
        }
    }
}

const BAN_FIELDS: &[&str] = &["source", "seconds", "failures", "identity", "enforced"];
const POLICY_FIELDS: &[&str] = &["generation", "digest", "sources", "error"];

fn with_time(time_ms: u64, fields: &Value, keep: &[&str]) -> Value {
    let mut v = json!({ "time_ms": time_ms });
    for k in keep {
        if !fields[*k].is_null() {
            v[*k] = fields[*k].clone();
        }
    }
    v
}

/// The time and the record of one JSON line in any of warden's encodings.
fn decode(v: &Value) -> Option<(u64, Record)> {
    if v.get("class_uid").is_some() {
        decode_ocsf(v)
    } else if v.get("@timestamp").is_some() {
        decode_ecs(v)
    } else {
        decode_raw(v)
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

fn decode_raw(v: &Value) -> Option<(u64, Record)> {
    let time = v["time_ms"].as_u64()?;
    let kind = v["type"].as_str()?;
    let record = if kind == "flow" {
        Record::Decision {
            verdict: text(&v["verdict"]),
            hook: text(&v["hook"]),
            reason: text(&v["reason"]),
            count: v["count"].as_u64().unwrap_or(1),
        }
    } else {
        Record::Lifecycle {
            kind: kind.to_owned(),
            fields: v.clone(),
        }
    };
    Some((time, record))
}

fn decode_ocsf(v: &Value) -> Option<(u64, Record)> {
    let time = v["end_time"].as_u64().or_else(|| v["time"].as_u64())?;
    let w = &v["unmapped"]["warden"];
    let record = match v["class_uid"].as_u64()? {
        4001 => Record::Decision {
            verdict: if w["would_block"] == true {
                "would_deny"
            } else if v["action_id"] == 1 {
                "allow"
            } else {
                "deny"
            }
            .to_owned(),
            hook: text(&w["hook"]),
            reason: text(&w["reason"]),
            count: v["count"].as_u64().unwrap_or(1),
        },
        6002 => Record::Lifecycle {
            kind: w["event"].as_str()?.to_owned(),
            fields: w.clone(),
        },
        _ => Record::Other(text(&v["class_name"])),
    };
    Some((time, record))
}

fn decode_ecs(v: &Value) -> Option<(u64, Record)> {
    let time = v["event"]["end"]
        .as_str()
        .or_else(|| v["@timestamp"].as_str())
        .and_then(warden_events::ecs::parse_rfc3339_ms)?;
    let w = &v["ollama_warden"];
    let record = match v["event"]["dataset"].as_str()? {
        "ollama_warden.flow" => Record::Decision {
            verdict: if w["would_block"] == true {
                "would_deny"
            } else if v["event"]["outcome"] == "success" {
                "allow"
            } else {
                "deny"
            }
            .to_owned(),
            hook: text(&w["hook"]),
            reason: text(&v["event"]["action"]),
            count: w["count"].as_u64().unwrap_or(1),
        },
        "ollama_warden.lifecycle" => Record::Lifecycle {
            kind: text(&v["event"]["action"]),
            fields: w.clone(),
        },
        other => Record::Other(other.to_owned()),
    };
    Some((time, record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_common::{FlowEvent, hook, mapped_v4, reason, verdict};
    use warden_events::{Encoder, EventFormat};

    fn deny() -> FlowEvent {
        // SAFETY: plain data, every field set or zero.
        let mut ev: FlowEvent = unsafe { std::mem::zeroed() };
        ev.hook = hook::CONNECT4;
        ev.verdict = verdict::DENY;
        ev.reason = reason::LOCAL_NOT_ALLOWED;
        ev.family = 2;
        ev.proto = 6;
        ev.daddr = mapped_v4([127, 0, 0, 1]);
        ev.dport = 11434;
        ev
    }

    /// Every encoding the daemon writes reads back as the same decisions and
    /// lifecycle events, aggregated records by their count.
    #[test]
    fn every_encoding_reads_back_the_same_counts() {
        for format in [EventFormat::Raw, EventFormat::Ocsf, EventFormat::Ecs] {
            let mut enc = Encoder::new(format, "/nonexistent".into());
            let ev = deny();
            let lines = [
                enc.flow(&ev, None),
                enc.repeats(&warden_events::aggregate::Repeats {
                    last: ev,
                    context: None,
                    count: 41,
                    first_ns: 1,
                    last_ns: 1,
                }),
                enc.lifecycle(
                    "loss",
                    json!({"since_last_report": {"kernel_lost": 3, "sink_dropped": 2}}),
                ),
                enc.lifecycle("ban", json!({"source": "10.0.0.9", "seconds": 600})),
                enc.lifecycle("policy_applied", json!({"generation": 2, "digest": "d"})),
            ];
            let text: String = lines.iter().map(|l| format!("{l}\nnot json\n")).collect();
            let mut p = Period::new(0, u64::MAX);
            p.read("log", text.as_bytes());
            assert_eq!(p.decisions["deny"], 42, "{format:?}");
            assert_eq!(p.by_reason["deny connect4 local_not_allowed"], 42);
            assert_eq!(p.losses["kernel_lost"], 3);
            assert_eq!(p.losses["sink_dropped"], 2);
            assert_eq!(p.bans.len(), 1);
            assert_eq!(p.bans[0]["source"], "10.0.0.9");
            assert_eq!(p.policy_changes[0]["generation"], 2);
            assert_eq!(p.lifecycle["loss"], 1);
            assert_eq!(p.unreadable, 5);
        }
    }

    #[test]
    fn records_outside_the_period_are_counted_apart() {
        let mut p = Period::new(1_000, 2_000);
        let lines = "{\"type\":\"flow\",\"time_ms\":500,\"verdict\":\"deny\",\"hook\":\"xdp\",\"reason\":\"r\"}\n\
                     {\"type\":\"flow\",\"time_ms\":1500,\"verdict\":\"allow\",\"hook\":\"xdp\",\"reason\":\"r\"}\n";
        p.read("log", lines.as_bytes());
        assert_eq!(p.records, 2);
        assert_eq!(p.outside_period, 1);
        assert_eq!(p.decisions.get("deny"), None);
        assert_eq!(p.decisions["allow"], 1);
        assert_eq!((p.first_ms, p.last_ms), (Some(1500), Some(1500)));
    }
}
