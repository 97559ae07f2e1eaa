//! Developer tasks: `cargo xtask setup | build | run | test | vm | demo | bench | shape`.
//!
//! Each task is a module; this file only parses arguments and hands over.

mod cmd;
mod run;
mod setup;
mod shape;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ollama-warden developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and the tests need (idempotent).
    Setup,
    /// Build the warden binary (eBPF object included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run `warden daemon` on its embedded default policy.
    Run {
        /// Extra arguments for `warden daemon`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks (release build) and rewrite their sections of BENCHMARKS.md.
    Bench {
        /// Only these benchmarks (xdp, flood, pipeline, connect, apply, proxy, hostile, footprint); default: all.
        names: Vec<String>,
    },
    /// Build the Debian package (release binary, units, config, docs) into target/deb/.
    Deb,
    /// A one-minute tour in a throwaway lab: proxy, daemon, attackers, and what a SIEM sees.
    Demo,
    /// The privileged suite on other kernels, or a systemd host, in qemu guests.
    Vm {
        /// Kernels: 6.1, 6.12, a Debian linux-image-* package, or `host`; default 6.1 and 6.12.
        kernels: Vec<String>,
        /// Only these test binaries (tests/tests/NAME.rs), comma-separated, or `smoke`.
        #[arg(long)]
        tests: Option<String>,
        /// Boot a Debian 12 systemd host and check the .deb and its units in it.
        #[arg(long)]
        systemd: bool,
        /// Test-name filters passed to each test binary.
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// The crate graph and the longest functions (the layout's figures).
    Shape {
        /// How many functions to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Setup, fmt check, clippy, unit tests and privileged integration tests.
    Test {
        /// Skip setup (when you know the machine is ready).
        #[arg(long)]
        no_setup: bool,
        /// Skip the qemu guests (kernel smoke on 6.1 and 6.12, the systemd host).
        #[arg(long)]
        no_vm: bool,
        /// Only run integration tests whose name contains this filter.
        filter: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => run::build(release),
        Task::Run { args } => run::daemon(&args),
        Task::Demo => run::demo(),
        Task::Deb => run::deb(),
        Task::Bench { names } => run::bench(&names),
        Task::Shape { top } => shape::run(top),
        Task::Vm {
            kernels,
            tests,
            systemd,
            filter,
        } => vm::run(&vm::Args {
            kernels,
            tests,
            systemd,
            filter,
        }),
        Task::Test {
            no_setup,
            no_vm,
            filter,
        } => test::run(!no_setup, !no_vm && filter.is_none(), filter.as_deref()),
    }
}
