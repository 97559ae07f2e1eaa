//! The parts of an evidence bundle that need more than a serialisation: the
//! policy in force with its files, the proxy's identities, the units'
//! hardening scores.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use warden_daemon::signature::{MANIFEST, PolicyKey, sha256_hex};
use warden_daemon::state::DaemonState;

/// A file copied into the bundle: its name there and its bytes.
pub type Part = (String, Vec<u8>);

/// The policy in force (from the daemon's state), each of its files with its
/// digest and signature, and whether the files on disk still compile to the
/// digest in force (and verify, when the daemon requires signatures).
pub fn policy(state: Option<&DaemonState>) -> (Value, Vec<Part>) {
    let Some(s) = state else {
        return (
            json!({ "in_force": null, "note": "no daemon state: no policy is known to be in force" }),
            Vec::new(),
        );
    };
    let mut copies = Vec::new();
    let mut files = Vec::new();
    if s.policy_paths.is_empty() {
        let text = warden_policy::DEFAULT_POLICY_TOML.as_bytes().to_vec();
        files.push(json!({ "path": "embedded default", "sha256": sha256_hex(&text),
                           "signature": "part of the binary", "copy": "policy/embedded-default.toml" }));
        copies.push(("policy/embedded-default.toml".to_owned(), text));
    }
    for source in &s.sources {
        let path = Path::new(source);
        let mut f = json!({ "path": source, "signature": signature_kind(path) });
        match std::fs::read(path) {
            Ok(bytes) => {
                f["sha256"] = sha256_hex(&bytes).into();
                f["copy"] = copy_name(path).into();
                copies.push((copy_name(path), bytes));
            }
            Err(e) => f["error"] = e.to_string().into(),
        }
        files.push(f);
    }
    // The signatures themselves, so the auditor can verify the files.
    for sig in signature_files(&s.sources) {
        if let Ok(bytes) = std::fs::read(&sig) {
            copies.push((copy_name(&sig), bytes));
        }
    }
    let on_disk = on_disk(s);
    let v = json!({
        "in_force": {
            "generation": s.generation,
            "digest": s.digest,
            "mode": s.mode,
            "audit": s.audit,
            "ports": s.ports,
            "paths": s.policy_paths,
            "rules": s.rules,
            "unresolved_cgroups": s.unresolved_cgroups,
        },
        "signature": {
            "required": s.signature_key.is_some(),
            "key": s.signature_key,
            "sets_in_force": s.policy_sets.iter().map(|(dir, serial)| json!({ "dir": dir, "serial": serial })).collect::<Vec<_>>(),
        },
        "files": files,
        "on_disk": on_disk,
    });
    (v, copies)
}

/// Reloads the policy paths as the daemon would (verifying signatures with
/// its key) and compares the digest with the one in force.
fn on_disk(s: &DaemonState) -> Value {
    let key = match s.signature_key.as_deref().map(PolicyKey::load).transpose() {
        Ok(k) => k,
        Err(e) => return json!({ "error": e }),
    };
    let paths: Vec<PathBuf> = s.policy_paths.iter().map(PathBuf::from).collect();
    match warden_daemon::run::load_policy(&paths, key.as_ref()) {
        Ok((_, c)) => json!({
            "digest": c.digest,
            "matches_in_force": c.digest == s.digest,
            "signatures_verified": key.is_some(),
        }),
        Err(e) => json!({ "error": e.to_string(), "matches_in_force": false }),
    }
}

/// How a policy file is signed: by its directory's manifest, by its own
/// `.minisig`, or not at all (whether it verifies is `on_disk`'s finding).
fn signature_kind(path: &Path) -> String {
    let manifest = path.parent().map(|d| d.join(MANIFEST));
    if let Some(serial) = manifest
        .and_then(|m| std::fs::read(m).ok())
        .and_then(|b| serde_json::from_slice::<warden_daemon::signature::Manifest>(&b).ok())
        .filter(|m| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            m.files.iter().any(|f| f.name == name)
        })
        .map(|m| m.serial)
    {
        return format!("signed set, serial {serial}");
    }
    if minisig(path).exists() {
        "own signature".to_owned()
    } else {
        "unsigned".to_owned()
    }
}

fn minisig(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".minisig");
    PathBuf::from(p)
}

