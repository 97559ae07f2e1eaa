//! `warden doctor`: the smoke tests of the Ollama hardening guides as automatic
//! checks, each passed or failed with the fix. Exit status 1 when any fails.

use crate::https;
use crate::procfs::{self, Process, UnitFile, is_loopback};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use warden_daemon::status::StatusReport;
use warden_enforce::compile::PolicyMode;

pub struct Options {
    pub port: u16,
    pub proxy_config: PathBuf,
    /// Where to look for unit files (default: systemd's system unit path).
    pub unit_dirs: Vec<PathBuf>,
    /// Ollama's unit (default: from the listener's cgroup).
    pub ollama_unit: Option<String>,
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
    pub nft_table: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(id: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        id,
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Settings of Ollama's unit that the hardening guides (and warden's drop-in) set.
const HARDENING: &[(&str, &[&str])] = &[
    ("NoNewPrivileges", &["yes", "true"]),
    ("ProtectSystem", &["strict", "full"]),
    ("ProtectHome", &["yes", "true", "read-only", "tmpfs"]),
    ("PrivateTmp", &["yes", "true"]),
    ("ProtectKernelTunables", &["yes", "true"]),
    ("ProtectKernelModules", &["yes", "true"]),
    ("ProtectControlGroups", &["yes", "true"]),
    ("RestrictNamespaces", &["yes", "true"]),
    ("RestrictSUIDSGID", &["yes", "true"]),
    ("LockPersonality", &["yes", "true"]),
];

const DROP_IN: &str = "/usr/share/doc/ollama-warden/examples/ollama.service.d/ollama-warden.conf";

pub fn run(o: &Options) -> Vec<Check> {
    let mut out = Vec::new();
    let sockets = procfs::tcp_sockets();
    let owners = procfs::socket_owners();
    let listeners: Vec<(SocketAddr, Option<Process>)> = sockets
        .iter()
        .filter(|s| s.listening && s.local.port() == o.port)
        .map(|s| {
            (
                s.local,
                owners.get(&s.inode).and_then(|&pid| Process::read(pid)),
            )
        })
        .collect();
    let server = listeners.iter().find_map(|(_, p)| p.clone());

    // 1. Ollama bound only where intended.
    out.push(if listeners.is_empty() {
        check(
            "ollama-bind",
            Status::Warn,
            format!("nothing listens on port {}: is Ollama running?", o.port),
        )
    } else {
        let open: Vec<String> = listeners
            .iter()
            .filter(|(a, _)| !is_loopback(a.ip()))
            .map(|(a, _)| a.to_string())
            .collect();
        let all: Vec<String> = listeners.iter().map(|(a, _)| a.to_string()).collect();
        if open.is_empty() {
            check(
                "ollama-bind",
                Status::Pass,
                format!("listens on loopback only ({})", all.join(", ")),
            )
        } else {
            check(
                "ollama-bind",
                Status::Fail,
                format!(
                    "listens on {}: reachable from the network, without authentication",
                    open.join(", ")
                ),
            )
            .fix(format!(
                "set OLLAMA_HOST=127.0.0.1:{} (warden's drop-in for ollama.service does) and restart Ollama; clients go through `warden proxy`",
                o.port
            ))
        }
    });

    // 2. Its unit's hardening.
    // Ollama's unit: as given, else the listener's, else (nothing listens) the
    // installer's ollama.service if there is one.
    let unit_name = o.ollama_unit.clone().or_else(|| match &server {
        Some(p) => p.unit(),
        None => UnitFile::load("ollama.service", &o.unit_dirs).map(|_| "ollama.service".into()),
    });
    let unit = unit_name
        .as_deref()
        .and_then(|n| UnitFile::load(n, &o.unit_dirs));
    out.push(match (&unit_name, &unit) {
        (None, _) => check(
            "ollama-unit",
            Status::Skip,
            "Ollama does not run in a systemd unit (or is not running)",
        ),
        (Some(n), None) => check(
            "ollama-unit",
            Status::Fail,
            format!("unit {n} not found in {}", dirs_text(&o.unit_dirs)),
        )
        .fix("run Ollama as a systemd service (its installer creates ollama.service)"),
        (Some(n), Some(u)) => {
            let missing: Vec<&str> = HARDENING
                .iter()
                .filter(|(k, ok)| !u.get(k).is_some_and(|v| ok.contains(&v)))
                .map(|(k, _)| *k)
                .collect();
            let root = u.get("User").is_none_or(|v| v == "root" || v == "0");
            let mut problems: Vec<String> = Vec::new();
            if !missing.is_empty() {
                problems.push(format!("missing {}", missing.join(", ")));
            }
            if root {
                problems.push("runs as root (no User=)".into());
            }
            if problems.is_empty() {
                check("ollama-unit", Status::Pass, format!("{n} is hardened"))
            } else {
                check(
                    "ollama-unit",
                    Status::Fail,
                    format!("{n}: {}", problems.join("; ")),
                )
                .fix(format!(
                    "install {DROP_IN} as /etc/systemd/system/{n}.d/ollama-warden.conf, then systemctl daemon-reload and restart it; run it as its own user"
                ))
            }
        }
    });

    // 3. Model store permissions; cloud models.
    out.push(model_store(server.as_ref(), unit.as_ref()));
    out.push(cloud_models(server.as_ref(), unit.as_ref()));
    // 4. Humans in the GPU device groups.
    out.push(gpu_groups());
    // 5. The proxy: 401 without credentials, admin routes refused.
    out.push(proxy(&o.proxy_config));
    if let Some(c) = certificates(&o.proxy_config) {
        out.push(c);
    }
    // 6. warden's own enforcement; 7. its event sinks.
    let report = warden_daemon::status::report(&o.pin_dir, &o.run_dir, &o.nft_table);
    out.push(enforcement(&report, o.port));
    out.push(sinks(&report));
    out
}

fn dirs_text(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the server serves cloud models (`OLLAMA_NO_CLOUD` unset): a server
/// signed in to ollama.com spends that account for each of them. Whether it
/// is signed in is not told here: that is asked of ollama.com, and warden
/// lets no unlisted process reach the server to ask.
fn cloud_models(server: Option<&Process>, unit: Option<&UnitFile>) -> Check {
    let Some(server) = server else {
        return check("ollama-cloud", Status::Skip, "no Ollama process to read");
    };
    let env = server.environ();
    let unit_env = unit.map(UnitFile::environment).unwrap_or_default();
    let value = env
        .get("OLLAMA_NO_CLOUD")
        .or_else(|| unit_env.get("OLLAMA_NO_CLOUD"));
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => check(
            "ollama-cloud",
            Status::Pass,
            "cloud models are off (OLLAMA_NO_CLOUD)",
        ),
        _ => check(
            "ollama-cloud",
            Status::Warn,
            "cloud models are on: a server signed in to ollama.com spends that account for them (the proxy lets only identities that name one use it)",
        )
        .fix("Environment=OLLAMA_NO_CLOUD=1 in Ollama's unit, unless an identity is meant to use cloud models"),
    }
}

fn model_store(server: Option<&Process>, unit: Option<&UnitFile>) -> Check {
    let env = server.map(Process::environ).unwrap_or_default();
    let unit_env = unit.map(UnitFile::environment).unwrap_or_default();
    let dir = env
        .get("OLLAMA_MODELS")
        .or_else(|| unit_env.get("OLLAMA_MODELS"))
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|h| Path::new(h).join(".ollama/models")))
        .unwrap_or_else(|| PathBuf::from("/usr/share/ollama/.ollama/models"));
    let Some((mode, uid, _)) = procfs::mode_of(&dir) else {
        return check(
            "model-store",
            Status::Skip,
            format!("no model store at {}", dir.display()),
        );
    };
    let server_uid = server.and_then(|p| p.uid);
    if mode & 0o007 != 0 {
        return check(
            "model-store",
            Status::Fail,
            format!(
                "{} is mode {mode:04o}: other users may {} the models",
                dir.display(),
                if mode & 0o002 != 0 { "replace" } else { "read" }
            ),
        )
        .fix(format!(
            "chmod -R o-rwx {} (owned by Ollama's user, mode 0750 or tighter)",
            dir.display()
        ));
    }
    if let Some(s) = server_uid
        && s != uid
        && uid != 0
    {
        return check(
            "model-store",
            Status::Warn,
            format!(
                "{} is owned by uid {uid}, Ollama runs as uid {s}",
                dir.display()
            ),
        )
        .fix(format!("chown -R <ollama user> {}", dir.display()));
    }
    check(
        "model-store",
        Status::Pass,
        format!("{} is mode {mode:04o}", dir.display()),
    )
}

