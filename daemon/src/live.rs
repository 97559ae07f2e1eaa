//! The subscription socket `warden events` reads from (`<run-dir>/events.sock`):
//! root only (mode 0600, and the peer's uid checked), at most
//! [`MAX_SUBSCRIBERS`] at once. A client sends one JSON line
//! (`{"format": "ocsf", "since_ms": 0, "filter": {...}}`) and then reads
//! events as JSON lines until it closes the connection. Subscribers never
//! slow the daemon: one that falls behind is dropped by the encoder thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_events::EventFormat;
use warden_events::live::Filter;
use warden_events::pipeline::Subscriptions;

/// The socket's name in the run directory.
pub const SOCKET: &str = "events.sock";
/// Subscribers at once; more are refused.
pub const MAX_SUBSCRIBERS: usize = 16;

/// What a subscriber asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub format: Format,
    #[serde(default)]
    pub since_ms: Option<u64>,
    #[serde(default)]
    pub filter: Filter,
}

/// The encodings a subscriber may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Ocsf,
    Ecs,
    Raw,
}

impl From<Format> for EventFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Ocsf => EventFormat::Ocsf,
            Format::Ecs => EventFormat::Ecs,
            Format::Raw => EventFormat::Raw,
        }
    }
}

/// Listens on `run_dir/events.sock` in a thread of its own.
pub fn serve(run_dir: &Path, subs: Subscriptions) -> std::io::Result<()> {
    let path = run_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("warden-live".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if active.load(SeqCst) >= MAX_SUBSCRIBERS || !privileged(&conn) {
                    continue;
                }
                active.fetch_add(1, SeqCst);
                let (subs, active) = (subs.clone(), active.clone());
                let _ = std::thread::Builder::new()
                    .name("warden-subscriber".into())
                    .spawn(move || {
                        let _ = feed(conn, &subs);
                        active.fetch_sub(1, SeqCst);
                    });
            }
        })?;
    Ok(())
}

/// Root, or the daemon's own user.
fn privileged(conn: &UnixStream) -> bool {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    warden_events::reports::peer_cred(conn).is_some_and(|(_, uid)| uid == 0 || Some(uid) == own)
}

fn feed(conn: UnixStream, subs: &Subscriptions) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(conn.try_clone()?)
        .take(4096)
        .read_line(&mut line)?;
    let mut out = std::io::BufWriter::new(conn);
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            writeln!(out, "{}", serde_json::json!({ "error": e.to_string() }))?;
            return out.flush();
        }
    };
    let rx = subs.subscribe(req.format.into(), req.since_ms, req.filter);
    while let Ok(first) = rx.recv() {
        writeln!(out, "{first}")?;
        // Whatever else is queued goes in the same write.
        while let Ok(next) = rx.try_recv() {
            writeln!(out, "{next}")?;
        }
        out.flush()?;
    }
    Ok(())
}