/// Each file's signature and each directory's manifest with its signature.
fn signature_files(sources: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for source in sources {
        let path = Path::new(source);
        let mut candidates = vec![minisig(path)];
        if let Some(dir) = path.parent() {
            candidates.push(dir.join(MANIFEST));
            candidates.push(minisig(&dir.join(MANIFEST)));
        }
        for c in candidates {
            if c.exists() && !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// `policy/` and the absolute path without its leading `/`.
fn copy_name(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    format!(
        "policy/{}",
        abs.display().to_string().trim_start_matches('/')
    )
}

/// The proxy's identities as an auditor needs them: who may authenticate
/// how, and to which models. Never a token, a hash or a password.
pub fn identities(config: &Path) -> Value {
    let c = match warden_proxy::config::load(config) {
        Ok(c) => c,
        Err(diags) => {
            return json!({
                "config": config.display().to_string(),
                "error": diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"),
            });
        }
    };
    let identities: Vec<Value> = c
        .identities
        .iter()
        .map(|i| {
            let mut kinds = Vec::new();
            if !i.tokens.is_empty() {
                kinds.push("token");
            }
            if i.basic.is_some() {
                kinds.push("basic");
            }
            if !i.mtls.is_empty() {
                kinds.push("mtls");
            }
            json!({
                "name": i.name,
                "kinds": kinds,
                "tokens": i.tokens.len(),
                "token_expiry": i.tokens.iter().map(|t| t.expires).collect::<Vec<_>>(),
                "certificate_names": i.mtls,
                "models": i.models.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
                "admin": i.admin,
                "sources": i.sources.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "time_windows": i.windows.len(),
                "requests_per_minute": i.rate.as_ref().map(|r| (r.per_sec * 60.0).round()),
                "concurrency": i.concurrency,
                "max_body": i.max_body,
                "max_tokens": i.max_tokens,
                "max_prompt_chars": i.max_prompt_chars,
            })
        })
        .collect();
    json!({
        "config": config.display().to_string(),
        "listen": c.listen.to_string(),
        "client_ca": c.tls.client_ca.as_ref().map(|p| p.display().to_string()),
        "identities": identities,
        "content_rules": c.content_rules.iter().map(|r| json!({ "name": r.name, "action": r.action.as_str(), "origin": r.origin })).collect::<Vec<_>>(),
    })
}

/// The units warden ships, and Ollama's.
const UNITS: &[&str] = &[
    "ollama-warden.service",
    "ollama-warden-proxy.service",
    "ollama.service",
];

/// Each unit's exposure as `systemd-analyze security` scores it (0 = locked
/// down, 10 = exposed): the loaded unit (with its drop-ins) when systemd
/// runs, else the unit file found in `unit_dirs`.
pub fn hardening(unit_dirs: &[PathBuf]) -> Value {
    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    let scores: Vec<Value> = UNITS
        .iter()
        .map(|unit| {
            let file = unit_dirs.iter().map(|d| d.join(unit)).find(|p| p.is_file());
            let (target, offline) = match (&file, systemd_runs && loaded(unit)) {
                (_, true) => (unit.to_string(), false),
                (Some(f), false) => (f.display().to_string(), true),
                (None, false) => return json!({ "unit": unit, "status": "not installed" }),
            };
            let mut cmd = Command::new("systemd-analyze");
            cmd.args(["security", "--no-pager"]);
            if offline {
                cmd.arg("--offline=true");
            }
            let out = cmd.arg(&target).output();
            let text = out
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            match exposure(&text) {
                Some((score, rating)) => json!({
                    "unit": unit, "scored": if offline { target } else { "loaded unit".to_owned() },
                    "exposure": score, "rating": rating,
                }),
                None => json!({
                    "unit": unit,
                    "error": match out {
                        Ok(o) => format!("systemd-analyze security {target}: {}", String::from_utf8_lossy(&o.stderr).trim()),
                        Err(e) => format!("systemd-analyze: {e}"),
                    },
                }),
            }
        })
        .collect();
    json!({ "tool": "systemd-analyze security", "units": scores })
}

fn loaded(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["show", "--property=LoadState", "--value", unit])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "loaded")
}

/// "→ Overall exposure level for x.service: 2.9 OK 🙂" → (2.9, "OK").
fn exposure(text: &str) -> Option<(f64, String)> {
    let rest = text
        .lines()
        .find_map(|l| l.split("exposure level for ").nth(1))?;
    let mut words = rest.split(": ").nth(1)?.split_whitespace();
    let score = words.next()?.parse().ok()?;
    Some((score, words.next().unwrap_or("").to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn exposure_lines() {
        let text = "  ✓ ...\n\n→ Overall exposure level for ollama-warden.service: 2.9 OK 🙂\n";
        assert_eq!(super::exposure(text), Some((2.9, "OK".to_owned())));
        assert_eq!(super::exposure("nothing"), None);
    }
}
