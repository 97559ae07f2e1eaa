//! `warden ban list|add|del`.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use warden_enforce::ban::BanStore;

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
        #[arg(long = "for", default_value = "10m", value_parser = warden_runtime::units::parse_duration)]
        duration: Duration,
    },
    /// Lifts a ban.
    Del { source: IpAddr },
}

pub fn run(command: BanCommand, pin_dir: &Path, nft_table: &str) -> i32 {
    let done = BanStore::open(pin_dir, nft_table).and_then(|mut store| match command {
        BanCommand::List { json } => {
            print_bans(&store.list(), json);
            Ok(())
        }
        BanCommand::Add { source, duration } => store.add(source, duration),
        BanCommand::Del { source } => match store.remove(source)? {
            true => Ok(()),
            false => Err(format!("{source} is not banned")),
        },
    });
    match done {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("warden: {e}");
            1
        }
    }
}

fn print_bans(bans: &[(IpAddr, Duration)], json: bool) {
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
}
