//! What can go wrong with the audit trail.

use std::path::PathBuf;

/// An `[audit]` value that cannot be used; `field` names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {problem}")]
pub struct AuditConfigError {
    /// The offending field, e.g. `audit.key`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// The audit trail could not start. Nothing is left running after one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The configuration is invalid (names the field).
    #[error(transparent)]
    Config(#[from] AuditConfigError),
    /// The directory cannot be created or written (checked at start with a real file).
    #[error("invalid configuration: audit.dir: cannot write to {path}: {source}")]
    Unwritable {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The OS would not start an audit thread.
    #[error("could not start an audit thread; check the process's thread limit")]
    Thread(#[source] std::io::Error),
    /// The thread opening the trail died (a panic; see the log above).
    #[error("the audit trail's opening thread died; see the log above")]
    OpenerDied,
    /// What earlier runs wrote does not verify, so nothing is appended to it:
    /// records are missing, changed, or sealed under a key not configured.
    #[error("audit.dir: the trail in {} does not verify, so this start does not append to it: {problem}", dir.display())]
    PreviousTrail {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        problem: TrailProblem,
    },
}

/// Why a start refuses to continue the trail it found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrailProblem {
    /// The trail ends before the last record the head note confirms: its
    /// tail was cut while the process was stopped.
    #[error(
        "the head note confirms records up to seq {confirmed}, but the trail ends at seq {last:?}: \
         its tail was cut; set audit.on_lost_records = \"record_gap\" to record the loss and go on"
    )]
    TailMissing {
        /// The last seq the head note confirms.
        confirmed: u64,
        /// The last seq present (`None`: no record at all).
        last: Option<u64>,
    },
    /// The trail begins after where the head note says it began: files
    /// were deleted from its start while the process was stopped.
    #[error(
        "the trail began at seq {expected} but now begins at seq {found:?}: files were deleted \
         (retention records its own deletions); set audit.on_lost_records = \"record_gap\" to \
         record the loss and go on"
    )]
    PrefixMissing {
        /// Where the head note says the trail began.
        expected: u64,
        /// Where it begins now.
        found: Option<u64>,
    },
    /// Format 2 records are present but the head note is gone.
    #[error(
        "the head note ({}) is missing, so the trail's end cannot be confirmed; set \
         audit.on_lost_records = \"record_gap\" to record that and go on",
        super::head::HEAD_FILE
    )]
    HeadNoteMissing,
    /// The head note does not verify.
    #[error("the head note does not verify: {0}")]
    HeadNoteInvalid(String),
    /// Sealed under a key the keyring does not hold.
    #[error(
        "written under key id {key_id}, which is not configured: give the old key in \
         audit.old_keys_env (as id:hex) after a key change"
    )]
    UnknownKey {
        /// The key id.
        key_id: String,
    },
    /// A record of the previous tail was changed, garbled or unlinked.
    #[error("{}:{line}: {why}", file.display())]
    Changed {
        /// The file.
        file: PathBuf,
        /// Its line, from 1.
        line: u64,
        /// What is wrong.
        why: String,
    },
}

impl TrailProblem {
    /// Whether `on_lost_records = "record_gap"` may record it and go on:
    /// lost records, yes; changed records or a missing key, never.
    pub fn is_loss(&self) -> bool {
        matches!(
            self,
            TrailProblem::TailMissing { .. }
                | TrailProblem::PrefixMissing { .. }
                | TrailProblem::HeadNoteMissing
        )
    }
}

impl AuditError {
    /// The configuration field the error is about.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            AuditError::Config(e) => Some(e.field),
            AuditError::Unwritable { .. } => Some("audit.dir"),
            AuditError::Thread(_) | AuditError::OpenerDied => None,
            AuditError::PreviousTrail { .. } => Some("audit.dir"),
        }
    }
}

/// Where a trail stops verifying: the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {why}", file.display())]
pub struct ChainBreak {
    /// The file holding the first bad record.
    pub file: PathBuf,
    /// Its line, counting from 1.
    pub line: u64,
    /// Its sequence number, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub why: BreakKind,
}

/// Why a record does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakKind {
    /// Not a whole record (a truncated or garbled line).
    #[error("not a whole audit record (truncated or garbled): {0}")]
    Malformed(String),
    /// Its content was changed after it was written (or it was written under another key).
    #[error("record changed: its hash does not match its content")]
    Changed,
    /// Records are missing before it, or out of order.
    #[error(
        "expected seq {expected} linked to the record before, found seq {found}: records before it were removed or reordered"
    )]
    BrokenLink {
        /// The sequence number that should come here.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// Sealed under a key the keyring does not hold.
    #[error(
        "sealed under key id {0}, which is not in the keyring (give it, e.g. in SESSIONBUS_AUDIT_KEYS as id:hex)"
    )]
    UnknownKey(String),
    /// The trail begins after seq 0 and no record accounts for what came
    /// before (retention records its deletions; a start records where the trail began).
    #[error(
        "the trail begins at seq {first_seq}, and no retention or start record accounts for the records before it: files were deleted"
    )]
    FilesMissing {
        /// The first seq present.
        first_seq: u64,
    },
    /// The head note confirms records the trail no longer holds.
    #[error(
        "the head note confirms records up to seq {confirmed}, but the trail ends at seq {last:?}: its tail was cut"
    )]
    TailMissing {
        /// The last seq the head note confirms.
        confirmed: u64,
        /// The last seq present.
        last: Option<u64>,
    },
    /// The head note does not verify, or is missing beside format 2 records.
    #[error("head note: {0}")]
    HeadNote(String),
    /// The directory could not be read.
    #[error("cannot read: {0}")]
    Io(String),
}
