//! The daemon's end of the proxy channel: a unix socket where `warden proxy`
//! reports its upstream sockets (JSON lines, see
//! [`super::correlate::ProxyReport`]).
//!
//! Only the proxy may report. A peer is accepted when the process that
//! connected (identified by a pidfd from `SO_PEERPIDFD`, so a recycled pid
//! cannot stand in for it) is alive and in the proxy's cgroup, and has the
//! proxy's uid when one is configured; the check is made on the accepting
//! thread, before anything is read. The join then only lets a report explain
//! a connection made by that same process (see [`super::correlate`]).
//!
//! Anyone may connect (mode 0666), so refusals are rate-limited: at most one
//! `proxy_rejected` event per second, carrying how many were refused. At most
//! [`MAX_SESSIONS`] accepted peers are served at once.

use super::correlate::ProxyReport;
use super::pipeline::ReportTx;
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest report line read; a longer one ends the session.
const MAX_LINE: u64 = 8192;
/// Accepted proxy sessions served at once (a proxy needs one).
pub const MAX_SESSIONS: usize = 4;
const REJECT_EVENT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// The proxy's cgroup, relative to the cgroup2 root (descendants included).
    pub cgroup: String,
    pub uid: Option<u32>,
}

#[derive(Debug)]
struct Peer {
    pid: u32,
    uid: u32,
    cgroup: String,
}

/// Binds the socket and serves it on a thread. The socket's directory must
/// not be writable by others (else anyone could replace the socket).
/// A ban the proxy asks for: a source that crossed its brute-force threshold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BanRequest {
    /// The source to ban.
    pub ban: std::net::IpAddr,
    pub seconds: u64,
    /// The proxy's port, which the source cannot reach either while banned.
    pub port: u16,
    pub failures: u32,
    pub window_seconds: u64,
    /// The identity the failed credentials named, if any.
    #[serde(default)]
    pub identity: Option<String>,
}

/// One line on the proxy socket: a ban request, or an upstream connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum ProxyMessage {
    Ban(BanRequest),
    Report(ProxyReport),
    Audit(AuditLine),
    Certificates(Certificates),
}

/// The proxy's certificates and when each expires (sent at start, on
/// reload and every few minutes), for `warden status`, metrics and the
/// daemon's `certificate_expiring` events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Certificates {
    pub certificates: Vec<CertificateInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertificateInfo {
    /// `server` or `client_ca`.
    pub certificate: String,
    pub path: String,
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// What the daemon's loop gets from the proxy, with the sender's pid.
#[derive(Debug)]
pub enum FromProxy {
    Ban(BanRequest),
    Certificates(Vec<CertificateInfo>),
}

/// One of the proxy's audit records (OCSF HTTP Activity or Detection
/// Finding), for the daemon's live view only: the proxy's own audit sinks
/// are where they are kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditLine {
    pub audit: serde_json::Value,
}

/// Where accepted ban requests go (the daemon's loop), with the sender's pid.
pub type BanTx = tokio::sync::mpsc::UnboundedSender<(FromProxy, u32)>;

