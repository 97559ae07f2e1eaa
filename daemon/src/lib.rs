//! The enforcing daemon and what reads its state.
//!
//! - [`run`]: `warden daemon`'s lifecycle (start, the event loop, stop); the
//!   loop waits on its `inputs` and hands each to the `enforcer`.
//! - [`dns`]: the resolver that host rules' DNS traffic is steered to.
//! - [`live`]: the subscription socket `warden events` reads.
//! - [`state`]: the state file a running daemon keeps for `status` and `down`.
//! - [`status`]: the typed report `warden status`, metrics and doctor read.
//! - [`metrics`]: that report as Prometheus text.
//! - [`signature`]: minisign-signed policy files.

pub mod dns;
mod enforcer;
mod inputs;
pub mod live;
pub mod metrics;
pub mod run;
pub mod signature;
pub mod state;
pub mod status;
mod summary;
