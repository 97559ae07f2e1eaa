//! `warden ban list|add|del`: the sources banned from the protected ports and
//! the proxy's port, as the kernel holds them (eBPF: the pinned `BANS` map;
//! nftables: warden's ban sets). Bans come from the proxy's brute-force
//! detection through the daemon, or from an operator here; each ends by itself.

use crate::enforce::maps::Maps;
use crate::enforce::nft::NftBackend;
use clap::Subcommand;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Subcommand)]
pub enum BanCommand {
    /// The bans in force and the time each has left.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Bans a source (the protected ports and the proxy's port).
    Add {
        source: IpAddr,
        /// How long (`90s`, `10m`, `2h`).
        #[arg(long = "for", default_value = "10m", value_parser = parse_for)]
        duration: Duration,
    },
    /// Lifts a ban.
    Del { source: IpAddr },
}

fn parse_for(s: &str) -> Result<Duration, String> {
    crate::proxy::config::parse_duration(s)
}

/// Where bans are kept on this host: the eBPF maps if pinned, else warden's
/// nft table.
enum Store {
    Ebpf(Box<Maps>),
    Nft(NftBackend),
}

fn store(pin_dir: &Path, nft_table: &str) -> Result<Store, String> {
    if let Ok(m) = Maps::open_pinned(pin_dir) {
        return Ok(Store::Ebpf(Box::new(m)));
    }
    match NftBackend::open(nft_table) {
        Ok(b) if b.generation() > 0 => Ok(Store::Nft(b)),
        _ => Err("no warden enforcement on this host (nothing pinned, no nft table)".into()),
    }
}

/// The bans in force (source, time left).
pub fn in_force(pin_dir: &Path, nft_table: &str) -> Vec<(IpAddr, Duration)> {
    match store(pin_dir, nft_table) {
        Ok(Store::Ebpf(mut m)) => m.bans_in_force(),
        Ok(Store::Nft(b)) => b.bans(),
        Err(_) => Vec::new(),
    }
}

pub fn run(command: BanCommand, pin_dir: &Path, nft_table: &str) -> i32 {
    let mut store = match store(pin_dir, nft_table) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warden: {e}");
            return 1;
        }
    };
    let done = match command {
        BanCommand::List { json } => {
            let bans = match &mut store {
                Store::Ebpf(m) => m.bans_in_force(),
                Store::Nft(b) => b.bans(),
            };
            if json {
                let list: Vec<_> = bans
                    .iter()
                    .map(|(ip, left)| serde_json::json!({ "source": ip.to_string(), "seconds_left": left.as_secs() }))
                    .collect();
                println!("{}", serde_json::Value::from(list));
            } else if bans.is_empty() {
                println!("no bans");
            } else {
                for (ip, left) in bans {
                    println!("{ip:<40} {}s left", left.as_secs());
                }
            }
            Ok(())
        }
        BanCommand::Add { source, duration } => match &mut store {
            Store::Ebpf(m) => m.ban(source, duration, None).map_err(|e| e.to_string()),
            Store::Nft(b) => b.ban(source, duration, None).map_err(|e| e.to_string()),
        },
        BanCommand::Del { source } => {
            let lifted = match &mut store {
                Store::Ebpf(m) => m.unban(source).map_err(|e| e.to_string()),
                Store::Nft(b) => b.unban(source).map_err(|e| e.to_string()),
            };
            match lifted {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("{source} is not banned")),
                Err(e) => Err(e),
            }
        }
    };
    match done {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("warden: {e}");
            1
        }
    }
}
