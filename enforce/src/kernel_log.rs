//! The eBPF programs' debug diagnostics (aya-log), off unless asked for.
//!
//! The level is a read-only global of the object, set at load: at `off` the
//! verifier removes every log call, so production pays nothing. At another
//! level the programs write records to their `AYA_LOGS` ring buffer, and the
//! daemon drains it into its own log under the target `kernel`. Programs
//! adopted from an earlier daemon keep the level they were loaded with.

use aya_log::EbpfLogger;

/// How much the kernel programs log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum KernelLogLevel {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLogLevel {
    /// The value of the object's `AYA_LOG_LEVEL` global (aya-log's levels).
    pub fn global(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Error => aya_log::Level::Error as u8,
            Self::Warn => aya_log::Level::Warn as u8,
            Self::Info => aya_log::Level::Info as u8,
            Self::Debug => aya_log::Level::Debug as u8,
            Self::Trace => aya_log::Level::Trace as u8,
        }
    }
}

/// The drain of the programs' log records; poll its descriptor, then `flush`.
pub type KernelLogger = EbpfLogger<ToTracing>;

/// Forwards aya-log's records to `tracing`, target `kernel`.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        let msg = r.args();
        match r.level() {
            log::Level::Error => tracing::error!(target: "kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "kernel", "{msg}"),
            log::Level::Info => tracing::info!(target: "kernel", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "kernel", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}
