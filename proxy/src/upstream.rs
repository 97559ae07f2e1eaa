//! The upstream side: HTTP/1.1 connections to Ollama, kept per identity.
//!
//! A connection only ever carries one identity's requests. It is reported to
//! the daemon (cookie, local address, the identity and the request it was
//! opened for) while it connects, so the kernel's one connection event for it
//! joins that report one-to-one; every request's audit record names the
//! socket it rode (`socket_cookie`, `upstream_reused`). With
//! `upstream_keepalive = 0` every request gets a fresh connection, and so a
//! kernel event of its own. The connection's task is aborted when a response
//! body is dropped before its end, so a client that goes away closes the
//! upstream socket and Ollama cancels the generation; only connections whose
//! last response ended cleanly are reused.

use super::audit::UpstreamConn;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection older than this is closed instead of reused (Ollama
/// keeps idle connections open; this bounds what the pool holds).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub type ReqBody = BoxBody<Bytes, super::relay::BoxError>;

pub struct Sent {
    pub response: hyper::Response<Incoming>,
    pub conn: UpstreamConn,
    /// Stops the task that drives the connection: abort it to close the socket.
    pub task: AbortHandle,
}

/// A connection that may take another request of its identity.
struct Idle {
    sender: SendRequest<ReqBody>,
    conn: UpstreamConn,
    task: AbortHandle,
    since: Instant,
}

/// Upstream connections by worker thread and identity, each ready for reuse
/// once its last response ended. A connection is driven by a task on the
/// worker that opened it, so only that worker's requests reuse it: the two
/// never wake each other across threads.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<ThreadId, HashMap<String, Vec<Idle>>>>,
}

impl Pool {
    /// One of `identity`'s connections to `addr` that can take a request
    /// now, the most recently used first (it is the likeliest to be open,
    /// and the rest age out); an expired one found is dropped.
    fn checkout(&self, identity: &str, addr: SocketAddr) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle
            .get_mut(&std::thread::current().id())?
            .get_mut(identity)?;
        loop {
            let i = list.iter().rposition(|c| {
                c.conn.addr == addr && c.sender.is_ready() && !c.sender.is_closed()
            })?;
            let c = list.swap_remove(i);
            if c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c);
            }
        }
    }

    /// Keeps `c` for `identity`'s next requests (at most `max` each; one more
    /// is dropped, and closes once its response is done). The oldest kept
    /// connection goes if it closed or expired: one look per request keeps
    /// the list clean without walking it.
    fn checkin(&self, identity: &str, c: Idle, max: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let worker = idle.entry(std::thread::current().id()).or_default();
        if !worker.contains_key(identity) {
            worker.insert(identity.to_owned(), Vec::new());
        }
        let Some(list) = worker.get_mut(identity) else {
            return;
        };
        if list
            .first()
            .is_some_and(|o| o.sender.is_closed() || o.since.elapsed() >= IDLE_TIMEOUT)
        {
            list.remove(0);
        }
        if list.len() < max {
            list.push(c);
        }
    }
}

/// Where a request goes and whose connections it may use.
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub identity: &'a str,
    pub pool: &'a Pool,
    /// Idle connections kept per identity (0: none, a fresh one per request).
    pub keepalive: usize,
}

#[derive(Debug)]
pub enum UpstreamError {
    Connect(std::io::Error),
    Timeout,
    Http(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "upstream unreachable: {e}"),
            Self::Timeout => f.write_str("upstream timed out"),
            Self::Http(e) => write!(f, "upstream failed: {e}"),
        }
    }
}

/// SO_COOKIE: the kernel's 64-bit id of a socket, the same one BPF programs see.
pub fn socket_cookie(fd: &impl AsRawFd) -> u64 {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 { cookie } else { 0 }
}

/// Sends `req` over one of the identity's idle connections, or over a new
/// one (reported through `on_socket` while it connects), and waits for the
/// response head (at most `timeout` after the request is sent, when given).
/// A reused connection that turns out closed before the request went out is
/// replaced; one that fails after is not retried (the request may have run).
pub async fn send(
    to: Target<'_>,
    mut req: hyper::Request<ReqBody>,
    timeout: Option<Duration>,
    on_socket: impl FnOnce(&UpstreamConn),
) -> Result<Sent, UpstreamError> {
    if to.keepalive > 0 {
        while let Some(mut c) = to.pool.checkout(to.identity, to.addr) {
            let sent = with_timeout(timeout, c.sender.try_send_request(req)).await;
            match sent {
                Ok(Ok(response)) => {
                    let conn = UpstreamConn {
                        reused: true,
                        ..c.conn
                    };
                    let task = c.task.clone();
                    to.pool.checkin(to.identity, c, to.keepalive);
                    return Ok(Sent {
                        response,
                        conn,
                        task,
                    });
                }
                // Closed before the request went out: the next one, or a new one.
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        c.task.abort();
                        return Err(UpstreamError::Http(e.into_error()));
                    }
                },
                Err(_) => {
                    c.task.abort();
                    return Err(UpstreamError::Timeout);
                }
            }
        }
    }
    let (mut sender, conn, task) = connect(to.addr, on_socket).await?;
    match with_timeout(timeout, sender.send_request(req)).await {
        Ok(Ok(response)) => {
            if to.keepalive > 0 {
                let idle = Idle {
                    sender,
                    conn,
                    task: task.clone(),
                    since: Instant::now(),
                };
                to.pool.checkin(to.identity, idle, to.keepalive);
            }
            Ok(Sent {
                response,
                conn,
                task,
            })
        }
        Ok(Err(e)) => {
            task.abort();
            Err(UpstreamError::Http(e))
        }
        Err(_) => {
            task.abort();
            Err(UpstreamError::Timeout)
        }
    }
}

async fn with_timeout<F: std::future::Future>(
    timeout: Option<Duration>,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match timeout {
        Some(t) => tokio::time::timeout(t, f).await,
        None => Ok(f.await),
    }
}

/// Opens the upstream socket, starts the connect, calls `on_socket` with its
/// cookie and local address while the handshake is still under way (so the
/// daemon has the report by the time the kernel's connect event needs it,
/// however long the handshake takes), and finishes the connect.
///
/// The kernel picks the local address and port in the connect call itself, the
/// way a plain connect does: binding first to learn the port would search the
/// port space on every request and, with thousands of TIME_WAIT sockets from
/// earlier requests, slow each connect down to tens of milliseconds.
async fn connect(
    addr: SocketAddr,
    on_socket: impl FnOnce(&UpstreamConn),
) -> Result<(SendRequest<ReqBody>, UpstreamConn, AbortHandle), UpstreamError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(UpstreamError::Connect)?;
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(UpstreamError::Connect(e)),
    }
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| UpstreamError::Connect(std::io::Error::other("no local address")))?;
    let conn = UpstreamConn {
        addr,
        local,
        cookie: socket_cookie(&socket),
        reused: false,
    };
    on_socket(&conn);
    let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(socket))
        .map_err(UpstreamError::Connect)?;
    tokio::time::timeout(CONNECT_TIMEOUT, stream.writable())
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(UpstreamError::Connect)?;
    if let Some(e) = stream.take_error().map_err(UpstreamError::Connect)? {
        return Err(UpstreamError::Connect(e));
    }
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, conn, task.abort_handle()))
}
