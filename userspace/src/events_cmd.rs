//! `warden events`: the running daemon's decisions, live, as one readable
//! line each (`compact`, the default on a terminal) or as JSON lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use warden_daemon::live::{Format, Request, SOCKET};
use warden_daemon::state::DaemonState;
use warden_events::compact::{self, Style};
use warden_events::live::{Filter, LIVE_MARKER};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing decisions as they happen (without it: the recent ones, then exit).
    #[arg(long, short)]
    follow: bool,
    /// Start this long ago (e.g. 30s, 10m, 2h; the daemon keeps the last 4096
    /// events). Default: all it keeps, or none with --follow.
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// compact (one line each; the default on a terminal), json (warden's own
    /// record; the default when piped), ocsf, ecs.
    #[arg(long, value_enum)]
    format: Option<ViewFormat>,
    /// Only decisions matching every KEY=VALUE: verdict (allow, deny,
    /// would_deny), hook, reason, cgroup (path contains, or unit), identity.
    /// Comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE")]
    filter: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ViewFormat {
    Compact,
    Json,
    Ocsf,
    Ecs,
}

pub fn run(args: EventsArgs, run_dir: &Path) -> i32 {
    match follow(args, run_dir) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("warden events: {e}");
            1
        }
    }
}

fn follow(args: EventsArgs, run_dir: &Path) -> std::io::Result<()> {
    let view = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        ViewFormat::Compact
    } else {
        ViewFormat::Json
    });
    let filter = filter(&args.filter).map_err(std::io::Error::other)?;
    let since_ms = match (&args.since, args.follow) {
        (Some(d), _) => {
            let d = warden_runtime::units::parse_duration(d).map_err(std::io::Error::other)?;
            Some(warden_runtime::clock::unix_ms().saturating_sub(d.as_millis() as u64))
        }
        (None, false) => Some(0),
        (None, true) => None,
    };
    let req = Request {
        format: match view {
            ViewFormat::Compact | ViewFormat::Ocsf => Format::Ocsf,
            ViewFormat::Json => Format::Raw,
            ViewFormat::Ecs => Format::Ecs,
        },
        since_ms,
        filter,
    };
    let path = run_dir.join(SOCKET);
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("no running daemon to follow ({}: {e})", path.display()),
        )
    })?;
    writeln!(conn, "{}", serde_json::to_string(&req)?)?;
    let style = if std::io::stdout().is_terminal() {
        Style::Ansi
    } else {
        Style::Plain
    };
    let mut origins = rule_origins(run_dir);
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(conn).lines() {
        let line = line?;
        if line == LIVE_MARKER {
            if !args.follow {
                return Ok(());
            }
            continue;
        }
        if view != ViewFormat::Compact {
            writeln!(out, "{line}")?;
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(e) = v["error"].as_str() {
            return Err(std::io::Error::other(format!("the daemon refused: {e}")));
        }
        if v["unmapped"]["warden"]["event"] == "policy_applied" {
            origins = rule_origins(run_dir);
        }
        let origin = |id: u64| origins.get(&id).cloned();
        writeln!(out, "{}", compact::line(&v, &origin, style))?;
        out.flush()?;
    }
    Ok(())
}

/// Rule id → file:line:col of the policy in force (the daemon's state file).
fn rule_origins(run_dir: &Path) -> HashMap<u64, String> {
    DaemonState::read(run_dir)
        .map(|s| {
            s.rules
                .into_iter()
                .map(|r| (u64::from(r.id), r.origin))
                .collect()
        })
        .unwrap_or_default()
}

fn filter(pairs: &[String]) -> Result<Filter, String> {
    let mut f = Filter::default();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}`: a filter is KEY=VALUE"))?;
        let slot = match k {
            "verdict" => &mut f.verdict,
            "hook" => &mut f.hook,
            "reason" => &mut f.reason,
            "cgroup" => &mut f.cgroup,
            "identity" => &mut f.identity,
            other => {
                return Err(format!(
                    "unknown filter key `{other}` (verdict, hook, reason, cgroup, identity)"
                ));
            }
        };
        *slot = Some(v.to_owned());
    }
    Ok(f)
}
