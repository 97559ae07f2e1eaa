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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::net::TcpSocket;
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

/// Opens the upstream socket, calls `on_socket` with its cookie and local
/// address *before* connecting (so the daemon has the report by the time the
/// kernel reports the connect, however long the handshake takes), connects,
/// sends the request and waits for the response head (at most `timeout` after
/// the request is sent, when given).
///
/// The socket is bound first so its port is known: to the loopback address for
/// a loopback upstream (the address the kernel would pick), else to the
/// unspecified address (the report then carries only the port).
pub async fn send(
    addr: SocketAddr,
    req: hyper::Request<ReqBody>,
    timeout: Option<Duration>,
    on_socket: impl FnOnce(&UpstreamConn),
) -> Result<Sent, UpstreamError> {
    let (socket, bind_ip): (TcpSocket, IpAddr) = match addr.ip() {
        IpAddr::V4(ip) => (
            TcpSocket::new_v4().map_err(UpstreamError::Connect)?,
            if ip.is_loopback() {
                ip.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            },
        ),
        IpAddr::V6(ip) => (
            TcpSocket::new_v6().map_err(UpstreamError::Connect)?,
            if ip.is_loopback() {
                ip.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            },
        ),
    };
    socket
        .bind(SocketAddr::new(bind_ip, 0))
        .map_err(UpstreamError::Connect)?;
    let _ = socket.set_nodelay(true);
    let conn = UpstreamConn {
        addr,
        local: socket.local_addr().map_err(UpstreamError::Connect)?,
        cookie: socket_cookie(&socket),
    };
    on_socket(&conn);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(UpstreamError::Connect)?;
    let conn = UpstreamConn {
        local: stream.local_addr().unwrap_or(conn.local),
        ..conn
    };
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