fn gpu_groups() -> Check {
    use std::os::unix::fs::MetadataExt;
    let mut gids: BTreeMap<u32, String> = BTreeMap::new();
    let mut nodes: Vec<PathBuf> = Vec::new();
    for dir in ["/dev", "/dev/dri"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("nvidia")
                || name == "kfd"
                || (dir == "/dev/dri" && (name.starts_with("render") || name.starts_with("card")))
            {
                nodes.push(e.path());
            }
        }
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let group_by_gid: BTreeMap<u32, (String, Vec<String>)> = groups
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f
                .get(3)?
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            Some((f.get(2)?.parse().ok()?, (f[0].to_owned(), members)))
        })
        .collect();
    for n in &nodes {
        if let Ok(m) = std::fs::metadata(n)
            && m.gid() != 0
        {
            gids.insert(m.gid(), n.display().to_string());
        }
    }
    let from_nodes = !gids.is_empty();
    if !from_nodes {
        // No GPU nodes visible: the usual device groups by name.
        for (gid, (name, _)) in &group_by_gid {
            if name == "video" || name == "render" {
                gids.insert(*gid, format!("the {name} group"));
            }
        }
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let mut humans: BTreeSet<String> = BTreeSet::new();
    for l in passwd.lines() {
        let f: Vec<&str> = l.split(':').collect();
        let (Some(name), Some(uid), Some(gid), Some(shell)) = (
            f.first(),
            f.get(2).and_then(|u| u.parse::<u32>().ok()),
            f.get(3).and_then(|g| g.parse::<u32>().ok()),
            f.get(6),
        ) else {
            continue;
        };
        let human = (1000..60000).contains(&uid)
            && !shell.ends_with("nologin")
            && !shell.ends_with("false");
        if !human {
            continue;
        }
        for (g, what) in &gids {
            let (gname, members) = group_by_gid
                .get(g)
                .cloned()
                .unwrap_or((g.to_string(), Vec::new()));
            if gid == *g || members.iter().any(|m| m == name) {
                humans.insert(format!("{name} in {gname} ({what})"));
            }
        }
    }
    if gids.is_empty() {
        return check(
            "gpu-groups",
            Status::Skip,
            "no GPU device nodes or device groups",
        );
    }
    if humans.is_empty() {
        return check(
            "gpu-groups",
            Status::Pass,
            "no login users in the GPU device groups",
        );
    }
    let list: Vec<String> = humans.into_iter().collect();
    check(
        "gpu-groups",
        Status::Fail,
        format!("login users can use the GPU directly: {}", list.join("; ")),
    )
    .fix("gpasswd -d <user> <group> for each; people reach the model through the proxy")
}

