//! The `warden` command line: argument parsing and dispatch to the library.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;
use warden_daemon::run as daemon;
use warden_daemon::state::DaemonState;
use warden_daemon::status::{self, BackendKind, StatusReport};
use warden_enforce::compile::PolicyMode;
use warden_enforce::{ebpf, nft::NftBackend};

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Kernel-enforced access control for Ollama hosts"
)]
pub struct Cli {
    /// warden's bpffs directory (maps and links are pinned here).
    #[arg(
        long,
        global = true,
        env = "WARDEN_PIN_DIR",
        default_value = "/sys/fs/bpf/ollama-warden"
    )]
    pin_dir: PathBuf,
    /// Directory for the daemon's state file.
    #[arg(
        long,
        global = true,
        env = "WARDEN_RUN_DIR",
        default_value = "/run/ollama-warden"
    )]
    run_dir: PathBuf,
    /// The nftables table warden owns (nft backend).
    #[arg(long, global = true, default_value = warden_enforce::nft::DEFAULT_TABLE)]
    nft_table: String,
    /// Log level of the daemon and the proxy (error, warn, info, debug, trace,
    /// or RUST_LOG-style directives); default: `RUST_LOG`, else info. Logs go
    /// to stderr (with syslog priorities under systemd), never to stdout.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate and inspect policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Enforce a policy (the embedded default when no --policy is given).
    Daemon(crate::daemon_cmd::DaemonArgs),
    /// Sources banned from the protected ports and the proxy (brute force, or by hand).
    Ban {
        #[command(subcommand)]
        command: crate::ban::BanCommand,
    },
    /// Backend, attached programs, policy generation, counters.
    Status {
        #[arg(long)]
        json: bool,
        /// Print one line and exit 1 unless enforcement is in force (for
        /// `ExecStartPre=` of the units it protects: Ollama never starts unprotected).
        #[arg(long, conflicts_with = "json")]
        require_enforcing: bool,
    },
    /// Stop the daemon and detach and unpin everything warden owns.
    Down,
    /// The TLS-terminating auth proxy for the Ollama API.
    Proxy {
        /// Proxy config file (TOML; see docs/PROXY.md).
        #[arg(long)]
        config: PathBuf,
        /// Check the config and its TLS files, print problems as file:line:col, and exit.
        #[arg(long)]
        check: bool,
    },
    /// The running daemon's decisions, live: one readable line each on a
    /// terminal, JSON lines when piped.
    Events(crate::events_cmd::EventsArgs),
    /// Inspect this host (what listens on the port, its process, cgroup, unit and
    /// environment, current clients) and print a starting policy, in audit mode.
    Discover {
        #[arg(long, default_value_t = 11434)]
        port: u16,
    },
    /// Check this host against the Ollama hardening guides; exit 1 if a check fails.
    Doctor(DoctorArgs),
    /// Write an evidence bundle for auditors: the policy in force, enforcement,
    /// hardening, doctor, the proxy's identities and the period's event
    /// counts, with a SHA256SUMS signed when --key is given (docs/EVIDENCE.md).
    Evidence(crate::evidence::EvidenceArgs),
    /// Credentials for proxy identities.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh bearer token (once) and the config line with its hash.
    New {
        /// The identity the token is for.
        name: String,
        /// Expiry written into the config line (TOML date-time, e.g. 2027-01-31T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Read a password from stdin and print its argon2id hash as a config line.
    Basic {
        /// The identity (basic-auth user name).
        name: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Exit 0 if valid; otherwise print every problem as file:line:col: message.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also require a valid minisign signature (FILE.minisig) by this key.
        #[arg(long, value_name = "PUBKEY")]
        require_signature: Option<String>,
    },
    /// Sign a policy directory as a set: write DIR/MANIFEST.json (every
    /// *.toml file with its SHA-256, and a serial one above the last) and its
    /// minisign signature. A daemon with --require-signature then loads
    /// exactly these files, and refuses an older serial (a replay).
    Sign {
        dir: PathBuf,
        /// The minisign secret key (minisign asks for an encrypted key's password).
        #[arg(long, value_name = "SECRET_KEY")]
        key: PathBuf,
        /// The serial to write (default: the last one plus 1).
        #[arg(long)]
        serial: Option<u64>,
    },
    /// Print the merged policy (the embedded default without paths) as JSON.
    Show {
        /// Print what the backends load instead.
        #[arg(long)]
        compiled: bool,
        paths: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct DoctorArgs {
    #[arg(long, default_value_t = 11434)]
    port: u16,
    #[arg(long, default_value = "/etc/ollama-warden/proxy.toml")]
    proxy_config: PathBuf,
    /// Where to look for unit files; repeatable (default: systemd's system unit path).
    #[arg(long, value_name = "DIR")]
    unit_dir: Vec<PathBuf>,
    /// Ollama's systemd unit (default: the unit of the process listening on the port).
    #[arg(long, value_name = "UNIT")]
    ollama_unit: Option<String>,
    #[arg(long)]
    json: bool,
}

fn doctor(args: DoctorArgs, pin_dir: PathBuf, run_dir: PathBuf, nft_table: String) -> i32 {
    use warden_host::doctor;
    let unit_dirs = match args.unit_dir.is_empty() {
        true => warden_host::procfs::UNIT_DIRS
            .iter()
            .map(PathBuf::from)
            .collect(),
        false => args.unit_dir,
    };
    let opts = doctor::Options {
        port: args.port,
        proxy_config: args.proxy_config,
        unit_dirs,
        ollama_unit: args.ollama_unit,
        pin_dir,
        run_dir,
        nft_table,
    };
    let checks = doctor::run(&opts);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).unwrap_or_default()
        );
    } else {
        doctor::print(&checks);
    }
    i32::from(checks.iter().any(|c| c.status == doctor::Status::Fail))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::logs::init(cli.log_level.as_deref());
    match cli.command {
        Command::Policy {
            command:
                PolicyCommand::Check {
                    paths,
                    require_signature,
                },
        } => policy_check(&paths, require_signature.as_deref()),
        Command::Policy {
            command: PolicyCommand::Sign { dir, key, serial },
        } => match warden_daemon::signature::sign_dir(&dir, &key, serial) {
            Ok(m) => {
                println!(
                    "signed {} file(s) of {} as serial {}",
                    m.files.len(),
                    dir.display(),
                    m.serial
                );
                0
            }
            Err(e) => {
                eprintln!("warden policy sign: {e}");
                1
            }
        },
        Command::Policy {
            command: PolicyCommand::Show { compiled, paths },
        } => policy_show(&paths, compiled, &cli.run_dir),
        Command::Daemon(args) => {
            crate::daemon_cmd::run(args, cli.pin_dir, cli.run_dir, cli.nft_table)
        }
        Command::Status {
            json,
            require_enforcing: true,
        } => {
            debug_assert!(!json);
            require_enforcing(&cli.pin_dir, &cli.run_dir, &cli.nft_table)
        }
        Command::Status { json, .. } => status(&cli.pin_dir, &cli.run_dir, &cli.nft_table, json),
        Command::Down => down(&cli.pin_dir, &cli.run_dir, &cli.nft_table),
        Command::Ban { command } => crate::ban::run(command, &cli.pin_dir, &cli.nft_table),
        Command::Proxy { config, check } => proxy(&config, check),
        Command::Token { command } => token(command),
        Command::Events(args) => crate::events_cmd::run(args, &cli.run_dir),
        Command::Discover { port } => {
            let mut found = warden_host::discover::inspect(port);
            // Names a running daemon learned for addresses the server talks to.
            let learned = warden_enforce::learned::Learned::load(
                &cli.run_dir.join(warden_daemon::run::LEARNED_FILE),
            );
            found.peer_names = learned
                .list()
                .into_iter()
                .map(|l| (l.address, l.name))
                .collect();
            print!("{}", warden_host::discover::render(&found));
            0
        }
        Command::Doctor(args) => doctor(args, cli.pin_dir, cli.run_dir, cli.nft_table),
        Command::Evidence(args) => {
            crate::evidence::run(args, &cli.pin_dir, &cli.run_dir, &cli.nft_table)
        }
    }
}

