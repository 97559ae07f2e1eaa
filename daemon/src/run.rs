//! `warden daemon`: load the policy, enforce it, keep it enforced.
//!
//! Start-up order keeps enforcement fail-closed: the policy is swapped into the
//! maps *before* any program is attached, so no program ever runs on an empty
//! policy; pinned links from an earlier run are adopted, never re-attached. On
//! SIGHUP the policy is re-read and swapped atomically; a bad one is rejected and
//! the running one stays. SIGTERM stops the daemon and leaves enforcement in place.

use crate::enforcer::Enforcer;
use crate::inputs::{self, Inputs};
use crate::signature::{PolicyKey, SignedSet};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};
use warden_enforce::compile::{Compiled, compile};
use warden_enforce::ebpf::{self, Applied, Attachment, EbpfBackend};
use warden_enforce::nft::NftBackend;
use warden_enforce::{Backend, EnforceError};
use warden_events::EventFormat;
use warden_events::pipeline::{Config as PipelineConfig, Pipeline};
use warden_events::sink::SinkSpec;
use warden_policy::Policy;

/// EX_USAGE: the policy given at start-up is invalid.
pub const EXIT_BAD_POLICY: i32 = 64;
/// EX_UNAVAILABLE: the backend cannot enforce on this host.
pub const EXIT_BACKEND: i32 = 69;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("invalid policy:\n{0}")]
    Policy(String),
    #[error(transparent)]
    Enforce(#[from] warden_enforce::EnforceError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl DaemonError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Policy(_) => EXIT_BAD_POLICY,
            _ => EXIT_BACKEND,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Ebpf,
    Nft,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Policy files or directories; empty = the embedded default.
    pub policy: Vec<PathBuf>,
    pub backend: BackendChoice,
    pub ebpf: ebpf::Options,
    /// The nftables table the nft backend owns.
    pub nft_table: String,
    /// A minisign public key (file or base64): only policy files signed by it load.
    pub require_signature: Option<String>,
    /// Where events go (every one of them; see [`warden_events::sink`]).
    pub events: Vec<SinkSpec>,
    pub event_format: EventFormat,
    /// Window for aggregating repeated denies; zero = every deny on its own.
    pub aggregate: Duration,
    /// How often losses are checked and, when there are new ones, reported.
    pub loss_report: Duration,
    pub run_dir: PathBuf,
    /// How often to look for new interfaces and newly created policy cgroups.
    pub rescan: Duration,
    /// The proxy channel (None: no join, local connections reported as they come).
    pub proxy_reports: Option<warden_events::reports::Options>,
    /// How long a local connection waits for the proxy's report.
    pub correlate: Duration,
    /// Records each CPU's programs may emit per second (0 = no cap); the rest
    /// are counted as suppressed.
    pub kernel_event_rate: u32,
    /// Every section audits whatever the policy says (`--audit`).
    pub audit: bool,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// Bans from the proxy also apply to sources the ingress policy allows.
    pub ban_allowed_sources: bool,
    /// The resolver host rules' DNS is steered to.
    pub dns: crate::dns::DnsOptions,
}

/// Where a daemon leaves what it learned from DNS for the next one (run dir).
pub const LEARNED_FILE: &str = "learned.json";

/// Reads and compiles the policy; with `key`, every file must carry its signature
/// (the embedded default is part of the binary and needs none).
pub fn load_policy(
    paths: &[PathBuf],
    key: Option<&PolicyKey>,
) -> Result<(Policy, Compiled), DaemonError> {
    load_signed(paths, key).map(|(p, c, _)| (p, c))
}

