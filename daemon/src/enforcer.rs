//! The running daemon's state and what it does on each input: reload, follow
//! cgroups and interfaces, enforce the proxy's bans, read the kernel's
//! records, account for losses, stop.

use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use serde_json::json;
use warden_common::FlowEvent;
use warden_enforce::compile::Compiled;
use warden_enforce::ebpf::{Applied, AttachState, Attachment};
use warden_enforce::nflog::NflogSocket;
use warden_enforce::{Backend, KernelCounters};
use warden_events::pipeline::{KernelLosses, Pipeline};
use warden_policy::Policy;

use crate::inputs::Inputs;
use crate::run::{DaemonError, Options, load_for};
use crate::signature::PolicyKey;
use crate::state::DaemonState;
use crate::summary::{applied_event, print_summary};

pub struct Enforcer {
    pub opts: Options,
    key: Option<PolicyKey>,
    pub backend: Backend,
    /// The policy in force.
    pub current: Arc<Compiled>,
    /// The cgroup ids the policy in force was applied with.
    resolved: Vec<Option<u64>>,
    state: DaemonState,
    pub pipeline: Pipeline,
    /// Pinned counters outlive daemons: losses are reported since this one started.
    at_start: KernelCounters,
    nflog_lost: u64,
    /// The resolver's counters, when it runs.
    pub dns_counters: Option<Arc<crate::dns::Counters>>,
    /// This host's addresses as last told to the kernel.
    local_addrs: Vec<std::net::IpAddr>,
    /// The most urgent expiry warning given per certificate (days: 30, 7, 1, 0).
    cert_warned: std::collections::HashMap<(String, String, i64), u32>,
    /// Allowed TCP connects waiting for their source (its first SYN), by cookie.
    awaiting_source: std::collections::HashMap<u64, (FlowEvent, std::time::Instant)>,
}

/// How long an allowed connect's record waits for its source address and
/// port; the source record comes from the same connect() call's SYN, so it is
/// normally in the same batch.
const SOURCE_WAIT: Duration = Duration::from_millis(100);
/// Records waiting for their source at most; the oldest goes out as it is.
const MAX_AWAITING: usize = 4096;

impl Enforcer {
    /// The daemon once its backend enforces `compiled`: the state file
    /// written, the start reported.
    #[allow(clippy::too_many_arguments)]
    pub fn started(
        opts: Options,
        key: Option<PolicyKey>,
        backend: Backend,
        pipeline: Pipeline,
        policy: &Policy,
        compiled: Compiled,
        policy_sets: Vec<(String, u64)>,
        applied: &Applied,
        attachments: &[Attachment],
    ) -> Result<Self, DaemonError> {
        let mut state = DaemonState::new(
            &opts,
            backend.name(),
            policy,
            &compiled,
            applied,
            attachments,
        );
        state.policy_sets = policy_sets;
        state.write(&opts.run_dir)?;
        print_summary(policy, &compiled, applied, attachments, backend.gaps());
        pipeline.lifecycle(
            "start",
            json!({ "backend": backend.name(), "attachments": attachments, "gaps": backend.gaps() }),
        );
        pipeline.lifecycle("policy_applied", applied_event(&compiled, applied, policy));
        Ok(Self {
            at_start: backend.kernel_losses(),
            opts,
            key,
            backend,
            current: Arc::new(compiled),
            resolved: applied.resolved_ids.clone(),
            state,
            pipeline,
            nflog_lost: 0,
            dns_counters: None,
            local_addrs: Vec::new(),
            awaiting_source: std::collections::HashMap::new(),
            cert_warned: std::collections::HashMap::new(),
        })
    }

