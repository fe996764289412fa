//! The audit trail: who ended what, when and why, in a file nobody can
//! quietly edit.
//!
//! An append-only JSON Lines trail of lifecycle and release actions
//! (session opened, closed, expired, evicted, shut down or otherwise ended;
//! context reset; resources released; runtime started and shut down). Each
//! record has a UTC timestamp, the action, the resource (session id), the
//! operator, owner and client IP as keyed-hash pseudonyms (never in clear),
//! the trace id, the reason and the bytes concerned.
//!
//! - `config.rs`: the `[audit]` section and its key.
//! - `record.rs`: the record and its actions.
//! - `chain.rs`: the hash chain (HMAC-SHA256 under a key derived from the audit key).
//! - `trail.rs`: the files: append, rotate by size and age, retention.
//! - `rotate.rs`: file names, order, retention, and the clock seam.
//! - `writer.rs`: the writer thread, a reliable bus subscriber.
//! - `verify.rs`: names the first record that was changed, removed or reordered.

mod chain;
mod config;
mod error;
mod facts;
mod head;
mod keyring;
mod record;
mod recover;
mod rotate;
mod trail;
mod verify;
mod writer;

pub use config::{AuditConfig, LostRecords};
pub use error::{AuditConfigError, AuditError, BreakKind, ChainBreak, TrailProblem};
pub use facts::{ChainPoint, FirstRecord, SeqRange, TornLine, TrailFacts};
pub use keyring::AuditKeyring;
pub use record::{AuditRecord, action, rfc3339_utc};
pub use rotate::{AuditClock, SystemClock};
pub use trail::{AuditStats, AuditTrail};
pub use verify::{VerifyReport, verify_dir, verify_with_keyring};
pub(crate) use writer::AuditWriter;

/// Opens the trail on a short-lived thread of its own (it creates the
/// directory and reads the last file back to continue the chain), so the
/// caller's executor never blocks on the disk.
pub(crate) async fn open_trail(config: AuditConfig) -> Result<AuditTrail, AuditError> {
    let (done, opened) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sessionbus-audit-open".into())
        .spawn(move || {
            let _ = done.send(AuditTrail::open(&config));
        })
        .map_err(|e| AuditError::Thread(e.to_string()))?;
    opened
        .await
        .map_err(|_| AuditError::Thread("the audit trail's opening thread died".into()))?
}

/// The pseudonymizer for log lines that matches the trail's pseudonyms.
pub(crate) fn log_pseudonyms(trail: &AuditTrail) -> sessionbus_actors::Pseudonymizer {
    trail.keys().pseudonyms.clone()
}