fn policy_check(paths: &[PathBuf], require_signature: Option<&str>) -> i32 {
    let key = match require_signature
        .map(warden_daemon::signature::PolicyKey::load)
        .transpose()
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match daemon::load_policy(paths, key.as_ref()) {
        Ok((policy, c)) => {
            for w in &c.warnings {
                eprintln!("{w}");
            }
            let hosts: usize = c.egress.iter().map(|e| e.hosts.len()).sum();
            let mut extra = String::new();
            if hosts > 0 {
                extra.push_str(&format!(" ({hosts} host rule(s))"));
            }
            if !c.remote.is_empty() {
                extra.push_str(&format!("; {} remote network(s)", c.remote.len()));
            }
            println!(
                "ok: {} file(s); ports {:?}; {} ingress prefix(es); {} local cgroup(s); {} egress polic(ies){extra}; mode {}; {}",
                policy.sources.len(),
                c.ports,
                c.ingress.len(),
                c.cgroups.len(),
                c.egress.len(),
                match c.mode() {
                    PolicyMode::Enforce => "enforce".to_owned(),
                    m => format!("{} (audit: {})", m.as_str(), c.audit_sections().join(", ")),
                },
                c.digest
            );
            0
        }
        Err(daemon::DaemonError::Policy(text)) => {
            eprintln!("{text}");
            1
        }
        Err(e) => {
            eprintln!("warden: {e}");
            1
        }
    }
}