    /// Reloads the policy; a rejected one is reported and the running one stays.
    pub fn reload_and_report(&mut self, trigger: &str) -> Result<(), DaemonError> {
        match self.reload() {
            Ok(None) => {
                self.pipeline.lifecycle(
                    "policy_unchanged",
                    json!({ "trigger": trigger, "digest": self.current.digest, "generation": self.state.generation }),
                );
                self.state.write(&self.opts.run_dir)?;
            }
            Ok(Some((policy, compiled, applied, timing, sets))) => {
                self.current = Arc::new(compiled);
                self.resolved = applied.resolved_ids.clone();
                let mut fields = applied_event(&self.current, &applied, &policy);
                fields["trigger"] = trigger.into();
                fields["load_ms"] = timing.0.into();
                fields["apply_ms"] = timing.1.into();
                self.pipeline.lifecycle("policy_applied", fields);
                self.state.policy_applied(&policy, &self.current, &applied);
                self.state.policy_sets = sets;
                self.state.write(&self.opts.run_dir)?;
            }
            Err(e) => {
                let generation_in_force = self.state.generation;
                tracing::warn!(
                    %trigger,
                    generation_in_force,
                    "policy rejected ({trigger}), previous policy stays in force: {e}"
                );
                self.pipeline.lifecycle(
                    "policy_rejected",
                    json!({ "error": e.to_string(), "trigger": trigger, "generation_in_force": generation_in_force }),
                );
            }
        }
        Ok(())
    }

    /// Re-reads the policy and swaps it in; `None` when it is the one in force.
    #[allow(clippy::type_complexity)]
    fn reload(
        &mut self,
    ) -> Result<Option<(Policy, Compiled, Applied, Timing, Vec<(String, u64)>)>, DaemonError> {
        let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        let started = std::time::Instant::now();
        let (policy, compiled, sets) =
            load_for(&self.opts, self.key.as_ref(), &self.state.policy_sets)?;
        if compiled == *self.current {
            // The same policy, maybe under a newer serial: that serial is the floor now.
            self.state.policy_sets = sets;
            return Ok(None);
        }
        let load_ms = ms(started);
        let swap = std::time::Instant::now();
        let applied = self.backend.apply_next(&compiled)?;
        let apply_ms = ms(swap);
        // The swap happened: from here on this policy is the one in force, whatever
        // the interface sync says (its problems are reported, not a rejection).
        if let Err(e) = self.backend.sync_interfaces(&compiled) {
            tracing::warn!("interfaces of the new policy: {e}");
        }
        Ok(Some((policy, compiled, applied, (load_ms, apply_ms), sets)))
    }

    /// Re-applies the policy when a cgroup it names appeared, went away or was
    /// re-created (its id changed).
    pub fn follow_cgroups(&mut self) -> Result<(), DaemonError> {
        if self.backend.resolve_ids(&self.current) == self.resolved {
            return Ok(());
        }
        match self.backend.apply_next(&self.current) {
            Ok(applied) => {
                self.resolved = applied.resolved_ids.clone();
                self.pipeline.lifecycle(
                    "cgroups_resolved",
                    json!({ "generation": applied.generation, "unresolved": applied.unresolved }),
                );
                self.state.generation = applied.generation;
                self.state.write(&self.opts.run_dir)?;
            }
            Err(e) => tracing::error!("re-applying after cgroup change failed: {e}"),
        }
        Ok(())
    }

