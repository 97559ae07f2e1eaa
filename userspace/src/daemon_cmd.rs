//! `warden daemon`: its arguments, turned into the daemon's options, and the
//! runtime it runs on.

use std::path::PathBuf;
use std::time::Duration;

use warden_daemon::run::{self as daemon, BackendChoice};
use warden_enforce::ebpf;

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// Policy file or directory (policy.d); repeatable.
    #[arg(long)]
    pub policy: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// Event sink, repeatable: stdout, PATH, file://PATH?max_bytes=100M&keep=5,
    /// syslog, syslog+unix://PATH, syslog+udp://HOST:PORT, syslog+tcp://HOST:PORT,
    /// udp://HOST:PORT, tcp://HOST:PORT (syslog specs take ?facility=NAME).
    /// Default: stdout.
    #[arg(long, value_name = "SINK")]
    pub events: Vec<warden_events::sink::SinkSpec>,
    /// Encoding of events: ocsf, ecs, raw, or compact (one readable line
    /// each). Default: compact when the events go to stdout (no --events)
    /// and stdout is a terminal, else ocsf.
    #[arg(long, value_enum)]
    pub event_format: Option<warden_events::EventFormat>,
    /// Cgroup where the cgroup programs attach (default: the cgroup2 root, i.e. the whole host).
    #[arg(long)]
    pub attach_cgroup: Option<PathBuf>,
    /// Accept only policy files signed (minisign, FILE.minisig) by this public key (file or base64).
    #[arg(long, value_name = "PUBKEY")]
    pub require_signature: Option<String>,
    /// Seconds within which repeated denies (same source, destination and reason)
    /// are reported as one event with a count; the first is always reported at once. 0 = off.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub aggregate_secs: f64,
    /// Seconds between checks for lost events (reported as `loss` events when there are new ones).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub loss_report_secs: f64,
    /// Seconds between scans for new interfaces and newly created policy cgroups.
    #[arg(long, default_value_t = 1.0)]
    pub rescan_secs: f64,
    /// Seconds a local connection to a protected port waits for the proxy's report
    /// that explains it (then it is reported as unattributed). 0 = no proxy channel.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub correlate_secs: f64,
    /// The socket where `warden proxy` reports its upstream connections
    /// (default: RUN_DIR/proxy.sock).
    #[arg(long, value_name = "PATH")]
    pub proxy_socket: Option<PathBuf>,
    /// The proxy's cgroup (relative to the cgroup2 root): only processes in it may report;
    /// `@pod` = the Kubernetes pod warden runs in (the proxy as a second container).
    #[arg(
        long,
        default_value = "system.slice/ollama-warden-proxy.service",
        value_name = "CGROUP"
    )]
    pub proxy_cgroup: String,
    /// Also require reports to come from this uid.
    #[arg(long, value_name = "UID")]
    pub proxy_uid: Option<u32>,
    /// Flow records each CPU may emit per second (eBPF backend); under a flood
    /// the rest are counted as `kernel_suppressed`, verdicts and rule counters
    /// unaffected. 0 = no cap.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub kernel_event_rate: u32,
    /// The kernel programs' debug diagnostics, one line per recorded
    /// verdict in the daemon's log (target `kernel`). Off: removed at load,
    /// no cost. Applies to programs this daemon attaches, not adopted ones.
    #[arg(long, value_enum, default_value = "off", value_name = "LEVEL")]
    pub kernel_log_level: warden_enforce::kernel_log::KernelLogLevel,
    /// Serve Prometheus metrics at http://ADDR/metrics (per-rule counters,
    /// drops, losses, policy generation, backend); without ADDR, 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Audit every section whatever the policy says: evaluate and report
    /// (`would_deny`), block nothing. For a first deployment; the policy's
    /// `mode` keys do the same per section, switchable by a reload.
    #[arg(long)]
    pub audit: bool,
    /// Bans the proxy asks for also apply to sources the ingress policy
    /// allows explicitly (by default those are only refused by the proxy).
    #[arg(long)]
    pub ban_allowed_sources: bool,
    /// Port of the resolver on 127.0.0.1 and ::1 that the DNS traffic of
    /// cgroups with host rules is steered to (a privileged port, so no
    /// unprivileged process can take it while the daemon is down). 0 = none:
    /// host rules then allow nothing.
    #[arg(long, default_value_t = 54, value_name = "PORT")]
    pub dns_port: u16,
    /// Resolver that allowed questions are forwarded to, repeatable
    /// (default: the nameservers of /etc/resolv.conf, port 53).
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_upstream: Vec<std::net::SocketAddr>,
    /// Seconds added to every DNS answer's TTL before its addresses stop
    /// being allowed (clients may use an answer a little past its TTL).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub dns_grace_secs: f64,
    /// How a question for a name no host rule allows is answered.
    #[arg(long, value_enum, default_value = "refused")]
    pub dns_refuse: warden_daemon::dns::Refusal,
}