/// Days before a certificate's end when doctor starts warning.
const CERT_WARN_DAYS: i64 = 30;

/// The proxy's server certificate and client CAs: expired fails, within
/// 30 days warns (None: no readable proxy config).
fn certificates(config: &Path) -> Option<Check> {
    let cfg = warden_proxy::config::load(config).ok()?;
    let now = (warden_runtime::clock::unix_ms() / 1000) as i64;
    let mut certs = warden_proxy::tls::expiries(&cfg.tls);
    certs.sort_by_key(|c| c.not_after);
    let first = certs.first()?;
    let days = (first.not_after - now).div_euclid(86_400);
    let what = format!(
        "{} certificate {} ({})",
        first.certificate, first.subject, first.path
    );
    let fix = "renew it and replace the file: the proxy reloads it on change";
    Some(if first.not_after <= now {
        check(
            "proxy-certs",
            Status::Fail,
            format!("{what} expired {} day(s) ago", -days),
        )
        .fix(fix)
    } else if days < CERT_WARN_DAYS {
        check(
            "proxy-certs",
            Status::Warn,
            format!("{what} expires in {days} day(s)"),
        )
        .fix(fix)
    } else {
        check(
            "proxy-certs",
            Status::Pass,
            format!(
                "{} certificate(s); the first to expire does so in {days} days",
                certs.len()
            ),
        )
    })
}