    /// Keeps the kernel's list of this host's addresses current: a
    /// `[[remote]]` network never covers them.
    pub fn follow_addresses(&mut self) {
        let addrs = match warden_enforce::ebpf::local_addresses() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("reading this host's addresses: {e}");
                return;
            }
        };
        if addrs == self.local_addrs {
            return;
        }
        match self.backend.set_local_addrs(&addrs) {
            Ok(()) => self.local_addrs = addrs,
            Err(e) => tracing::error!("telling the kernel this host's addresses: {e}"),
        }
    }

    /// Attaches XDP to interfaces that appeared, detaches from those gone.
    pub fn follow_interfaces(&mut self) {
        self.follow_addresses();
        match self.backend.sync_interfaces(&self.current) {
            Ok(changes) => {
                let changes: Vec<&Attachment> = changes
                    .iter()
                    .filter(|a| a.state != AttachState::Adopted)
                    .collect();
                if !changes.is_empty() {
                    self.pipeline
                        .lifecycle("attachments_changed", json!({ "attachments": changes }));
                }
            }
            Err(e) => tracing::warn!("XDP attach: {e}"),
        }
    }

    /// The periodic backstop: pins removed are pinned again, and cgroups and
    /// interfaces the watches could not see are followed.
    pub fn rescan(&mut self) -> Result<(), DaemonError> {
        self.flush_awaiting(SOURCE_WAIT);
        self.warn_certificates();
        match self.backend.expire_learned(&self.current) {
            Ok(true) => self.save_learned(),
            Ok(false) => {}
            Err(e) => tracing::warn!("expiring learned addresses: {e}"),
        }
        let restored = self.backend.restore_pins();
        if !restored.is_empty() {
            tracing::warn!(
                "pins were removed and are pinned again: {}",
                restored.join(", ")
            );
            self.pipeline
                .lifecycle("pins_restored", json!({ "pins": restored }));
        }
        self.follow_cgroups()?;
        self.follow_interfaces();
        Ok(())
    }

    /// What the proxy sends besides its connection reports.
    pub fn on_proxy_message(&mut self, msg: warden_events::reports::FromProxy, pid: u32) {
        match msg {
            warden_events::reports::FromProxy::Ban(ban) => self.apply_ban(&ban, pid),
            warden_events::reports::FromProxy::Certificates(certs) => {
                self.state.proxy_certificates = certs;
                if let Err(e) = self.state.write(&self.opts.run_dir) {
                    tracing::error!("cannot update the state file: {e}");
                }
                self.warn_certificates();
            }
        }
    }

    /// A `certificate_expiring` event when a proxy certificate comes within
    /// 30, 7 or 1 days of its end (or is past it): once per threshold.
    pub fn warn_certificates(&mut self) {
        let now = (warden_runtime::clock::unix_ms() / 1000) as i64;
        for c in self.state.proxy_certificates.clone() {
            let left = c.not_after - now;
            let Some(threshold) = [0i64, 1, 7, 30].into_iter().find(|&d| left <= d * 86_400) else {
                continue;
            };
            let key = (c.certificate.clone(), c.subject.clone(), c.not_after);
            let threshold = threshold as u32;
            if self.cert_warned.get(&key).is_some_and(|&w| w <= threshold) {
                continue;
            }
            self.cert_warned.insert(key, threshold);
            let days_left = left.div_euclid(86_400);
            tracing::warn!(
                "the proxy's {} certificate ({}) expires in {days_left} day(s): {}",
                c.certificate,
                c.subject,
                c.path
            );
            self.pipeline.lifecycle(
                "certificate_expiring",
                json!({
                    "certificate": c.certificate, "subject": c.subject, "path": c.path,
                    "not_after": c.not_after, "seconds_left": left, "days_left": days_left,
                    "threshold_days": threshold,
                }),
            );
        }
    }

    /// Enforces a ban the proxy asked for in the kernel, unless the policy
    /// allows the source explicitly (then only with `--ban-allowed-sources`).
    pub fn apply_ban(&mut self, ban: &warden_events::reports::BanRequest, pid: u32) {
        let source = ban.ban.to_canonical();
        let allowed_by = self
            .current
            .ingress
            .iter()
            .find(|e| e.net.contains(&source))
            .and_then(|e| self.current.rules.get(e.rule_id as usize))
            .map(|r| r.origin.clone());
        let mut fields = json!({
            "source": source.to_string(), "seconds": ban.seconds, "failures": ban.failures,
            "window_seconds": ban.window_seconds, "identity": ban.identity, "proxy_port": ban.port,
            "proxy_pid": pid,
        });
        if let (Some(origin), false) = (&allowed_by, self.opts.ban_allowed_sources) {
            fields["enforced"] = json!(false);
            fields["reason"] = json!(format!(
                "the policy allows this source ({origin}); the proxy still refuses it"
            ));
        } else {
            match self
                .backend
                .ban(source, Duration::from_secs(ban.seconds), Some(ban.port))
            {
                Ok(()) => fields["enforced"] = json!(self.backend.name()),
                Err(e) => {
                    fields["enforced"] = json!(false);
                    fields["error"] = json!(e.to_string());
                }
            }
        }
        self.pipeline.lifecycle("ban", fields);
    }

    /// Does what the resolver asks: learns an answer's addresses (and says
    /// whether they are allowed now), or reports a refused question.
    pub fn dns(&mut self, ask: crate::dns::Ask) {
        match ask {
            crate::dns::Ask::Learn {
                name,
                answers,
                done,
            } => {
                let grace = self.opts.dns.grace.as_secs();
                let learned = self.backend.learn(&self.current, &name, &answers, grace);
                if let Err(e) = &learned {
                    tracing::error!("learning the addresses of {name}: {e}");
                }
                let _ = done.send(learned.is_ok());
                self.save_learned();
            }
            crate::dns::Ask::Refused {
                name,
                qtype,
                peer,
                tcp,
                audit,
            } => {
                tracing::debug!(%name, %qtype, %peer, audit, "DNS question refused");
                let ev = dns_event(peer, tcp, audit, self.state.generation, self.opts.dns.port);
                self.pipeline.named(ev, None, name.into());
            }
        }
    }

    /// Leaves the learned addresses for the next daemon (run dir).
    fn save_learned(&mut self) {
        let path = self.opts.run_dir.join(crate::run::LEARNED_FILE);
        if let Some(Err(e)) = self.backend.learned().map(|l| l.save(&path)) {
            tracing::warn!("cannot save learned addresses to {}: {e}", path.display());
        }
    }

    /// Reads up to `max` records; returns how many were read.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = ring.next() else { break };
            n += 1;
            if item.len() < std::mem::size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole FlowEvent; read unaligned as plain data.
            let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            self.offer(ev);
        }
        self.flush_awaiting(SOURCE_WAIT);
        n
    }

    /// An allowed TCP connect waits for its source (the source record of
    /// the same socket), which completes it; everything else goes on at once.
    fn offer(&mut self, ev: FlowEvent) {
        use warden_common::{hook, verdict};
        if ev.hook == hook::CONNECT_SOURCE {
            if let Some((mut connect, _)) = self.awaiting_source.remove(&ev.cookie) {
                connect.saddr = ev.saddr;
                connect.sport = ev.sport;
                self.publish(connect);
            }
            return;
        }
        let awaits = ev.verdict == verdict::ALLOW
            && ev.proto == 6
            && ev.cookie != 0
            && matches!(ev.hook, hook::CONNECT4 | hook::CONNECT6);
        if !awaits {
            return self.publish(ev);
        }
        if self.awaiting_source.len() >= MAX_AWAITING {
            self.flush_awaiting(Duration::ZERO);
        }
        self.awaiting_source
            .insert(ev.cookie, (ev, std::time::Instant::now()));
    }

    /// Publishes, as they are, the connects that waited longer than `wait`
    /// (their connect() failed before the kernel chose a source).
    pub fn flush_awaiting(&mut self, wait: Duration) {
        let now = std::time::Instant::now();
        let due: Vec<u64> = self
            .awaiting_source
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= wait)
            .map(|(&cookie, _)| cookie)
            .collect();
        for cookie in due {
            if let Some((ev, _)) = self.awaiting_source.remove(&cookie) {
                self.publish(ev);
            }
        }
    }

    fn publish(&mut self, ev: FlowEvent) {
        let rule = self.current.rule_description(ev.rule_id);
        match self.host_of(&ev) {
            Some(name) => self.pipeline.named(ev, rule, name),
            None => self.pipeline.flow(ev, rule),
        }
    }

    /// The name a connection allowed by a host rule was allowed for.
    fn host_of(&mut self, ev: &FlowEvent) -> Option<Arc<str>> {
        if ev.reason != warden_common::reason::HOST_ALLOWED {
            return None;
        }
        let addr = std::net::Ipv6Addr::from(ev.daddr).to_canonical();
        let host = self
            .current
            .rules
            .get(ev.rule_id as usize)
            .map(|r| r.description.clone());
        let learned = self.backend.learned()?;
        learned
            .name_of(addr, |name| {
                self.current.egress.iter().flat_map(|e| &e.hosts).any(|h| {
                    h.rules.iter().any(|r| r.rule_id == ev.rule_id) && h.host.matches(name)
                })
            })
            .map(Arc::from)
            .or(host)
    }

    /// The nft backend's records, read back through NFLOG.
    pub fn read_nflog(&mut self, sock: &mut NflogSocket) {
        for ev in sock.read() {
            self.pipeline
                .flow(ev, self.current.rule_description(ev.rule_id));
        }
        self.nflog_lost = sock.lost();
    }

    /// What the kernel lost since this daemon started.
    fn kernel_lost(&self) -> KernelLosses {
        let now = self.backend.kernel_losses();
        KernelLosses {
            lost: now.lost.saturating_sub(self.at_start.lost) + self.nflog_lost,
            suppressed: now.suppressed.saturating_sub(self.at_start.suppressed),
        }
    }

    /// Reports new losses; the state file follows (status lags behind,
    /// enforcement and events go on).
    pub fn report_losses(&mut self) {
        let losses = self.pipeline.report_losses(self.kernel_lost());
        let learned = self.backend.learned().map_or(0, |l| l.len() as u64);
        let dns = self.dns_counters.as_ref().map(|c| c.snapshot(learned));
        if losses != self.state.events || dns != self.state.dns {
            self.state.events = losses;
            self.state.dns = dns;
            if let Err(e) = self.state.write(&self.opts.run_dir) {
                tracing::error!("cannot update the state file: {e}");
            }
        }
    }

    /// Reads what is left, reports the last losses and leaves enforcement
    /// pinned.
    pub fn stop(mut self, mut inputs: Inputs) -> Result<(), DaemonError> {
        if let Some(ring) = inputs.ring.as_mut() {
            self.drain(ring.get_mut(), usize::MAX);
        }
        self.flush_awaiting(Duration::ZERO);
        if let Some(nflog) = inputs.nflog.as_mut() {
            self.read_nflog(nflog.get_mut());
        }
        let kernel_lost = self.kernel_lost();
        self.pipeline.report_losses(kernel_lost);
        let last = self.pipeline.shutdown(
            json!({ "enforcement": "stays pinned; `warden down` removes it" }),
            kernel_lost,
        );
        if last.total() > self.state.events.total() {
            tracing::warn!("events lost while stopping: {}", json!(last));
        }
        self.state.events = last;
        self.state.write(&self.opts.run_dir)?;
        if let Some(r) = &self.opts.proxy_reports {
            let _ = std::fs::remove_file(&r.socket);
        }
        Ok(())
    }
}

