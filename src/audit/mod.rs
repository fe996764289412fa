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
//! # The format on disk (format 2)
//!
//! - **Files** `audit-<first seq, 20 digits>.jsonl`, one record per line,
//!   in chain order by name. Each start begins a new file.
//! - **Records**: `seq`, `ts`, `action`, `resource`, `operator`, `owner`,
//!   `client_ip`, `trace_id`, `reason`, `bytes`, then `key_id` (16 hex
//!   digits derived from the key that sealed it), `trail` (facts about the
//!   trail itself, on trail records only), `prev` and `hash`. `hash` is
//!   HMAC-SHA256, under a chain key derived from that key, of the exact line
//!   without its hash; `prev` is the hash of the record before (zeros for seq 0).
//! - **Trail records.** `runtime.started` (`trail.previous`: the previous
//!   run's last record, verified under its key before anything was appended;
//!   `trail.previous_clean`; `trail.trail_from`: the first record on disk;
//!   `trail.format`). `audit.files_deleted` (retention: `trail.files`, and
//!   the new `trail.trail_from`). `audit.gap` (`reason`, and `trail.lost`
//!   seqs, or `trail.torn`: a torn line's file, offset, length and SHA-256).
//!   A trail that begins after seq 0 verifies only if one of these names its
//!   first record in `trail_from`: so a deleted prefix is told from retention.
//! - **The head note** `audit.head`, the clean-shutdown marker: `state`
//!   (`open` while writing, `closed` after `runtime.shutdown` was synced),
//!   `last` (seq, hash, key id of the last record written), `trail_from`,
//!   sealed with the chain key. Written at start, at each rotation and at
//!   shutdown (write, fsync, rename). A trail that ends before `last`, or
//!   begins after `trail_from`, lost records while stopped.
//! - **Torn lines**: bytes after a file's last newline (a crash mid-write).
//!   A start records them in an `audit.gap` and writes a new file (moving
//!   the torn file to `<name>.torn` if the new file needs its name); the
//!   torn bytes are never appended onto, cut or rewritten.
//! - **Format 1** (before key ids): records without `key_id` or `trail`, no
//!   head note. They verify against every key given, and are counted as
//!   `legacy_records`; a runtime started on such a trail continues it in format 2.
//!
//! At start the previous tail is checked under the keyring (`recover.rs`):
//! records changed, or sealed under a key not configured, refuse the start;
//! records missing refuse it too, unless `on_lost_records = "record_gap"`,
//! which records an `audit.gap` naming what was lost and goes on.
//!
//! - `config.rs`: the `[audit]` section, its key and old keys.
//! - `keyring.rs`: key ids, the keyring, strict hex.
//! - `record.rs`, `facts.rs`: the record, its actions, and the trail's facts.
//! - `chain.rs`: the hash chain (HMAC-SHA256 under a key derived from the audit key).
//! - `head.rs`: the head note.
//! - `recover.rs`: what a start finds: the previous tail, checked.
//! - `trail.rs`: the files: append, rotate by size and age, retention.
//! - `rotate.rs`: file names, order, retention, and the clock seam.
//! - `writer.rs`: the writer thread, a reliable bus subscriber.
//! - `verify.rs`: names the first record that was changed, removed or
//!   reordered, or what is missing.

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
pub use record::{AuditRecord, action};
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
        .map_err(AuditError::Thread)?;
    opened.await.map_err(|_| AuditError::OpenerDied)?
}

/// The pseudonymizer for log lines that matches the trail's pseudonyms.
pub(crate) fn log_pseudonyms(trail: &AuditTrail) -> sessionbus_actors::Pseudonymizer {
    trail.keys().pseudonyms.clone()
}
