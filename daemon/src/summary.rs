//! What the daemon tells at start and with each policy: the log summary and
//! the `policy_applied` event's fields.

use serde_json::{Value, json};
use warden_enforce::compile::{Compiled, PolicyMode};
use warden_enforce::ebpf::{Applied, Attachment};
use warden_policy::Policy;

/// The fields of a `policy_applied` event.
pub fn applied_event(compiled: &Compiled, applied: &Applied, policy: &Policy) -> Value {
    json!({
        "generation": applied.generation,
        "digest": compiled.digest,
        "mode": compiled.mode(),
        "audit": compiled.audit_sections(),
        "sources": policy.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "unresolved_cgroups": applied.unresolved,
    })
}

pub fn print_summary(
    policy: &Policy,
    c: &Compiled,
    applied: &Applied,
    attachments: &[Attachment],
    gaps: &[&str],
) {
    let sources: Vec<String> = policy
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    tracing::info!(
        generation = applied.generation,
        digest = %c.digest,
        "enforcing policy generation {} ({}) from {}",
        applied.generation,
        c.digest,
        sources.join(", ")
    );
    tracing::info!("protected ports: {:?}", c.ports);
    match c.mode() {
        PolicyMode::Enforce => {}
        mode => tracing::warn!(
            "mode: {}: AUDIT ONLY (reported as would_deny, not blocked): {}",
            mode.as_str(),
            c.audit_sections().join(", ")
        ),
    }
    let remote: Vec<String> = c
        .ingress
        .iter()
        .map(|e| format!("{}→{}", e.net, e.port))
        .collect();
    tracing::info!(
        "remote sources allowed: {}",
        if remote.is_empty() {
            "none (local access only)".to_owned()
        } else {
            remote.join(", ")
        }
    );
    for g in &c.cgroups {
        let what = if g.flags & warden_common::CG_MAY_BIND != 0 {
            "bind+connect"
        } else {
            "connect"
        };
        tracing::info!("local cgroup {} may {what}", g.cgroup);
    }
    for e in &c.egress {
        tracing::info!(
            "egress of {} limited to {} prefix(es)",
            e.cgroup,
            e.prefixes.len()
        );
    }
    for u in &applied.unresolved {
        tracing::info!("note: cgroup {u} does not exist yet; granted as soon as it appears");
    }
    for g in gaps {
        tracing::warn!("NOT ENFORCED by this backend: {g}");
    }
    for a in attachments {
        tracing::info!(
            "{} on {}: {}{}",
            a.program,
            a.target,
            a.state.as_str(),
            a.mode
                .map(|m| format!(" ({})", m.as_str()))
                .unwrap_or_default()
        );
    }
}