/// A refused DNS question as a flow record: from the asking socket to the
/// resolver (the kernel steered it here, so its process is not known).
fn dns_event(
    peer: std::net::SocketAddr,
    tcp: bool,
    audit: bool,
    generation: u32,
    port: u16,
) -> FlowEvent {
    use warden_common::{hook, mapped_v4, reason, verdict};
    let addr = |ip: std::net::IpAddr| match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => mapped_v4(v4.octets()),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    // SAFETY: plain data; every field is set below or zero.
    let mut ev: FlowEvent = unsafe { std::mem::zeroed() };
    ev.ts_ns = warden_runtime::clock::boot_ns();
    ev.family = if peer.is_ipv4() { 2 } else { 10 };
    ev.proto = if tcp { 6 } else { 17 };
    ev.hook = hook::DNS;
    ev.verdict = if audit {
        verdict::WOULD_DENY
    } else {
        verdict::DENY
    };
    ev.reason = reason::NAME_NOT_ALLOWED;
    ev.generation = generation;
    ev.saddr = addr(peer.ip());
    ev.sport = peer.port();
    ev.daddr = addr(peer.ip());
    ev.dport = port;
    ev
}

/// Milliseconds spent reading and compiling a policy, and swapping it in.
type Timing = (f64, f64);
