//! `warden evidence`: one bundle an auditor can take away (a tar file): the
//! policy in force with its files and signatures, the enforcement state,
//! the units' hardening scores, doctor's checks, the proxy's identities
//! (never their secrets), the event log's counts for a period, and a
//! `SHA256SUMS` over every part, signed with minisign when a key is given.
//! Each part is checkable with standard tools (`sha256sum -c`,
//! `minisign -V`); docs/EVIDENCE.md maps the parts to SOC 2 criteria.

mod parts;
mod period;

use serde_json::{Value, json};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use warden_daemon::state::DaemonState;

#[derive(clap::Args)]
pub struct EvidenceArgs {
    /// The period the event counts cover, back from now (e.g. 30d, 12h).
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    since: String,
    /// The bundle to write (a tar file).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Sign the bundle's SHA256SUMS with this minisign secret key.
    #[arg(long, value_name = "SECRET_KEY")]
    key: Option<PathBuf>,
    /// Event logs to count (warden's JSON, OCSF or ECS lines); repeatable.
    /// Default: the running daemon's file sinks with their rotated files,
    /// and its journal when it writes to stdout under systemd.
    #[arg(long, value_name = "FILE")]
    events: Vec<PathBuf>,
    #[arg(long, default_value = "/etc/ollama-warden/proxy.toml")]
    proxy_config: PathBuf,
    /// Where to look for unit files; repeatable (default: systemd's system unit path).
    #[arg(long, value_name = "DIR")]
    unit_dir: Vec<PathBuf>,
    #[arg(long, default_value_t = 11434)]
    port: u16,
}

/// The parts, what each shows, and the SOC 2 criteria (2017 Trust Services
/// Criteria) it is evidence for; the bundle's README and docs/EVIDENCE.md
/// give this table.
pub const PARTS: &[(&str, &str, &str)] = &[
    (
        "policy.json, policy/",
        "the policy in force (generation, digest, mode, rules with file:line:col), each file with its SHA-256 and signature, the files themselves, and whether the files on disk still compile to the digest in force",
        "CC6.1, CC6.6, CC8.1",
    ),
    (
        "enforcement.json",
        "what enforces it: backend, attached programs, pin directory, gaps, bans, kernel counters, per-rule hits, event delivery and losses",
        "CC6.1, CC6.6, CC7.2",
    ),
    (
        "units.json",
        "the systemd units' exposure scores (`systemd-analyze security`)",
        "CC6.8, CC7.1",
    ),
    (
        "doctor.json",
        "`warden doctor`: the host checked against the Ollama hardening guides",
        "CC7.1, CC6.6",
    ),
    (
        "proxy.json",
        "the proxy's identities: names, how each authenticates, model globs, sources, limits; content rules by name (no token, hash or password)",
        "CC6.1, CC6.2, CC6.3",
    ),
    (
        "events.json",
        "the event log over the period: decisions by verdict, hook and reason, lifecycle events, reported losses, bans, policy changes, and the log's coverage",
        "CC7.2, CC7.3, CC7.4",
    ),
    (
        "bundle.json",
        "when, where (host, boot, kernel) and by which warden the bundle was made, and the period",
        "—",
    ),
    (
        "SHA256SUMS, SHA256SUMS.minisig",
        "the digest of every other part, and its signature when a key was given",
        "(the bundle's integrity)",
    ),
];

pub fn run(args: EvidenceArgs, pin_dir: &Path, run_dir: &Path, nft_table: &str) -> i32 {
    match make(&args, pin_dir, run_dir, nft_table) {
        Ok(n) => {
            println!(
                "wrote {} ({n} parts{})",
                args.out.display(),
                if args.key.is_some() { ", signed" } else { "" }
            );
            0
        }
        Err(e) => {
            eprintln!("warden evidence: {e}");
            1
        }
    }
}

