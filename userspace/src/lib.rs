//! ollama-warden: kernel-enforced access control for hosts that serve Ollama.
//!
//! - [`compile`]: a validated [`warden_policy::Policy`] → backend-neutral entries.
//! - [`enforce`]: backends; [`enforce::ebpf`] loads, pins and attaches the kernel
//!   programs, [`enforce::maps`] swaps policies atomically between two slots.
//! - [`daemon`]: the enforcing daemon's lifecycle (start, reload, rescan, stop).
//! - [`events`]: kernel flow records and lifecycle events, encoded (OCSF, ECS)
//!   and delivered to sinks through bounded queues, losses counted.
//! - [`proxy`]: the auth proxy's request judgement (canonical targets, routes,
//!   bodies).
//! - [`cgroupfs`]: finding cgroup2 and cgroup ids.
//! - [`host`]: sockets, processes and unit files of this host, read from /proc;
//!   [`discover`] turns them into a starting policy, [`doctor`] into checks.
//! - [`metrics`]: Prometheus text endpoints for the daemon and the proxy.
//! - [`signature`]: minisign-signed policy files.
//! - [`state`]: the daemon's state file for `status` and `down`.
//! - [`watch`]: inotify on the policy files and the policy cgroups' parents,
//!   rtnetlink for new interfaces.
//! - [`ban`]: the banned sources the kernel drops (`warden ban`).
//! - [`cli`]: the command line.

pub mod ban;
pub mod cgroupfs;
pub mod cli;
pub mod compile;
pub mod daemon;
pub mod discover;
pub mod doctor;
pub mod enforce;
pub mod events;
pub mod host;
pub mod logs;
pub mod metrics;
pub mod proxy;
pub mod signature;
pub mod state;
pub mod sync;
pub mod watch;
