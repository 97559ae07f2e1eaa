//! The upstream side: one fresh HTTP/1.1 connection to Ollama per request.
//!
//! A connection per request makes each request one kernel connection event, so
//! the socket cookie in the audit record names exactly one request. Loopback
//! connects cost tens of microseconds, small next to a generation. The
//! connection's task is aborted when the response body is dropped, so a client
//! that goes away closes the upstream socket and Ollama cancels the generation.

use super::audit::UpstreamConn;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::task::JoinHandle;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub type ReqBody = BoxBody<Bytes, super::relay::BoxError>;

pub struct Sent {
    pub response: hyper::Response<Incoming>,
    pub conn: UpstreamConn,
    /// Drives the connection; abort it to close the socket.
    pub task: JoinHandle<()>,
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

/// Opens the upstream socket, starts the connect, calls `on_socket` with its
/// cookie and local address while the handshake is still under way (so the
/// daemon has the report by the time the kernel's connect event needs it,
/// however long the handshake takes), finishes the connect, sends the request
/// and waits for the response head (at most `timeout` after the request is
/// sent, when given).
///
/// The kernel picks the local address and port in the connect call itself, the
/// way a plain connect does: binding first to learn the port would search the
/// port space on every request and, with thousands of TIME_WAIT sockets from
/// earlier requests, slow each connect down to tens of milliseconds.
pub async fn send(
    addr: SocketAddr,
    req: hyper::Request<ReqBody>,
    timeout: Option<Duration>,
    on_socket: impl FnOnce(&UpstreamConn),
) -> Result<Sent, UpstreamError> {
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
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = async {
        match timeout {
            Some(t) => tokio::time::timeout(t, sender.send_request(req)).await,
            None => Ok(sender.send_request(req).await),
        }
    };
    match response.await {
        Ok(Ok(response)) => Ok(Sent {
            response,
            conn,
            task,
        }),
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