pub fn run(args: DaemonArgs, pin_dir: PathBuf, run_dir: PathBuf, nft_table: String) -> i32 {
    let opts = args.options(pin_dir, run_dir, nft_table);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match rt
        .map_err(daemon::DaemonError::from)
        .and_then(|rt| rt.block_on(daemon::run(opts)))
    {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{}", warden_runtime::error_chain(&e));
            e.exit_code()
        }
    }
}

/// Seconds as given, at least `min`; `default` where they cannot be a duration.
fn secs(s: f64, min: f64, default: Duration) -> Duration {
    Duration::try_from_secs_f64(s.max(min)).unwrap_or(default)
}

impl DaemonArgs {
    fn options(self, pin_dir: PathBuf, run_dir: PathBuf, nft_table: String) -> daemon::Options {
        let correlate = secs(self.correlate_secs, 0.0, Duration::ZERO);
        let proxy_reports = (!correlate.is_zero()).then(|| warden_events::reports::Options {
            socket: self
                .proxy_socket
                .unwrap_or_else(|| run_dir.join("proxy.sock")),
            cgroup: match (
                self.proxy_cgroup.as_str(),
                warden_runtime::cgroupfs::own_pod(),
            ) {
                (warden_policy::OWN_POD, Ok(pod)) => pod.to_string(),
                (c, _) => c.trim_matches('/').to_owned(),
            },
            uid: self.proxy_uid,
        });
        daemon::Options {
            policy: self.policy,
            backend: self.backend,
            ebpf: ebpf::Options {
                pin_dir,
                attach_cgroup: self.attach_cgroup,
                kernel_log: self.kernel_log_level,
            },
            nft_table,
            require_signature: self.require_signature,
            event_format: self.event_format.unwrap_or(
                if self.events.is_empty() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    warden_events::EventFormat::Compact
                } else {
                    warden_events::EventFormat::Ocsf
                },
            ),
            events: if self.events.is_empty() {
                vec!["stdout".parse().expect("stdout is a sink")]
            } else {
                self.events
            },
            aggregate: secs(self.aggregate_secs, 0.0, Duration::ZERO),
            loss_report: secs(self.loss_report_secs, 0.1, Duration::from_secs(10)),
            run_dir,
            rescan: secs(self.rescan_secs, 0.05, Duration::from_secs(1)),
            proxy_reports,
            correlate,
            kernel_event_rate: self.kernel_event_rate,
            audit: self.audit,
            metrics: self.metrics,
            ban_allowed_sources: self.ban_allowed_sources,
            dns: warden_daemon::dns::DnsOptions {
                port: self.dns_port,
                upstreams: self.dns_upstream,
                grace: secs(self.dns_grace_secs, 0.0, Duration::from_secs(10)),
                refuse: self.dns_refuse,
            },
        }
    }
}
