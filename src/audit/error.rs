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
    /// The writer thread could not be started.
    #[error("could not start the audit writer thread: {0}")]
    Thread(String),
}

impl AuditError {
    /// The configuration field the error is about.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            AuditError::Config(e) => Some(e.field),
            AuditError::Unwritable { .. } => Some("audit.dir"),
            AuditError::Thread(_) => None,
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
    /// The directory could not be read.
    #[error("cannot read: {0}")]
    Io(String),
}
