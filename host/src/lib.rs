//! Host tools: this host's sockets, processes and unit files read from /proc
//! and the unit directories ([`procfs`]); [`discover`] turns them into a
//! starting policy, [`doctor`] into checks of a running installation (its
//! requests to the proxy made in process).

pub mod discover;
pub mod doctor;
mod https;
pub mod procfs;