fn make(
    a: &EvidenceArgs,
    pin_dir: &Path,
    run_dir: &Path,
    nft_table: &str,
) -> Result<usize, String> {
    let period =
        warden_runtime::units::parse_duration(&a.since).map_err(|e| format!("--since: {e}"))?;
    let now = warden_runtime::clock::unix_ms();
    let since = now.saturating_sub(period.as_millis() as u64);
    let state = DaemonState::read(run_dir);
    let unit_dirs = match a.unit_dir.is_empty() {
        true => warden_host::procfs::UNIT_DIRS
            .iter()
            .map(PathBuf::from)
            .collect(),
        false => a.unit_dir.clone(),
    };

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let json_part = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    files.push(("bundle.json".into(), json_part(&about(since, now, run_dir))));
    let (policy, copies) = parts::policy(state.as_ref());
    files.push(("policy.json".into(), json_part(&policy)));
    files.extend(copies);
    let status = warden_daemon::status::report(pin_dir, run_dir, nft_table);
    let enforcement = json!({
        "status": status,
        "attachments": state.as_ref().map(|s| s.attachments.clone()),
    });
    files.push(("enforcement.json".into(), json_part(&enforcement)));
    files.push((
        "units.json".into(),
        json_part(&parts::hardening(&unit_dirs)),
    ));
    let doctor = warden_host::doctor::run(&warden_host::doctor::Options {
        port: a.port,
        proxy_config: a.proxy_config.clone(),
        unit_dirs,
        ollama_unit: None,
        pin_dir: pin_dir.to_owned(),
        run_dir: run_dir.to_owned(),
        nft_table: nft_table.to_owned(),
    });
    files.push((
        "doctor.json".into(),
        json_part(&json!({ "checks": doctor })),
    ));
    files.push((
        "proxy.json".into(),
        json_part(&parts::identities(&a.proxy_config)),
    ));
    let events = count_events(a, state.as_ref(), since, now);
    files.push((
        "events.json".into(),
        json_part(&serde_json::to_value(&events).unwrap_or_default()),
    ));
    files.push(("README.md".into(), readme(since, now).into_bytes()));

    let sums: String = files
        .iter()
        .map(|(name, bytes)| format!("{}  {name}\n", warden_daemon::signature::sha256_hex(bytes)))
        .collect();
    files.push(("SHA256SUMS".into(), sums.clone().into_bytes()));
    if let Some(key) = &a.key {
        files.push(("SHA256SUMS.minisig".into(), sign(&sums, key, now)?));
    }
    write_tar(&a.out, &files, now / 1000)?;
    Ok(files.len())
}

/// Where and when the bundle was made.
fn about(since: u64, now: u64, run_dir: &Path) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).ok();
    json!({
        "format": "ollama-warden-evidence/1",
        "created": warden_events::ecs::rfc3339_ms(now),
        "period": { "since": warden_events::ecs::rfc3339_ms(since), "until": warden_events::ecs::rfc3339_ms(now) },
        "host": read("/proc/sys/kernel/hostname"),
        "boot_id": read("/proc/sys/kernel/random/boot_id"),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "warden_version": env!("CARGO_PKG_VERSION"),
        "run_dir": run_dir.display().to_string(),
        "parts": PARTS.iter().map(|(name, what, soc2)| json!({ "part": name, "shows": what, "soc2": soc2 })).collect::<Vec<_>>(),
    })
}

