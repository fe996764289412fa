//! Leases: in-flight work (a token stream) that an ending session waits for.
//!
//! A lease is taken through a session handle. Ending a session moves it to
//! Closing at once (new work refused); the end is published, and the memory
//! released, when the last lease is returned or the drain deadline passes
//! (then the end is marked forced). A remote lease (held across a process
//! boundary) must heartbeat; one silent for `missed_heartbeats` intervals is
//! revoked, logged and counted.

mod config;
mod error;
mod table;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

pub use config::LeasesConfig;
pub use error::LeaseError;
pub(crate) use table::{Holder, LeaseTable};

/// A lease's id, unique within the process.
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct LeaseId(pub u64);

impl LeaseId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        LeaseId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease {}", self.0)
    }
}