fn proxy(config: &Path) -> Check {
    if !config.exists() {
        return check(
            "proxy",
            Status::Fail,
            format!(
                "no proxy config at {}: no authenticated way to reach Ollama",
                config.display()
            ),
        )
        .fix("configure and start `warden proxy` (docs/PROXY.md; systemctl enable --now ollama-warden-proxy)");
    }
    let cfg = match warden_proxy::config::load(config) {
        Ok(c) => c,
        Err(d) => {
            let first = d.first().map(|d| d.to_string()).unwrap_or_default();
            return check(
                "proxy",
                Status::Fail,
                format!("invalid proxy config: {first}"),
            )
            .fix(format!(
                "warden proxy --config {} --check",
                config.display()
            ));
        }
    };
    let ip = match cfg.listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, cfg.listen.port());
    let base = format!("https://{addr}");
    let tags = https::status("GET", addr, "/api/tags");
    match tags {
        None => {
            return check(
                "proxy",
                Status::Fail,
                format!("nothing answers at {base} (config {})", config.display()),
            )
            .fix("start the proxy: systemctl enable --now ollama-warden-proxy");
        }
        Some(401) => {}
        Some(code) => {
            return check(
                "proxy",
                Status::Fail,
                format!("GET {base}/api/tags without credentials answered {code}, not 401"),
            )
            .fix("every [[identity]] needs credentials; check the config");
        }
    }
    let admin = [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
    ];
    let open: Vec<String> = admin
        .iter()
        .filter_map(|(m, p)| {
            let code = https::status(m, addr, p);
            (!matches!(code, Some(401 | 403))).then(|| format!("{m} {p}: {code:?}"))
        })
        .collect();
    if !open.is_empty() {
        return check(
            "proxy",
            Status::Fail,
            format!("admin routes not refused: {}", open.join(", ")),
        );
    }
    check(
        "proxy",
        Status::Pass,
        format!("{base} answers 401 without credentials and refuses admin routes"),
    )
}

