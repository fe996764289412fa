//! The runtime's own health: restarts of supervised tasks, and the failure
//! that escalated past the restart limit, if one did.

use std::sync::Mutex;
#[cfg(feature = "testing")]
use std::sync::atomic::AtomicU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// What supervision did, since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SupervisionStats {
    /// Restarts of supervised tasks (the cleanup dispatcher) after a panic.
    pub restarts: u64,
    /// Set when a task failed more often than `supervision.max_restarts`
    /// within `supervision.within`: the runtime then admits no new sessions.
    pub failed: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    restarts: AtomicU64,
    failed: Mutex<Option<String>>,
    /// Fault injection: panics the cleanup dispatcher owes.
    #[cfg(feature = "testing")]
    pub(crate) inject_panics: AtomicU32,
}

impl Health {
    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fail(&self, what: String) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
    }

    /// Whether a task escalated (without copying what it said).
    pub(crate) fn is_failed(&self) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub(crate) fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn stats(&self) -> SupervisionStats {
        SupervisionStats {
            restarts: self.restarts.load(Ordering::Relaxed),
            failed: self.failed(),
        }
    }

    /// Whether an injected panic is due now (fault injection only).
    #[cfg(feature = "testing")]
    pub(crate) fn take_injected_panic(&self) -> bool {
        self.inject_panics
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}
