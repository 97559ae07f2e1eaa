//! The proxy's server: accept, TLS handshake (bounded), HTTP/1.1 or HTTP/2 by
//! ALPN, one task per connection; SIGHUP or a change to the config, certificate,
//! key or client-CA file reloads them (a bad reload is reported and the running
//! configuration stays); SIGTERM/SIGINT stop accepting and let requests in
//! flight finish for a few seconds.

use super::audit::Audit;
use super::config::{self, Config};
use super::handler::{self, Client, Runtime, Shared};
use super::identity::{Authenticator, certificate_names};
use super::tls;
use crate::watch::PolicyWatch;
use anyhow::{Context, Result};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

const DRAIN: Duration = Duration::from_secs(5);
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Connection-level counters, printed at exit.
#[derive(Default)]
struct Stats {
    refused_connections: AtomicU64,
    failed_handshakes: AtomicU64,
}

fn diagnostics(errs: Vec<warden_policy::Diagnostic>) -> anyhow::Error {
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("invalid proxy config:\n{}", text.join("\n"))
}

/// Validates a config file and its TLS files without serving.
pub fn check(path: &Path) -> Result<Config> {
    let cfg = config::load(path).map_err(diagnostics)?;
    tls::server_config(&cfg.tls)?;
    Ok(cfg)
}

fn watched(path: &Path, cfg: &Config) -> Vec<PathBuf> {
    let mut v = vec![path.to_owned(), cfg.tls.cert.clone(), cfg.tls.key.clone()];
    v.extend(cfg.tls.client_ca.clone());
    v
}

pub fn run(path: &Path) -> Result<()> {
    let cfg = check(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(serve(path, cfg))
}

async fn serve(path: &Path, cfg: Config) -> Result<()> {
    let tls_config = RwLock::new(tls::server_config(&cfg.tls)?);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let audit = Audit::start(&cfg.audit).context("audit sink")?;
    let slots = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let mut watch = PolicyWatch::new(&watched(path, &cfg)).context("watch config files")?;
    eprintln!(
        "warden proxy: listening on https://{} for {} ({} identities)",
        listener.local_addr()?,
        cfg.upstream.host,
        cfg.identities.len()
    );
    let shared = Arc::new(Shared::new(runtime(cfg), audit));
    let stats = Arc::new(Stats::default());
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let acceptor = TlsAcceptor::from(tls_config.read().expect("not poisoned").clone());
                let (shared, stats) = (shared.clone(), stats.clone());
                tokio::spawn(async move {
                    connection(stream, peer, acceptor, shared, &stats).await;
                    drop(permit);
                });
            }
            _ = hup.recv() => reload(path, &shared, &tls_config, &mut watch, "SIGHUP"),
            _ = tick.tick() => {
                if watch.changed() {
                    reload(path, &shared, &tls_config, &mut watch, "file change");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    let max = shared.runtime().cfg.limits.max_connections;
    let drained = tokio::time::timeout(DRAIN, slots.acquire_many(max as u32))
        .await
        .is_ok();
    shared.audit.finish();
    let c = &shared.audit.counters;
    eprintln!(
        "warden proxy: stopped{}; audit records written {} dropped {} failed {}; connections refused {} failed handshakes {}",
        if drained {
            ""
        } else {
            " (requests still in flight were cut)"
        },
        c.written.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        stats.refused_connections.load(Ordering::Relaxed),
        stats.failed_handshakes.load(Ordering::Relaxed),
    );
    Ok(())
}

fn runtime(cfg: Config) -> Runtime {
    Runtime {
        auth: Authenticator::new(cfg.identities.clone()),
        cfg,
    }
}

/// Reloads identities, limits and TLS files. Where to listen, the upstream and
/// the audit sinks need a restart; a change to them is reported, not applied.
fn reload(
    path: &Path,
    shared: &Shared,
    tls_config: &RwLock<Arc<ServerConfig>>,
    watch: &mut PolicyWatch,
    why: &str,
) {
    let new = match config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!(
                "warden proxy: reload ({why}) rejected, running configuration kept: {}",
                diagnostics(errs)
            );
            return;
        }
    };
    let tls_new = match tls::server_config(&new.tls) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warden proxy: reload ({why}) rejected, running configuration kept: {e:#}");
            return;
        }
    };
    let old = shared.runtime();
    if new.listen != old.cfg.listen
        || new.upstream != old.cfg.upstream
        || new.audit != old.cfg.audit
    {
        eprintln!(
            "warden proxy: reload ({why}): listen, upstream and audit changes apply at restart"
        );
    }
    if let Ok(w) = PolicyWatch::new(&watched(path, &new)) {
        *watch = w;
    }
    let mut keep = new;
    keep.listen = old.cfg.listen;
    keep.upstream = old.cfg.upstream.clone();
    keep.audit = old.cfg.audit.clone();
    let n = keep.identities.len();
    *shared.runtime.write().expect("not poisoned") = Arc::new(runtime(keep));
    *tls_config.write().expect("not poisoned") = tls_new;
    eprintln!("warden proxy: reloaded ({why}): {n} identities");
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    stats: &Stats,
) {
    let _ = stream.set_nodelay(true);
    let limits = shared.runtime().cfg.limits.clone();
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let cert_names = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| certificate_names(c.as_ref()))
        .unwrap_or_default();
    let client = Arc::new(Client {
        addr: peer,
        cert_names,
    });
    let service = service_fn(move |req| handler::handle(req, shared.clone(), client.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
}