pub fn listen(opts: Options, reports: ReportTx, bans: BanTx) -> std::io::Result<()> {
    let dir = opts.socket.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{}: the proxy socket's directory is writable by others (mode {:o})",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    let _ = std::fs::remove_file(&opts.socket);
    // The mode comes from the umask at bind: no window where a chmod by path
    // could be redirected.
    // SAFETY: umask has no memory arguments; restored right after bind.
    let old = unsafe { libc::umask(0o111) };
    let bound = UnixListener::bind(&opts.socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::thread::Builder::new()
        .name("warden-reports".into())
        .spawn(move || accept_loop(listener, &opts, &reports, &bans))?;
    Ok(())
}

fn accept_loop(listener: UnixListener, opts: &Options, reports: &ReportTx, bans: &BanTx) {
    let sessions = Arc::new(AtomicUsize::new(0));
    let mut rejected = 0u64;
    let mut last_event: Option<Instant> = None;
    let mut last_reason = json!(null);
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors or similar: do not spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let verdict = check(&stream, opts).and_then(|peer| {
            if sessions.load(Ordering::Acquire) >= MAX_SESSIONS {
                Err(json!({ "peer": peer_json(&peer), "reason": "too many sessions" }))
            } else {
                Ok(peer)
            }
        });
        match verdict {
            Ok(peer) => {
                sessions.fetch_add(1, Ordering::AcqRel);
                let (reports, count, bans) = (reports.clone(), sessions.clone(), bans.clone());
                let spawned = std::thread::Builder::new()
                    .name("warden-report".into())
                    .spawn(move || {
                        serve(stream, &peer, &reports, &bans);
                        count.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    sessions.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Err(reason) => {
                rejected += 1;
                last_reason = reason;
                if last_event.is_none_or(|t| t.elapsed() >= REJECT_EVENT_EVERY) {
                    let mut fields = last_reason.clone();
                    fields["rejected"] = rejected.into();
                    reports.lifecycle("proxy_rejected", fields);
                    rejected = 0;
                    last_event = Some(Instant::now());
                }
            }
        }
    }
}

fn peer_json(p: &Peer) -> serde_json::Value {
    json!({ "pid": p.pid, "uid": p.uid, "cgroup": p.cgroup })
}

/// Who is on the other end, if they may report.
fn check(stream: &UnixStream, opts: &Options) -> Result<Peer, serde_json::Value> {
    let refuse = |peer: serde_json::Value, reason: &str| json!({ "peer": peer, "reason": reason });
    let (pid, uid) = peer_cred(stream).ok_or_else(|| refuse(json!(null), "no credentials"))?;
    let pidfd = peer_pidfd(stream);
    // With a pidfd, the pid must still be the same process after the cgroup
    // is read; without one (old kernels), the pid is trusted as it is.
    let alive =
        |pidfd: &Option<OwnedFd>| pidfd.as_ref().is_none_or(|fd| pidfd_pid(fd) == Some(pid));
    if !alive(&pidfd) {
        return Err(refuse(json!({ "pid": pid, "uid": uid }), "peer exited"));
    }
    let cgroup = process_cgroup(pid).unwrap_or_default();
    if !alive(&pidfd) {
        return Err(refuse(json!({ "pid": pid, "uid": uid }), "peer exited"));
    }
    let peer = Peer { pid, uid, cgroup };
    let in_cgroup =
        peer.cgroup == opts.cgroup || peer.cgroup.starts_with(&format!("{}/", opts.cgroup));
    if !in_cgroup {
        return Err(refuse(peer_json(&peer), "cgroup"));
    }
    if opts.uid.is_some_and(|u| u != uid) {
        return Err(refuse(peer_json(&peer), "uid"));
    }
    Ok(peer)
}

fn serve(stream: UnixStream, peer: &Peer, reports: &ReportTx, bans: &BanTx) {
    let who = peer_json(peer);
    reports.lifecycle("proxy_connected", json!({ "peer": who }));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if !line.ends_with('\n') => break,
            Ok(_) => match serde_json::from_str::<ProxyMessage>(&line) {
                Ok(ProxyMessage::Report(r)) => reports.send(r, peer.pid),
                Ok(ProxyMessage::Ban(b)) => {
                    let _ = bans.send((FromProxy::Ban(b), peer.pid));
                }
                Ok(ProxyMessage::Certificates(c)) => {
                    let _ = bans.send((FromProxy::Certificates(c.certificates), peer.pid));
                }
                Ok(ProxyMessage::Audit(a)) => reports.audit(a.audit),
                Err(_) => {
                    reports.lifecycle(
                        "proxy_rejected",
                        json!({ "peer": who, "reason": "malformed report", "rejected": 1 }),
                    );
                    break;
                }
            },
            Err(_) => break,
        }
    }
    reports.lifecycle("proxy_disconnected", json!({ "peer": who }));
}

fn getsockopt<T>(s: &UnixStream, opt: libc::c_int, out: &mut T) -> bool {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: valid fd; `out` is a writable T of `len` bytes.
    unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (out as *mut T).cast(),
            &mut len,
        ) == 0
    }
}

/// The (pid, uid) of the process at the other end of `s`.
pub fn peer_cred(s: &UnixStream) -> Option<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    (getsockopt(s, libc::SO_PEERCRED, &mut cred) && cred.pid > 0)
        .then_some((cred.pid as u32, cred.uid))
}

/// A pidfd for the process that connected (Linux 6.5+).
fn peer_pidfd(s: &UnixStream) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    // SAFETY: a fresh descriptor the kernel gave us.
    (getsockopt(s, SO_PEERPIDFD, &mut fd) && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid a pidfd refers to now (`None` once the process is gone).
fn pidfd_pid(fd: &OwnedFd) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let pid: i64 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    u32::try_from(pid).ok().filter(|p| *p > 0)
}

/// A process's cgroup2 path, relative to the cgroup2 root (no leading `/`).
/// The process's cgroup relative to the cgroup2 root, also when this daemon
/// runs in a cgroup namespace of its own (then `/proc/PID/cgroup` is relative to it).
fn process_cgroup(pid: u32) -> Option<String> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("cgroup")).ok()?;
    let seen = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    warden_runtime::cgroupfs::from_namespace(seen)
}