/// The event logs to read: those given, else the daemon's file sinks (oldest
/// rotation first) and, for a stdout sink under systemd, its journal.
fn count_events(
    a: &EvidenceArgs,
    state: Option<&DaemonState>,
    since: u64,
    now: u64,
) -> period::Period {
    let mut p = period::Period::new(since, now);
    let mut files = a.events.clone();
    let mut journal = false;
    if files.is_empty() {
        for sink in state.iter().flat_map(|s| &s.events.sinks) {
            match sink
                .sink
                .parse::<warden_events::sink::SinkSpec>()
                .map(|s| s.target)
            {
                Ok(warden_events::sink::Target::File { path, keep, .. }) => {
                    for n in (1..=keep).rev() {
                        let rotated = PathBuf::from(format!("{}.{n}", path.display()));
                        if rotated.exists() {
                            files.push(rotated);
                        }
                    }
                    files.push(path);
                }
                Ok(warden_events::sink::Target::Stdout) => journal = true,
                _ => {}
            }
        }
    }
    for f in &files {
        match std::fs::File::open(f) {
            Ok(file) => p.read(&f.display().to_string(), BufReader::new(file)),
            Err(e) => p.sources.push(format!("{}: {e}", f.display())),
        }
    }
    if journal && Path::new("/run/systemd/system").is_dir() {
        let out = std::process::Command::new("journalctl")
            .args([
                "_SYSTEMD_UNIT=ollama-warden.service",
                "-o",
                "cat",
                "--no-pager",
            ])
            .arg(format!("--since=@{}", since / 1000))
            .output();
        match out {
            Ok(o) if o.status.success() => {
                // The daemon's log shares the journal: only its records are JSON objects.
                let records: Vec<&[u8]> = o
                    .stdout
                    .split(|&b| b == b'\n')
                    .filter(|l| l.first() == Some(&b'{'))
                    .collect();
                p.read(
                    "journal of ollama-warden.service",
                    &records.join(&b'\n')[..],
                );
            }
            Ok(o) => p.sources.push(format!(
                "journalctl: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => p.sources.push(format!("journalctl: {e}")),
        }
    }
    if p.sources.is_empty() {
        p.note = Some("no event log read: the daemon has no file sink and no journal here; give --events FILE".into());
    }
    p
}

fn readme(since: u64, now: u64) -> String {
    let mut s = format!(
        "# ollama-warden evidence\n\nMade {} for the period {} to {}.\n\n\
         | part | shows | SOC 2 |\n|---|---|---|\n",
        warden_events::ecs::rfc3339_ms(now),
        warden_events::ecs::rfc3339_ms(since),
        warden_events::ecs::rfc3339_ms(now),
    );
    for part in PARTS {
        s.push_str(&table_row(part));
        s.push('\n');
    }
    s.push_str(
        "\n## Checking it\n\n```sh\nmkdir bundle && tar -xf BUNDLE.tar -C bundle && cd bundle\n\
         sha256sum --strict -c SHA256SUMS          # every part as it was made\n\
         minisign -V -p KEY.pub -m SHA256SUMS       # made by the key holder\n\
         ```\n\nEvery file of the bundle but SHA256SUMS and its signature is listed in SHA256SUMS.\n",
    );
    s
}

/// A row of the parts table, as docs/EVIDENCE.md has it.
fn table_row((names, what, soc2): &(&str, &str, &str)) -> String {
    let names: Vec<String> = names.split(", ").map(|n| format!("`{n}`")).collect();
    format!("| {} | {what} | {soc2} |", names.join(", "))
}

/// The minisign signature of `sums`, made in a private temporary directory.
fn sign(sums: &str, key: &Path, now: u64) -> Result<Vec<u8>, String> {
    let dir = std::env::temp_dir().join(format!("warden-evidence-{}-{now}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("SHA256SUMS");
    let result = std::fs::write(&file, sums)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            warden_daemon::signature::minisign_sign(
                &file,
                key,
                &format!(
                    "ollama-warden evidence, {}",
                    warden_events::ecs::rfc3339_ms(now)
                ),
            )
        })
        .and_then(|()| std::fs::read(dir.join("SHA256SUMS.minisig")).map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Writes the parts as a tar file (mode 0644, owned by root, all with the
/// bundle's time), in place only once complete.
fn write_tar(out: &Path, files: &[(String, Vec<u8>)], mtime: u64) -> Result<(), String> {
    let tmp = out.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut t = tar::Builder::new(std::fs::File::create(&tmp)?);
        for (name, bytes) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            t.append_data(&mut h, name, &bytes[..])?;
        }
        t.into_inner()?.flush()
    };
    write()
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("{}: {e}", out.display())
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_docs_give_the_bundles_table() {
        let docs = include_str!("../../../docs/EVIDENCE.md");
        for part in super::PARTS {
            let row = super::table_row(part);
            assert!(docs.contains(&row), "docs/EVIDENCE.md lacks: {row}");
        }
    }
}
