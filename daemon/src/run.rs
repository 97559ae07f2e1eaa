//! `warden daemon`: load the policy, enforce it, keep it enforced.
//!
//! Start-up order keeps enforcement fail-closed: the policy is swapped into the
//! maps *before* any program is attached, so no program ever runs on an empty
//! policy; pinned links from an earlier run are adopted, never re-attached. On
//! SIGHUP the policy is re-read and swapped atomically; a bad one is rejected and
//! the running one stays. SIGTERM stops the daemon and leaves enforcement in place.

use crate::signature::PolicyKey;
use crate::state::DaemonState;
use aya::maps::{MapData, RingBuf};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use warden_common::FlowEvent;
use warden_enforce::compile::{Compiled, compile};
use warden_enforce::ebpf::{self, Applied, Attachment, EbpfBackend};
use warden_enforce::nflog::NflogSocket;
use warden_enforce::nft::NftBackend;
use warden_enforce::{Backend, EnforceError};
use warden_events::EventFormat;
use warden_events::pipeline::{Config as PipelineConfig, KernelLosses, Pipeline};
use warden_events::sink::SinkSpec;
use warden_policy::Policy;
use warden_runtime::watch::{CgroupWatch, LinkWatch, PolicyWatch};

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
}

/// Reads and compiles the policy; with `key`, every file must carry its signature
/// (the embedded default is part of the binary and needs none).
pub fn load_policy(
    paths: &[PathBuf],
    key: Option<&PolicyKey>,
) -> Result<(Policy, Compiled), DaemonError> {
    let policy = if paths.is_empty() {
        warden_policy::embedded_default()
    } else {
        let loaded = match key {
            Some(key) => warden_policy::load_paths_verified(paths, &|p, b| key.verify(p, b)),
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
    let compiled = compile(&policy, warden_runtime::cgroupfs::own_pod().as_ref().ok())
        .map_err(|e| DaemonError::Policy(e.to_string()))?;
    Ok((policy, compiled))
}

/// [`load_policy`] as this daemon enforces it (everything audits with `--audit`).
fn load_for(opts: &Options, key: Option<&PolicyKey>) -> Result<(Policy, Compiled), DaemonError> {
    let (policy, mut compiled) = load_policy(&opts.policy, key)?;
    if opts.audit {
        compiled.audit_everything();
    }
    Ok((policy, compiled))
}

/// Starts the chosen backend: policy swapped in first, then attached.
fn start_backend(
    opts: &Options,
    compiled: &Compiled,
    events: &Pipeline,
) -> Result<(Backend, Applied, Vec<Attachment>), DaemonError> {
    let ebpf = || -> Result<_, EnforceError> {
        let mut b = Backend::Ebpf(Box::new(EbpfBackend::open(&opts.ebpf)?));
        b.set_event_rate(opts.kernel_event_rate)?;
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
    let (policy, compiled) = load_for(&opts, key.as_ref())?;
    let mut pipeline = Pipeline::start(PipelineConfig {
        sinks: opts.events.clone(),
        format: opts.event_format,
        cgroup2: warden_runtime::cgroupfs::cgroup2_mount().map_err(EnforceError::from)?,
        aggregate: opts.aggregate,
        correlate: if opts.proxy_reports.is_some() {
            opts.correlate
        } else {
            Duration::ZERO
        },
    })?;
    let (bans_tx, mut bans_rx) = tokio::sync::mpsc::unbounded_channel();
    if let Some(r) = &opts.proxy_reports {
        warden_events::reports::listen(r.clone(), pipeline.reports(), bans_tx)?;
    }
    let (mut backend, applied, attachments) = start_backend(&opts, &compiled, &pipeline)?;

    let mut current = Arc::new(compiled);
    let mut state = DaemonState::new(
        &opts,
        backend.name(),
        &policy,
        &current,
        &applied,
        &attachments,
    );
    state.write(&opts.run_dir)?;
    print_summary(&policy, &current, &applied, &attachments, backend.gaps());
    pipeline.lifecycle(
        "start",
        json!({ "backend": backend.name(), "attachments": attachments, "gaps": backend.gaps() }),
    );
    pipeline.lifecycle("policy_applied", applied_event(&current, &applied, &policy));
    let mut resolved = applied.resolved_ids.clone();

    let mut events = match backend.take_events() {
        // SAFETY: the ring buffer owns its map fd and keeps it open until dropped.
        Some(ring) => Some(
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| DaemonError::Io(e.into()))?,
        ),
        None => None,
    };
    let mut kernel_log = match backend.take_kernel_logger() {
        // SAFETY: the logger owns its ring buffer's fd and keeps it open until dropped.
        Some(logger) => Some(
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(|e| DaemonError::Io(e.into()))?,
        ),
        None => None,
    };
    // The nft backend's events come back through NFLOG.
    let mut nflog = match &backend {
        Backend::Nft(_) => match NflogSocket::bind(warden_enforce::nft::LOG_GROUP) {
            // SAFETY: the socket owns its fd until dropped.
            Ok(sock) => Some(
                unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
                    .map_err(|e| DaemonError::Io(e.into()))?,
            ),
            Err(e) => {
                tracing::warn!(
                    "cannot read NFLOG events ({e}); verdicts are enforced and counted, not reported"
                );
                None
            }
        },
        Backend::Ebpf(_) => None,
    };
    let mut watch = if opts.policy.is_empty() {
        None
    } else {
        // SAFETY: the watch owns its inotify fd until dropped.
        Some(
            unsafe {
                AsyncFd::register_with_interest(
                    PolicyWatch::new(&opts.policy)?,
                    tokio::io::Interest::READABLE,
                )
            }
            .map_err(|e| DaemonError::Io(e.into()))?,
        )
    };
    let cgroup2 = warden_runtime::cgroupfs::cgroup2_mount().map_err(EnforceError::from)?;
    let mut cgroups_watched = current.clone();
    let mut cgroup_watch = watch_cgroups(&cgroup2, &current)?;
    // New interfaces get XDP at once (eBPF: nft's table hooks every interface).
    let mut link_watch = match &backend {
        Backend::Ebpf(_) => Some(
            // SAFETY: the watch owns its netlink socket until dropped.
            unsafe {
                AsyncFd::register_with_interest(LinkWatch::new()?, tokio::io::Interest::READABLE)
            }
            .map_err(|e| DaemonError::Io(e.into()))?,
        ),
        Backend::Nft(_) => None,
    };
    let mut rescan = tokio::time::interval(opts.rescan);
    let mut loss_report = tokio::time::interval(opts.loss_report);
    let mut nflog_lost = 0;
    // Pinned counters outlive daemons: report what was lost since this one started.
    let at_start = backend.kernel_losses();
    let kernel_lost = |b: &Backend, nflog: u64| {
        let now = b.kernel_losses();
        KernelLosses {
            lost: now.lost.saturating_sub(at_start.lost) + nflog,
            suppressed: now.suppressed.saturating_sub(at_start.suppressed),
        }
    };
    if let Some(addr) = opts.metrics {
        let (pin_dir, run_dir, table) = (
            opts.ebpf.pin_dir.clone(),
            opts.run_dir.clone(),
            opts.nft_table.clone(),
        );
        let render = move || {
            crate::metrics::render_daemon(&crate::status::report(&pin_dir, &run_dir, &table))
        };
        // Metrics are worth less than enforcement: a taken port is a warning.
        match warden_runtime::metrics::serve(addr, render) {
            Ok(a) => tracing::info!("metrics on http://{a}/metrics"),
            Err(e) => tracing::warn!("metrics on {addr}: {e}; running without"),
        }
    }
    notify_ready();

    loop {
        if !Arc::ptr_eq(&cgroups_watched, &current) {
            // A reload may name other cgroups.
            cgroup_watch = watch_cgroups(&cgroup2, &current)?;
            cgroups_watched = current.clone();
        }
        tokio::select! {
            guard = async { link_watch.as_mut().expect("guarded").readable_mut().await }, if link_watch.is_some() => {
                let mut guard = guard?;
                let changed = guard.get_inner_mut().changed();
                guard.clear_ready();
                if changed {
                    follow_interfaces(&mut backend, &current, &pipeline);
                }
            }
            Some((ban, pid)) = bans_rx.recv() => {
                apply_ban(&opts, &mut backend, &current, &ban, pid, &pipeline);
            }
            guard = cgroup_watch.readable_mut() => {
                let mut guard = guard?;
                let changed = guard.get_inner_mut().changed();
                guard.clear_ready();
                if changed {
                    follow_cgroups(&opts, &mut backend, &current, &mut resolved, &mut state, &pipeline)?;
                }
            }
            guard = async { events.as_mut().expect("guarded").readable_mut().await }, if events.is_some() => {
                let mut guard = guard?;
                // A bounded batch per wake-up, so a flood never starves reloads and
                // signals; readiness is only cleared once the ring is empty.
                if drain(guard.get_inner_mut(), &current, &pipeline, DRAIN_BATCH) < DRAIN_BATCH {
                    guard.clear_ready();
                }
            }
            guard = async { watch.as_mut().expect("guarded").readable_mut().await }, if watch.is_some() => {
                let mut guard = guard?;
                let changed = guard.get_inner_mut().changed();
                guard.clear_ready();
                if changed {
                    // Let a burst of writes (several files of a policy.d push) settle.
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    // Consume what the burst queued (non-blocking read).
                    let _ = watch.as_mut().expect("guarded").get_mut().changed();
                    reload_and_report(&opts, key.as_ref(), &mut backend, &mut current, &mut resolved, &mut state, &pipeline, "file change")?;
                }
            }
            guard = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = async { nflog.as_mut().expect("guarded").readable_mut().await }, if nflog.is_some() => {
                let mut guard = guard?;
                for ev in guard.get_inner_mut().read() {
                    pipeline.flow(ev, current.rule_description(ev.rule_id));
                }
                nflog_lost = guard.get_inner().lost();
                guard.clear_ready();
            }
            _ = hup.recv() => {
                reload_and_report(&opts, key.as_ref(), &mut backend, &mut current, &mut resolved, &mut state, &pipeline, "SIGHUP")?;
            }
            _ = rescan.tick() => {
                let restored = backend.restore_pins();
                if !restored.is_empty() {
                    tracing::warn!("pins were removed and are pinned again: {}", restored.join(", "));
                    pipeline.lifecycle("pins_restored", json!({ "pins": restored }));
                }
                // A backstop for what the cgroup watch could not see.
                follow_cgroups(&opts, &mut backend, &current, &mut resolved, &mut state, &pipeline)?;
                follow_interfaces(&mut backend, &current, &pipeline);
            }
            _ = loss_report.tick() => {
                let losses = pipeline.report_losses(kernel_lost(&backend, nflog_lost));
                if losses != state.events {
                    state.events = losses;
                    // Status lags behind; enforcement and events go on.
                    if let Err(e) = state.write(&opts.run_dir) {
                        tracing::error!("cannot update the state file: {e}");
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    if let Some(events) = events.as_mut() {
        drain(events.get_mut(), &current, &pipeline, usize::MAX);
    }
    if let Some(nflog) = nflog.as_mut() {
        for ev in nflog.get_mut().read() {
            pipeline.flow(ev, current.rule_description(ev.rule_id));
        }
        nflog_lost = nflog.get_ref().lost();
    }
    let kernel_lost = kernel_lost(&backend, nflog_lost);
    pipeline.report_losses(kernel_lost);
    let last = pipeline.shutdown(
        json!({ "enforcement": "stays pinned; `warden down` removes it" }),
        kernel_lost,
    );
    if last.total() > state.events.total() {
        tracing::warn!("events lost while stopping: {}", json!(last));
    }
    state.events = last;
    state.write(&opts.run_dir)?;
    if let Some(r) = &opts.proxy_reports {
        let _ = std::fs::remove_file(&r.socket);
    }
    Ok(())
}

/// Enforces a ban the proxy asked for in the kernel, unless the policy
/// allows the source explicitly (then only with `--ban-allowed-sources`).
fn apply_ban(
    opts: &Options,
    backend: &mut Backend,
    current: &Compiled,
    ban: &warden_events::reports::BanRequest,
    pid: u32,
    pipeline: &Pipeline,
) {
    let source = ban.ban.to_canonical();
    let allowed_by = current
        .ingress
        .iter()
        .find(|e| e.net.contains(&source))
        .and_then(|e| current.rules.get(e.rule_id as usize))
        .map(|r| r.origin.clone());
    let mut fields = json!({
        "source": source.to_string(), "seconds": ban.seconds, "failures": ban.failures,
        "window_seconds": ban.window_seconds, "identity": ban.identity, "proxy_port": ban.port,
        "proxy_pid": pid,
    });
    if let (Some(origin), false) = (&allowed_by, opts.ban_allowed_sources) {
        fields["enforced"] = json!(false);
        fields["reason"] = json!(format!(
            "the policy allows this source ({origin}); the proxy still refuses it"
        ));
        pipeline.lifecycle("ban", fields);
        return;
    }
    match backend.ban(source, Duration::from_secs(ban.seconds), Some(ban.port)) {
        Ok(()) => {
            fields["enforced"] = json!(backend.name());
            pipeline.lifecycle("ban", fields);
        }
        Err(e) => {
            fields["enforced"] = json!(false);
            fields["error"] = json!(e.to_string());
            pipeline.lifecycle("ban", fields);
        }
    }
}

/// Attaches XDP to interfaces that appeared, detaches from those gone.
fn follow_interfaces(backend: &mut Backend, current: &Compiled, pipeline: &Pipeline) {
    match backend.sync_interfaces(current) {
        Ok(changes) => {
            let changes: Vec<&Attachment> =
                changes.iter().filter(|a| a.state != "adopted").collect();
            if !changes.is_empty() {
                pipeline.lifecycle("attachments_changed", json!({ "attachments": changes }));
            }
        }
        Err(e) => tracing::warn!("XDP attach: {e}"),
    }
}

/// Watches the parents of the policy's cgroups.
fn watch_cgroups(
    cgroup2: &std::path::Path,
    compiled: &Compiled,
) -> Result<AsyncFd<CgroupWatch>, DaemonError> {
    let paths = compiled
        .cgroups
        .iter()
        .map(|g| g.cgroup.as_str().to_owned())
        .chain(compiled.egress.iter().map(|e| e.cgroup.as_str().to_owned()))
        .collect();
    let watch = CgroupWatch::new(cgroup2, paths)?;
    // SAFETY: the watch owns its inotify fd until dropped.
    unsafe { AsyncFd::register_with_interest(watch, tokio::io::Interest::READABLE) }
        .map_err(|e| DaemonError::Io(e.into()))
}

/// Re-applies the policy when a cgroup it names appeared, went away or was
/// re-created (its id changed).
fn follow_cgroups(
    opts: &Options,
    backend: &mut Backend,
    current: &Compiled,
    resolved: &mut Vec<Option<u64>>,
    state: &mut DaemonState,
    pipeline: &Pipeline,
) -> Result<(), DaemonError> {
    if backend.resolve_ids(current) == *resolved {
        return Ok(());
    }
    match backend.apply_next(current) {
        Ok(applied) => {
            *resolved = applied.resolved_ids.clone();
            pipeline.lifecycle(
                "cgroups_resolved",
                json!({ "generation": applied.generation, "unresolved": applied.unresolved }),
            );
            state.generation = applied.generation;
            state.write(&opts.run_dir)?;
        }
        Err(e) => tracing::error!("re-applying after cgroup change failed: {e}"),
    }
    Ok(())
}

/// Reloads the policy; a rejected one is reported and the running one stays.
#[allow(clippy::too_many_arguments)]
fn reload_and_report(
    opts: &Options,
    key: Option<&PolicyKey>,
    backend: &mut Backend,
    current: &mut Arc<Compiled>,
    resolved: &mut Vec<Option<u64>>,
    state: &mut DaemonState,
    events: &Pipeline,
    trigger: &str,
) -> Result<(), DaemonError> {
    match reload(opts, key, backend, current) {
        Ok(None) => events.lifecycle(
            "policy_unchanged",
            json!({ "trigger": trigger, "digest": current.digest, "generation": state.generation }),
        ),
        Ok(Some((policy, compiled, applied, timing))) => {
            *current = Arc::new(compiled);
            *resolved = applied.resolved_ids.clone();
            let mut fields = applied_event(current, &applied, &policy);
            fields["trigger"] = trigger.into();
            fields["load_ms"] = timing.0.into();
            fields["apply_ms"] = timing.1.into();
            events.lifecycle("policy_applied", fields);
            state.policy_applied(&policy, current, &applied);
            state.write(&opts.run_dir)?;
        }
        Err(e) => {
            tracing::warn!(
                %trigger,
                generation_in_force = state.generation,
                "policy rejected ({trigger}), previous policy stays in force: {e}"
            );
            events.lifecycle(
                "policy_rejected",
                json!({ "error": e.to_string(), "trigger": trigger, "generation_in_force": state.generation }),
            );
        }
    }
    Ok(())
}

/// Milliseconds spent reading and compiling a policy, and swapping it in.
type Timing = (f64, f64);

/// Re-reads the policy and swaps it in; `None` when it is the one in force.
fn reload(
    opts: &Options,
    key: Option<&PolicyKey>,
    backend: &mut Backend,
    current: &Compiled,
) -> Result<Option<(Policy, Compiled, Applied, Timing)>, DaemonError> {
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
    let started = std::time::Instant::now();
    let (policy, compiled) = load_for(opts, key)?;
    if compiled == *current {
        return Ok(None);
    }
    let load_ms = ms(started);
    let swap = std::time::Instant::now();
    let applied = backend.apply_next(&compiled)?;
    let apply_ms = ms(swap);
    // The swap happened: from here on this policy is the one in force, whatever
    // the interface sync says (its problems are reported, not a rejection).
    if let Err(e) = backend.sync_interfaces(&compiled) {
        tracing::warn!("interfaces of the new policy: {e}");
    }
    Ok(Some((policy, compiled, applied, (load_ms, apply_ms))))
}

/// Events read from the ring buffer per wake-up of the event loop.
const DRAIN_BATCH: usize = 1024;

/// Reads up to `max` records; returns how many were read.
fn drain(
    ring: &mut RingBuf<MapData>,
    compiled: &Arc<Compiled>,
    events: &Pipeline,
    max: usize,
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else { break };
        n += 1;
        if item.len() < std::mem::size_of::<FlowEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole FlowEvent; read unaligned as plain data.
        let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        events.flow(ev, compiled.rule_description(ev.rule_id));
    }
    n
}

/// The fields of a `policy_applied` event.
fn applied_event(compiled: &Compiled, applied: &Applied, policy: &Policy) -> Value {
    json!({
        "generation": applied.generation,
        "digest": compiled.digest,
        "mode": compiled.mode(),
        "audit": compiled.audit_sections(),
        "sources": policy.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "unresolved_cgroups": applied.unresolved,
    })
}

fn print_summary(
    policy: &Policy,
    c: &Compiled,
    applied: &Applied,
    attachments: &[Attachment],
    gaps: &[&str],
) {
    let sources: Vec<String> = policy
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    tracing::info!(
        generation = applied.generation,
        digest = %c.digest,
        "enforcing policy generation {} ({}) from {}",
        applied.generation,
        c.digest,
        sources.join(", ")
    );
    tracing::info!("protected ports: {:?}", c.ports);
    match c.mode() {
        "enforce" => {}
        mode => tracing::warn!(
            "mode: {mode}: AUDIT ONLY (reported as would_deny, not blocked): {}",
            c.audit_sections().join(", ")
        ),
    }
    let remote: Vec<String> = c
        .ingress
        .iter()
        .map(|e| format!("{}→{}", e.net, e.port))
        .collect();
    tracing::info!(
        "remote sources allowed: {}",
        if remote.is_empty() {
            "none (local access only)".to_owned()
        } else {
            remote.join(", ")
        }
    );
    for g in &c.cgroups {
        let what = if g.flags & warden_common::CG_MAY_BIND != 0 {
            "bind+connect"
        } else {
            "connect"
        };
        tracing::info!("local cgroup {} may {what}", g.cgroup);
    }
    for e in &c.egress {
        tracing::info!(
            "egress of {} limited to {} prefix(es)",
            e.cgroup,
            e.prefixes.len()
        );
    }
    for u in &applied.unresolved {
        tracing::info!("note: cgroup {u} does not exist yet; granted as soon as it appears");
    }
    for g in gaps {
        tracing::warn!("NOT ENFORCED by this backend: {g}");
    }
    for a in attachments {
        tracing::info!(
            "{} on {}: {}{}",
            a.program,
            a.target,
            a.state,
            a.mode.map(|m| format!(" ({m})")).unwrap_or_default()
        );
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
