//! The resolver that the DNS traffic of cgroups with host rules is steered to
//! (by the kernel programs, whatever resolver they named).
//!
//! A question for a name no host rule allows is refused (REFUSED, or
//! NXDOMAIN with `--dns-refuse nxdomain`) without being forwarded, and
//! reported. A question for an allowed name goes to the upstream resolvers;
//! before the answer is released, the addresses it gives for the name (its
//! CNAME chain included) are learned into the kernel's egress maps by the
//! event loop, so the client can connect as soon as it has its answer. If
//! they cannot be learned, the client gets SERVFAIL: an address is never
//! handed out that the policy would then refuse as unknown.
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] questions at a time (more are dropped and
//! counted), [`MAX_TCP`] TCP clients, and every upstream exchange times out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use warden_enforce::compile::Compiled;

/// Questions answered at once; more are dropped (and counted).
pub const MAX_IN_FLIGHT: usize = 256;
/// TCP clients at once.
pub const MAX_TCP: usize = 64;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How a name no rule allows is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Refusal {
    #[default]
    Refused,
    Nxdomain,
}

#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// Port on 127.0.0.1 and ::1; 0 = no resolver (host rules allow nothing).
    pub port: u16,
    /// Where allowed questions go; empty = the nameservers of /etc/resolv.conf.
    pub upstreams: Vec<SocketAddr>,
    /// Added to every answer's TTL before its addresses stop being allowed.
    pub grace: Duration,
    pub refuse: Refusal,
}

/// What the resolver asks of the event loop.
pub enum Ask {
    /// Allow these (address, TTL) answers for `name`; `done` says whether they are.
    Learn {
        name: String,
        answers: Vec<(IpAddr, u32)>,
        done: oneshot::Sender<bool>,
    },
    /// A question for a name no rule allows (answered anyway when `audit`).
    Refused {
        name: String,
        qtype: String,
        peer: SocketAddr,
        tcp: bool,
        audit: bool,
    },
}

/// The resolver's bound sockets (bound before enforcement starts, so the
/// kernel steers to a port that is really ours).
pub struct Listeners {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    pub port: u16,
}

/// Binds `127.0.0.1:port` (required) and `[::1]:port` (when the host has IPv6).
pub fn bind(port: u16) -> std::io::Result<Listeners> {
    let mut l = Listeners {
        udp: Vec::new(),
        tcp: Vec::new(),
        port,
    };
    for (ip, required) in [
        (IpAddr::V4(Ipv4Addr::LOCALHOST), true),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), false),
    ] {
        let addr = SocketAddr::new(ip, port);
        let bound = std::net::UdpSocket::bind(addr)
            .and_then(|u| Ok((u, std::net::TcpListener::bind(addr)?)));
        match bound {
            Ok((u, t)) => {
                u.set_nonblocking(true)?;
                t.set_nonblocking(true)?;
                l.udp.push(u);
                l.tcp.push(t);
            }
            Err(e) if required => return Err(e),
            Err(e) => tracing::debug!("resolver on {addr}: {e}"),
        }
    }
    Ok(l)
}

/// Counters of the resolver, for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub answered: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// What the resolver did since the daemon started (state file, status, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsStats {
    /// Questions answered (allowed names, forwarded upstream).
    pub answered: u64,
    /// Questions for names no host rule allows.
    pub refused: u64,
    /// Answered SERVFAIL: no upstream answer, or the addresses not learned.
    pub failed: u64,
    /// Not answered: more questions in flight than the resolver takes.
    pub dropped: u64,
    /// (name, address) pairs allowed now.
    pub learned: u64,
}

impl Counters {
    pub fn snapshot(&self, learned: u64) -> DnsStats {
        DnsStats {
            answered: self.answered.load(Relaxed),
            refused: self.refused.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            learned,
        }
    }
}

struct Ctx {
    policy: watch::Receiver<Arc<Compiled>>,
    ask: mpsc::Sender<Ask>,
    upstreams: Vec<SocketAddr>,
    refuse: Refusal,
    slots: Semaphore,
    counters: Arc<Counters>,
}

/// Serves questions on `l` until the runtime stops.
pub fn spawn(
    l: Listeners,
    opts: &DnsOptions,
    policy: watch::Receiver<Arc<Compiled>>,
    ask: mpsc::Sender<Ask>,
) -> std::io::Result<Arc<Counters>> {
    let upstreams = if opts.upstreams.is_empty() {
        resolv_conf_nameservers()
    } else {
        opts.upstreams.clone()
    };
    if upstreams.is_empty() {
        tracing::warn!(
            "no upstream resolver (none given, none in /etc/resolv.conf): allowed names will fail"
        );
    }
    let counters = Arc::new(Counters::default());
    let ctx = Arc::new(Ctx {
        policy,
        ask,
        upstreams,
        refuse: opts.refuse,
        slots: Semaphore::new(MAX_IN_FLIGHT),
        counters: counters.clone(),
    });
    for u in l.udp {
        tokio::spawn(serve_udp(Arc::new(UdpSocket::from_std(u)?), ctx.clone()));
    }
    for t in l.tcp {
        tokio::spawn(serve_tcp(TcpListener::from_std(t)?, ctx.clone()));
    }
    Ok(counters)
}

async fn serve_udp(sock: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(permit) = ctx.slots.try_acquire() else {
            ctx.counters.dropped.fetch_add(1, Relaxed);
            continue;
        };
        permit.forget();
        let (query, sock, ctx) = (buf[..n].to_vec(), sock.clone(), ctx.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&query, peer, false, &ctx).await {
                let _ = sock.send_to(&reply, peer).await;
            }
            ctx.slots.add_permits(1);
        });
    }
}

