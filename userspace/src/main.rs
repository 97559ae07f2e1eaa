//! `warden`: the command line over the library crates (see the workspace
//! README for the layout).

mod ban;
mod cli;
mod daemon_cmd;
mod events_cmd;
mod evidence;
mod logs;

fn main() {
    std::process::exit(cli::main());
}