/// [`load_policy`], and the signed policy sets it read (directories with a
/// signed manifest: every file listed there and nothing else, by digest).
pub fn load_signed(
    paths: &[PathBuf],
    key: Option<&PolicyKey>,
) -> Result<(Policy, Compiled, Vec<SignedSet>), DaemonError> {
    let mut sets = Vec::new();
    let policy = if paths.is_empty() {
        warden_policy::embedded_default()
    } else {
        let loaded = match key {
            Some(key) => {
                sets = key.sets(paths).map_err(DaemonError::Policy)?;
                warden_policy::load_paths_verified(paths, &|p, b| key.verify_in(&sets, p, b))
            }
            None => warden_policy::load_paths(paths),
        };
        loaded.map_err(|diags| {
            DaemonError::Policy(
                diags
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?
    };
    // Every file a manifest lists was read (none went missing while loading).
    for set in &sets {
        if let Some(missing) = set
            .names()
            .find(|n| !policy.sources.contains(&set.dir.join(n)))
        {
            return Err(DaemonError::Policy(format!(
                "{}: {missing} is in the signed manifest but was not read",
                set.dir.display()
            )));
        }
    }
    let compiled = compile(&policy, warden_runtime::cgroupfs::own_pod().as_ref().ok())
        .map_err(|e| DaemonError::Policy(e.to_string()))?;
    Ok((policy, compiled, sets))
}

/// [`load_policy`] as this daemon enforces it (everything audits with `--audit`).
/// Refuses a signed set older than the one in force (`in_force`: directory,
/// serial), as a replay.
pub(crate) fn load_for(
    opts: &Options,
    key: Option<&PolicyKey>,
    in_force: &[(String, u64)],
) -> Result<(Policy, Compiled, crate::signature::Serials), DaemonError> {
    let (policy, mut compiled, sets) = load_signed(&opts.policy, key)?;
    crate::signature::check_serials(in_force, &sets).map_err(DaemonError::Policy)?;
    if opts.audit {
        compiled.audit_everything();
    }
    let serials = sets
        .iter()
        .map(|s| (s.dir.display().to_string(), s.serial))
        .collect();
    Ok((policy, compiled, serials))
}

/// Starts the chosen backend: policy swapped in first, then attached.
fn start_backend(
    opts: &Options,
    compiled: &Compiled,
    events: &Pipeline,
) -> Result<(Backend, Applied, Vec<Attachment>), DaemonError> {
    let ebpf = || -> Result<_, EnforceError> {
        let mut e = EbpfBackend::open(&opts.ebpf)?;
        // What an earlier daemon learned is in the first policy swapped in: a
        // restart closes nothing the answers opened, and opens nothing either.
        e.learned = warden_enforce::learned::Learned::load(&opts.run_dir.join(LEARNED_FILE));
        let mut b = Backend::Ebpf(Box::new(e));
        b.set_event_rate(opts.kernel_event_rate)?;
        // Before any `[[remote]]` network is in force: never this host.
        let addrs = ebpf::local_addresses()
            .map_err(|e| EnforceError::Bpffs(format!("this host's addresses: {e}")))?;
        b.set_local_addrs(&addrs)?;
        let applied = b.apply_next(compiled)?;
        let attachments = b.attach(compiled)?;
        Ok((b, applied, attachments))
    };
    let nft = || -> Result<_, EnforceError> {
        let mut b = Backend::Nft(NftBackend::open(&opts.nft_table)?);
        let applied = b.apply_next(compiled)?;
        Ok((b, applied, Vec::new()))
    };
    Ok(match opts.backend {
        BackendChoice::Ebpf => ebpf()?,
        BackendChoice::Nft => nft()?,
        BackendChoice::Auto => match ebpf() {
            Ok(started) => started,
            // Someone else's pin directory is an attack, not a missing feature.
            Err(e @ EnforceError::UntrustedPinDir(_)) => return Err(e.into()),
            Err(e) => {
                let why = warden_runtime::error_chain(&e);
                tracing::warn!("eBPF enforcement unavailable ({why}); falling back to nftables");
                events.lifecycle(
                    "backend_fallback",
                    json!({ "from": "ebpf", "to": "nft", "error": why }),
                );
                nft()?
            }
        },
    })
}

pub async fn run(opts: Options) -> Result<(), DaemonError> {
    // First: a reload (SIGHUP's default action is to terminate) may come as soon
    // as `warden status` says enforcing, before the loop below runs; it waits
    // here, queued, instead of killing the daemon.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let key = opts
        .require_signature
        .as_deref()
        .map(PolicyKey::load)
        .transpose()
        .map_err(DaemonError::Policy)?;
    // The sets of the daemon before this one (pinned enforcement is theirs).
    let in_force = crate::state::DaemonState::read(&opts.run_dir)
        .map(|s| s.policy_sets)
        .unwrap_or_default();
    let (policy, compiled, sets) = load_for(&opts, key.as_ref(), &in_force)?;
    let pipeline = start_pipeline(&opts)?;
    let (bans_tx, mut bans) = tokio::sync::mpsc::unbounded_channel();
    if let Some(r) = &opts.proxy_reports {
        warden_events::reports::listen(r.clone(), pipeline.reports(), bans_tx)?;
    }
    let resolver = start_resolver(&opts.dns);
    let (mut backend, applied, attachments) = start_backend(&opts, &compiled, &pipeline)?;
    backend.set_dns_port(resolver.as_ref().map(|l| l.port))?;
    let mut d = Enforcer::started(
        opts,
        key,
        backend,
        pipeline,
        &policy,
        compiled,
        sets,
        &applied,
        &attachments,
    )?;
    let mut inputs = Inputs::open(&mut d)?;
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(d.current.clone());
    let (ask_tx, mut asks) = tokio::sync::mpsc::channel(crate::dns::MAX_IN_FLIGHT);
    if let Some(l) = resolver {
        d.dns_counters = Some(crate::dns::spawn(l, &d.opts.dns, policy_rx, ask_tx)?);
    }
    serve_metrics(&d.opts);
    if let Err(e) = crate::live::serve(&d.opts.run_dir, d.pipeline.subscriptions()) {
        tracing::warn!("the subscription socket for `warden events`: {e}; running without");
    }
    notify_ready();

    loop {
        inputs.follow_policy_cgroups(&d.current)?;
        if !Arc::ptr_eq(&policy_tx.borrow(), &d.current) {
            policy_tx.send_replace(d.current.clone());
        }
        let Inputs {
            ring,
            kernel_log,
            nflog,
            policy_watch,
            cgroup_watch,
            link_watch,
            rescan,
            loss_report,
            ..
        } = &mut inputs;
        tokio::select! {
            guard = async { link_watch.as_mut().expect("guarded").readable_mut().await }, if link_watch.is_some() => {
                if inputs::changed(guard?) {
                    d.follow_interfaces();
                }
            }
            Some((msg, pid)) = bans.recv() => d.on_proxy_message(msg, pid),
            Some(ask) = asks.recv() => d.dns(ask),
            guard = cgroup_watch.readable_mut() => {
                if inputs::changed(guard?) {
                    d.follow_cgroups()?;
                }
            }
            guard = async { ring.as_mut().expect("guarded").readable_mut().await }, if ring.is_some() => {
                let mut guard = guard?;
                // A bounded batch per wake-up, so a flood never starves reloads and
                // signals; readiness is only cleared once the ring is empty.
                if d.drain(guard.get_inner_mut(), DRAIN_BATCH) < DRAIN_BATCH {
                    guard.clear_ready();
                }
            }
            guard = async { policy_watch.as_mut().expect("guarded").readable_mut().await }, if policy_watch.is_some() => {
                if inputs::changed(guard?) {
                    // Let a burst of writes (several files of a policy.d push) settle,
                    // then consume what the burst queued (non-blocking read).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = policy_watch.as_mut().expect("guarded").get_mut().changed();
                    d.reload_and_report("file change")?;
                }
            }
            guard = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = async { nflog.as_mut().expect("guarded").readable_mut().await }, if nflog.is_some() => {
                let mut guard = guard?;
                d.read_nflog(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = hup.recv() => d.reload_and_report("SIGHUP")?,
            _ = rescan.tick() => d.rescan()?,
            _ = loss_report.tick() => d.report_losses(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    d.stop(inputs)
}

/// Binds the resolver; a taken port leaves host rules allowing nothing
/// (their DNS is then judged like any other traffic), said loudly.
fn start_resolver(opts: &crate::dns::DnsOptions) -> Option<crate::dns::Listeners> {
    if opts.port == 0 {
        return None;
    }
    match crate::dns::bind(opts.port) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(
                "resolver on 127.0.0.1:{}: {e}; egress host rules allow nothing",
                opts.port
            );
            None
        }
    }
}

/// Events read from the ring buffer per wake-up of the event loop.
const DRAIN_BATCH: usize = 1024;

fn start_pipeline(opts: &Options) -> Result<Pipeline, DaemonError> {
    Ok(Pipeline::start(PipelineConfig {
        sinks: opts.events.clone(),
        format: opts.event_format,
        cgroup2: warden_runtime::cgroupfs::cgroup2_mount().map_err(EnforceError::from)?,
        aggregate: opts.aggregate,
        correlate: if opts.proxy_reports.is_some() {
            opts.correlate
        } else {
            Duration::ZERO
        },
    })?)
}

/// Metrics are worth less than enforcement: a taken port is a warning.
fn serve_metrics(opts: &Options) {
    let Some(addr) = opts.metrics else {
        return;
    };
    let (pin_dir, run_dir, table) = (
        opts.ebpf.pin_dir.clone(),
        opts.run_dir.clone(),
        opts.nft_table.clone(),
    );
    let render =
        move || crate::metrics::render_daemon(&crate::status::report(&pin_dir, &run_dir, &table));
    match warden_runtime::metrics::serve(addr, render) {
        Ok(a) => tracing::info!("metrics on http://{a}/metrics"),
        Err(e) => tracing::warn!("metrics on {addr}: {e}; running without"),
    }
}

/// Tells systemd (Type=notify) that enforcement is attached.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let _ = sock.send_to(b"READY=1", PathBuf::from(path));
}