async fn serve_tcp(listener: TcpListener, ctx: Arc<Ctx>) {
    let clients = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            ctx.counters.dropped.fetch_add(1, Relaxed);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TCP_IDLE * 6, serve_stream(stream, peer, &ctx)).await;
            drop(permit);
        });
    }
}

/// Length-prefixed questions on one connection, answered in order.
async fn serve_stream(mut s: TcpStream, peer: SocketAddr, ctx: &Ctx) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut query))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let Some(reply) = answer(&query, peer, true, ctx).await else {
            return Ok(());
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        s.write_all(&[&n.to_be_bytes()[..], &reply].concat())
            .await?;
    }
}

/// The reply to one question (None: not a question; nothing is sent).
async fn answer(query: &[u8], peer: SocketAddr, tcp: bool, ctx: &Ctx) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let Some(q) = msg.queries.first() else {
        return reply(&msg, ResponseCode::FormErr);
    };
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let policy = ctx.policy.borrow().clone();
    let allowed = policy.allows_name(&name);
    if !allowed {
        let audit = policy.audits_hosts();
        ctx.counters.refused.fetch_add(1, Relaxed);
        let qtype = q.query_type().to_string();
        let refused = Ask::Refused {
            name: name.clone(),
            qtype,
            peer,
            tcp,
            audit,
        };
        let _ = ctx.ask.send(refused).await;
        if !audit {
            return reply(
                &msg,
                match ctx.refuse {
                    Refusal::Refused => ResponseCode::Refused,
                    Refusal::Nxdomain => ResponseCode::NXDomain,
                },
            );
        }
    }
    let Some(upstream) = forward(query, msg.metadata.id, tcp, &ctx.upstreams).await else {
        ctx.counters.failed.fetch_add(1, Relaxed);
        return reply(&msg, ResponseCode::ServFail);
    };
    if allowed {
        let Ok(resp) = Message::from_vec(&upstream) else {
            ctx.counters.failed.fetch_add(1, Relaxed);
            return reply(&msg, ResponseCode::ServFail);
        };
        let answers = addresses(&resp, &name);
        if !answers.is_empty() {
            let (done, learned) = oneshot::channel();
            let learn = Ask::Learn {
                name,
                answers,
                done,
            };
            if ctx.ask.send(learn).await.is_err() || !learned.await.unwrap_or(false) {
                ctx.counters.failed.fetch_add(1, Relaxed);
                return reply(&msg, ResponseCode::ServFail);
            }
        }
    }
    ctx.counters.answered.fetch_add(1, Relaxed);
    Some(upstream)
}

/// An empty reply to `msg` with `code`.
fn reply(msg: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut r = Message::error_msg(msg.metadata.id, msg.metadata.op_code, code);
    r.metadata.recursion_desired = msg.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(msg.queries.iter().cloned());
    r.to_vec().ok()
}

/// The first upstream's answer to `query` (the same transport the client used).
async fn forward(query: &[u8], id: u16, tcp: bool, upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for &up in upstreams {
        let exchange = async {
            if tcp {
                exchange_tcp(query, up).await
            } else {
                exchange_udp(query, id, up).await
            }
        };
        if let Ok(Ok(r)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(r);
        }
    }
    None
}

async fn exchange_udp(query: &[u8], id: u16, up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if up.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A fresh socket (random port) per question, connected: only the upstream's
    // datagrams are read, and only the one with the question's id is taken.
    let sock = UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(query: &[u8], up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    s.write_all(&[&len.to_be_bytes()[..], query].concat())
        .await?;
    let mut n = [0u8; 2];
    s.read_exact(&mut n).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(n) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The A and AAAA answers for `name`, following its CNAME chain within the
/// answer section, with their TTLs.
pub fn addresses(resp: &Message, name: &str) -> Vec<(IpAddr, u32)> {
    let norm =
        |n: &hickory_proto::rr::Name| n.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let mut names = vec![name.to_owned()];
    // A chain is at most as long as the answer section.
    for _ in 0..resp.answers.len() {
        let before = names.len();
        for r in &resp.answers {
            if let RData::CNAME(target) = &r.data {
                let target = norm(&target.0);
                if names.contains(&norm(&r.name)) && !names.contains(&target) {
                    names.push(target);
                }
            }
        }
        if names.len() == before {
            break;
        }
    }
    resp.answers
        .iter()
        .filter(|r| names.contains(&norm(&r.name)))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect()
}

/// The `nameserver` lines of /etc/resolv.conf, on port 53.
fn resolv_conf_nameservers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, Record, rdata};

    #[test]
    fn addresses_follow_the_cname_chain_and_nothing_else() {
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.add_answer(Record::from_rdata(
            n("registry.ollama.ai."),
            300,
            RData::CNAME(rdata::CNAME(n("edge.cdn.example."))),
        ));
        m.add_answer(Record::from_rdata(
            n("Edge.CDN.example."),
            60,
            RData::A(rdata::A(Ipv4Addr::new(104, 18, 0, 1))),
        ));
        m.add_answer(Record::from_rdata(
            n("edge.cdn.example."),
            30,
            RData::AAAA(rdata::AAAA("2606:4700::1".parse().unwrap())),
        ));
        m.add_answer(Record::from_rdata(
            n("evil.example."),
            60,
            RData::A(rdata::A(Ipv4Addr::new(6, 6, 6, 6))),
        ));
        let got = addresses(&m, "registry.ollama.ai");
        assert_eq!(
            got,
            [
                ("104.18.0.1".parse().unwrap(), 60),
                ("2606:4700::1".parse().unwrap(), 30)
            ],
            "records of names outside the chain are not learned"
        );
    }
}