fn enforcement(report: &StatusReport, port: u16) -> Check {
    if let Some(why) = &report.pin_dir_problem {
        return check("warden", Status::Fail, why.clone())
            .fix("warden down, remove the directory, then start warden (it creates it 0700)");
    }
    if !report.missing_links.is_empty() {
        return check(
            "warden",
            Status::Fail,
            format!("programs not pinned: {}", report.missing_links.join(", ")),
        )
        .fix("systemctl restart ollama-warden (it attaches what is missing)");
    }
    if !report.enforcing {
        return check(
            "warden",
            Status::Fail,
            "no warden enforcement is attached: any local process can reach Ollama",
        )
        .fix("systemctl enable --now ollama-warden");
    }
    let backend = report.backend.as_str();
    let ports = report
        .policy
        .as_ref()
        .map(|p| p.ports.clone())
        .unwrap_or_default();
    if !ports.is_empty() && !ports.contains(&port) {
        return check(
            "warden",
            Status::Fail,
            format!("enforcing ({backend}), but port {port} is not protected (ports {ports:?})"),
        )
        .fix(format!("add {port} to [service] ports"));
    }
    if !report.daemon.running {
        return check(
            "warden",
            Status::Warn,
            format!("enforcement pinned ({backend}), but the daemon is not running: no events, no reloads"),
        )
        .fix("systemctl start ollama-warden");
    }
    let generation = report.generation.unwrap_or(0);
    match report
        .policy
        .as_ref()
        .filter(|p| p.mode != PolicyMode::Enforce)
    {
        Some(p) => check(
            "warden",
            Status::Warn,
            format!(
                "{backend} enforcement, generation {generation}, but these sections only audit: {}",
                p.audit.join(", ")
            ),
        )
        .fix("switch them to enforce once their would_deny events are understood"),
        None => check(
            "warden",
            Status::Pass,
            format!("{backend} enforcement attached and pinned, generation {generation}"),
        ),
    }
}

fn sinks(report: &StatusReport) -> Check {
    let Some(sinks) = report.events.as_ref().map(|e| &e.sinks) else {
        return check("event-sink", Status::Skip, "no running daemon to ask");
    };
    let mut problems = Vec::new();
    for s in sinks {
        let name = s.sink.as_str();
        if s.failed > 0 {
            problems.push(format!("{name}: {} events failed to write", s.failed));
        }
        if let Ok(spec) = name.parse::<warden_events::sink::SinkSpec>()
            && let warden_events::sink::Target::File { path, .. } = &spec.target
            && !writable(path)
        {
            problems.push(format!("{name}: {} is not writable", path.display()));
        }
    }
    if problems.is_empty() {
        let names: Vec<&str> = sinks.iter().map(|s| s.sink.as_str()).collect();
        return check(
            "event-sink",
            Status::Pass,
            format!("writing to {}", names.join(", ")),
        );
    }
    check("event-sink", Status::Fail, problems.join("; "))
        .fix("fix the sink (disk space, permissions, the receiver), then check `warden status`")
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let target = if path.exists() {
        path
    } else {
        path.parent().unwrap_or(Path::new("/"))
    };
    let Ok(c) = std::ffi::CString::new(target.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Prints the checks, one line each, with the fix under a failure.
pub fn print(checks: &[Check]) {
    for c in checks {
        let tag = match c.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        println!("{tag}  {:<12} {}", c.id, c.detail);
        if let Some(fix) = &c.fix
            && c.status != Status::Pass
        {
            println!("      {:<12} fix: {fix}", "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_untrusted_pin_directory_or_a_missing_pin_fails() {
        let running: StatusReport = serde_json::from_value(json!({
            "enforcing": true, "backend": "ebpf", "pin_dir": "/sys/fs/bpf/ollama-warden",
            "daemon": { "running": true, "pid": 1 }, "links": [], "bans": [], "generation": 1,
            "policy": { "ports": [11434], "mode": "enforce", "digest": "", "audit": [],
                        "sources": [], "unresolved_cgroups": [] },
        }))
        .unwrap();
        assert!(matches!(enforcement(&running, 11434).status, Status::Pass));
        let mut squatted = running.clone();
        squatted.pin_dir_problem =
            Some("/sys/fs/bpf/ollama-warden is owned by uid 65534, not 0".into());
        let c = enforcement(&squatted, 11434);
        assert!(
            matches!(c.status, Status::Fail) && c.detail.contains("uid 65534"),
            "{c:?}"
        );
        let mut unpinned = running;
        unpinned.missing_links = vec!["connect4".into()];
        let c = enforcement(&unpinned, 11434);
        assert!(
            matches!(c.status, Status::Fail) && c.detail.contains("connect4"),
            "{c:?}"
        );
    }
}
