//! The daemon's end of the proxy channel: a unix socket where `warden proxy`
//! reports its upstream connections (JSON lines, see
//! [`super::correlate::ProxyReport`]).
//!
//! Only the proxy may report: a peer is accepted when its credentials
//! (`SO_PEERCRED`) show a process in the proxy's cgroup (and, when configured,
//! the proxy's uid). Anyone else is refused and the refusal is an event. A
//! report also only ever explains a connection its own process made (checked
//! at the join), so even an accepted peer cannot vouch for somebody else's.

use super::correlate::ProxyReport;
use super::pipeline::ReportTx;
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest report line read; a longer one ends the connection.
const MAX_LINE: u64 = 8192;

#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// The proxy's cgroup, relative to the cgroup2 root (descendants included).
    pub cgroup: String,
    pub uid: Option<u32>,
}

/// Binds the socket (replacing a stale one) and serves it on a thread.
pub fn listen(opts: Options, reports: ReportTx) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&opts.socket);
    if let Some(dir) = opts.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(&opts.socket)?;
    // Anyone may connect; the peer check decides who may report.
    std::fs::set_permissions(&opts.socket, std::fs::Permissions::from_mode(0o666))?;
    std::thread::Builder::new()
        .name("warden-reports".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let (opts, reports) = (opts.clone(), reports.clone());
                let _ = std::thread::Builder::new()
                    .name("warden-report".into())
                    .spawn(move || serve(stream, &opts, &reports));
            }
        })?;
    Ok(())
}

fn serve(stream: UnixStream, opts: &Options, reports: &ReportTx) {
    let notify = |kind: &str, fields| reports.lifecycle(kind, fields);
    let Some((pid, uid)) = peer(&stream) else {
        return;
    };
    let cgroup = process_cgroup(pid).unwrap_or_default();
    let who = json!({ "pid": pid, "uid": uid, "cgroup": cgroup });
    let in_cgroup = cgroup == opts.cgroup || cgroup.starts_with(&format!("{}/", opts.cgroup));
    if !in_cgroup || opts.uid.is_some_and(|u| u != uid) {
        notify(
            "proxy_rejected",
            json!({ "peer": who, "reason": if in_cgroup { "uid" } else { "cgroup" } }),
        );
        return;
    }
    notify("proxy_connected", json!({ "peer": who }));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if !line.ends_with('\n') => break,
            Ok(_) => match serde_json::from_str::<ProxyReport>(&line) {
                Ok(r) => reports.send(r, pid),
                Err(_) => {
                    notify(
                        "proxy_rejected",
                        json!({ "peer": who, "reason": "malformed report" }),
                    );
                    break;
                }
            },
            Err(_) => break,
        }
    }
    notify("proxy_disconnected", json!({ "peer": who }));
}

fn peer(s: &UnixStream) -> Option<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some((cred.pid as u32, cred.uid))
}

/// A process's cgroup2 path, relative to the cgroup2 root (no leading `/`).
fn process_cgroup(pid: u32) -> Option<String> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_owned())
}
