//! The memory budget for request bodies read whole (to be judged): one total
//! for all requests, and a share of it per identity and per source, so no
//! identity or client can reserve what the others need.
//!
//! What is accounted is what is held: a body with a `Content-Length` reserves
//! that much before a byte is read (an early 503 instead of a half-read body);
//! one without grows its reservation as its bytes arrive, so a stream trickled
//! below the body timeout holds only what it sent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warden_runtime::sync::Locked;

pub struct Budget {
    total: Arc<Semaphore>,
    per_identity_kib: u64,
    per_source_kib: u64,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    identities: HashMap<String, u64>,
    sources: HashMap<IpAddr, u64>,
}

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    Total,
    Identity,
    Source,
}

impl Exhausted {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "request body memory budget exhausted",
            Self::Identity => "this identity's share of the body budget is exhausted",
            Self::Source => "this source's share of the body budget is exhausted",
        }
    }
}

impl Budget {
    pub fn new(total: u64, per_identity: u64, per_source: u64) -> Arc<Self> {
        let kib = |b: u64| b.div_ceil(1024);
        Arc::new(Self {
            total: Arc::new(Semaphore::new(kib(total) as usize)),
            per_identity_kib: kib(per_identity),
            per_source_kib: kib(per_source),
            held: Mutex::default(),
        })
    }

    /// An empty reservation for one request body.
    pub fn reservation(self: &Arc<Self>, identity: &str, source: IpAddr) -> Reservation {
        Reservation {
            budget: self.clone(),
            identity: identity.to_owned(),
            source,
            kib: 0,
            permit: None,
        }
    }
}

/// What one body holds of the budget; released when dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    identity: String,
    source: IpAddr,
    kib: u64,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Grows the reservation to cover `bytes` in all.
    pub fn cover(&mut self, bytes: u64) -> Result<(), Exhausted> {
        let want = bytes.div_ceil(1024).max(1);
        if want <= self.kib {
            return Ok(());
        }
        let more = want - self.kib;
        let b = &self.budget;
        let mut held = b.held.locked();
        let by_identity = held.identities.get(&self.identity).copied().unwrap_or(0);
        if by_identity + more > b.per_identity_kib {
            return Err(Exhausted::Identity);
        }
        let by_source = held.sources.get(&self.source).copied().unwrap_or(0);
        if by_source + more > b.per_source_kib {
            return Err(Exhausted::Source);
        }
        let permit = b
            .total
            .clone()
            .try_acquire_many_owned(u32::try_from(more).unwrap_or(u32::MAX))
            .map_err(|_| Exhausted::Total)?;
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        *held.identities.entry(self.identity.clone()).or_default() += more;
        *held.sources.entry(self.source).or_default() += more;
        self.kib = want;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.kib == 0 {
            return;
        }
        let mut held = self.budget.held.locked();
        if let Some(n) = held.identities.get_mut(&self.identity) {
            *n -= self.kib;
            if *n == 0 {
                held.identities.remove(&self.identity);
            }
        }
        if let Some(n) = held.sources.get_mut(&self.source) {
            *n -= self.kib;
            if *n == 0 {
                held.sources.remove(&self.source);
            }
        }
        // The permit goes back to the total with the struct.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_total_bound_what_is_held() {
        let b = Budget::new(100 << 10, 40 << 10, 60 << 10);
        let (a, c): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut hog = b.reservation("hog", a);
        assert_eq!(hog.cover(40 << 10), Ok(()));
        let mut more = b.reservation("hog", c);
        assert_eq!(
            more.cover(1),
            Err(Exhausted::Identity),
            "the identity's share"
        );
        let mut alice = b.reservation("alice", a);
        assert_eq!(
            alice.cover(30 << 10),
            Err(Exhausted::Source),
            "the source's share"
        );
        let mut bob = b.reservation("bob", c);
        assert_eq!(bob.cover(40 << 10), Ok(()));
        let mut carol = b.reservation("carol", "10.0.0.3".parse().unwrap());
        assert_eq!(carol.cover(30 << 10), Err(Exhausted::Total));
        drop(hog);
        assert_eq!(carol.cover(30 << 10), Ok(()), "released when dropped");
        // Growing step by step accounts only the difference.
        let mut grow = b.reservation("dave", "10.0.0.4".parse().unwrap());
        assert_eq!(grow.cover(5 << 10), Ok(()));
        assert_eq!(grow.cover(10 << 10), Ok(()));
        assert_eq!(grow.cover(31 << 10), Err(Exhausted::Total));
    }
}
