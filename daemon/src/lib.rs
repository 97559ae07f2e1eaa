//! The enforcing daemon and what reads its state.
//!
//! - [`run`]: `warden daemon`'s lifecycle (start, reload, rescan, stop).
//! - [`state`]: the state file a running daemon keeps for `status` and `down`.
//! - [`status`]: the typed report `warden status`, metrics and doctor read.
//! - [`metrics`]: that report as Prometheus text.
//! - [`signature`]: minisign-signed policy files.

pub mod metrics;
pub mod run;
pub mod signature;
pub mod state;
pub mod status;