fn policy_show(paths: &[PathBuf], compiled: bool, run_dir: &Path) -> i32 {
    match daemon::load_policy(paths, None) {
        Ok((policy, c)) => {
            let v = if compiled {
                // What each backend loads: the map entries (eBPF) and the ruleset (nft).
                let prefix = warden_runtime::cgroupfs::cgroup2_mount()
                    .ok()
                    .and_then(|m| m.strip_prefix("/sys/fs/cgroup").ok().map(Path::to_owned))
                    .unwrap_or_default();
                let all = |n: usize| vec![true; n];
                let ruleset = warden_enforce::nft::script(
                    warden_enforce::nft::DEFAULT_TABLE,
                    &prefix,
                    &c,
                    &all(c.cgroups.len()),
                    &all(c.egress.len()),
                    0,
                );
                // The addresses host rules allow now, as a running daemon learned them.
                let learned = warden_enforce::learned::Learned::load(
                    &run_dir.join(warden_daemon::run::LEARNED_FILE),
                );
                let learned: Vec<_> = learned
                    .list()
                    .into_iter()
                    .filter(|l| c.allows_name(&l.name))
                    .collect();
                serde_json::to_value(&c).map(|mut v| {
                    v["nft_ruleset"] = ruleset.unwrap_or_else(|e| format!("error: {e}")).into();
                    v["learned"] = serde_json::to_value(learned).unwrap_or_default();
                    v
                })
            } else {
                serde_json::to_value(&policy)
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&v.unwrap_or_default()).unwrap_or_default()
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn status(pin_dir: &Path, run_dir: &Path, nft_table: &str, as_json: bool) -> i32 {
    let report = status::report(pin_dir, run_dir, nft_table);
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_status(&report);
    }
    0
}

/// `warden status --require-enforcing`: 0 and "enforcing" only when the status
/// report says so; otherwise 1 and why not.
fn require_enforcing(pin_dir: &Path, run_dir: &Path, nft_table: &str) -> i32 {
    let r = status::report(pin_dir, run_dir, nft_table);
    if r.enforcing {
        println!(
            "enforcing: {} backend, policy generation {}",
            r.backend.as_str(),
            r.generation.unwrap_or(0)
        );
        return 0;
    }
    let why = if let Some(p) = &r.pin_dir_problem {
        format!("the pin directory is not warden's: {p}")
    } else if !r.missing_links.is_empty() {
        format!("programs not attached: {}", r.missing_links.join(", "))
    } else if r.backend == BackendKind::None {
        format!("nothing is pinned in {}", pin_dir.display())
    } else {
        "the daemon has not finished starting".to_owned()
    };
    eprintln!("warden: not enforcing: {why}");
    1
}

fn print_status(r: &StatusReport) {
    println!("enforcing:   {}", r.enforcing);
    if !r.missing_links.is_empty() {
        println!(
            "missing:     {} (not pinned: detached unless the daemon holds them)",
            r.missing_links.join(" ")
        );
    }
    if let Some(why) = &r.pin_dir_problem {
        println!("pin dir:     {why}");
    }
    println!("backend:     {}", r.backend.as_str());
    match r.daemon.pid.filter(|_| r.daemon.running) {
        Some(pid) => println!("daemon:      running (pid {pid})"),
        None => println!("daemon:      not running (pinned enforcement, if any, stays in force)"),
    }
    let Some(generation) = r.generation else {
        return;
    };
    let policy = r.policy.as_ref();
    println!(
        "generation:  {generation} (digest {})",
        policy.map_or("?", |p| p.digest.as_str())
    );
    if let Some(p) = policy.filter(|p| p.mode != PolicyMode::Enforce) {
        println!(
            "mode:        {}: audit only (not blocked): {}",
            p.mode.as_str(),
            p.audit.join(", ")
        );
    }
    println!("links:       {}", r.links.join(" "));
    if let Some(c) = &r.counters {
        println!(
            "counters:    {}",
            serde_json::to_string(c).unwrap_or_default()
        );
    }
    if let Some(e) = &r.events {
        println!(
            "events:      {} read, {} lost in the kernel, {} suppressed (flood), {} dropped (queue full), {} folded into aggregates",
            e.records, e.kernel_lost, e.kernel_suppressed, e.queue_dropped, e.aggregated
        );
        for s in &e.sinks {
            println!(
                "  sink {}: {} written, {} dropped, {} failed, {} pending",
                s.sink, s.written, s.dropped, s.failed, s.pending
            );
        }
    }
    for rule in r.rules.iter().flatten() {
        println!(
            "  rule {:>4} {:>10} hits  {} {}",
            rule.id, rule.hits, rule.description, rule.origin
        );
    }
    for c in &r.proxy_certificates {
        println!(
            "certificate: proxy {} {} expires in {} day(s) ({})",
            c.certificate,
            c.subject,
            c.seconds_left.div_euclid(86_400),
            c.path
        );
    }
    if let Some(d) = &r.dns {
        println!(
            "dns:         {} answered, {} refused, {} failed, {} dropped; {} address(es) learned",
            d.answered, d.refused, d.failed, d.dropped, d.learned
        );
    }
    if !r.learned.is_empty() {
        println!("learned:     addresses answered for host rules (time left)");
    }
    for l in &r.learned {
        println!("  {:<40} {} ({} s)", l.name, l.address, l.expires_in_s);
    }
}

fn down(pin_dir: &Path, run_dir: &Path, nft_table: &str) -> i32 {
    if let Some(state) = DaemonState::read(run_dir)
        && status::process_is_warden(state.pid)
    {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(state.pid as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if !status::process_is_warden(state.pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_file(run_dir.join("state.json"));
    match NftBackend::down(nft_table) {
        Ok(true) => println!("nftables table inet {nft_table} deleted"),
        Ok(false) => {}
        Err(e) => eprintln!("warden down: {e}"),
    }
    match ebpf::down(pin_dir) {
        Ok(removed) if removed.is_empty() => {
            println!("nothing pinned in {}", pin_dir.display());
            0
        }
        Ok(removed) => {
            println!(
                "enforcement stopped; unpinned {} object(s) from {}",
                removed.len(),
                pin_dir.display()
            );
            0
        }
        Err(e) => {
            eprintln!("warden down: {e}");
            1
        }
    }
}

/// An error and its sources, one `: ` apart.
fn proxy(config: &Path, check: bool) -> i32 {
    let result = if check {
        warden_proxy::server::check(config).map(|c| {
            println!(
                "{}: ok ({} identities)",
                config.display(),
                c.identities.len()
            );
        })
    } else {
        warden_proxy::server::run(config)
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    }
}

fn token(command: TokenCommand) -> i32 {
    use warden_proxy::identity;
    match command {
        TokenCommand::New { name, expires } => {
            if let Some(e) = &expires
                && !matches!(e.parse::<toml_edit::Value>(), Ok(toml_edit::Value::Datetime(d)) if d.value().offset.is_some() || d.value().time.is_none())
            {
                eprintln!(
                    "warden token new: --expires `{e}` is not a TOML date-time with an offset (e.g. 2027-01-31T00:00:00Z)"
                );
                return 2;
            }
            let token = identity::random_token();
            let hash = identity::token_hash(&token);
            eprintln!(
                "# token for `{name}`, shown once: clients send `Authorization: Bearer TOKEN`"
            );
            println!("{token}");
            eprintln!("# add to the [[identity]] with name = \"{name}\":");
            match expires {
                None => println!("tokens = [\"{hash}\"]"),
                Some(e) => println!("tokens = [{{ hash = \"{hash}\", expires = {e} }}]"),
            }
            0
        }
        TokenCommand::Basic { name } => {
            let mut password = String::new();
            if std::io::stdin().read_line(&mut password).is_err() {
                eprintln!("warden token basic: cannot read a password from stdin");
                return 1;
            }
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("warden token basic: empty password");
                return 1;
            }
            eprintln!(
                "# add to the [[identity]] with name = \"{name}\" (basic-auth user `{name}`):"
            );
            println!("basic = \"{}\"", identity::hash_password(password));
            0
        }
    }
}
