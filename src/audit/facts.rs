//! What the trail says about itself: where the previous run ended, where the
//! trail on disk begins, what was deleted by retention, what was lost.
//!
//! These facts ride in the chain (the `trail` field of `runtime.started`,
//! `audit.files_deleted` and `audit.gap` records), so they are sealed like
//! every other record and cannot be edited without the key.

use serde::{Deserialize, Serialize};

/// The facts a trail record carries; every field is optional and written only when set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailFacts {
    /// `runtime.started`: the record format this process writes (2; format 1
    /// records carry no `key_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u32>,
    /// `runtime.started`: the previous run's last record, verified under its
    /// key before anything was appended; `None` on a new trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ChainPoint>,
    /// `runtime.started`: whether the previous run ended in order (its last
    /// record is `runtime.shutdown` after `shutdown()`, and the head note said
    /// the trail was closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_clean: Option<bool>,
    /// `runtime.started`, `audit.files_deleted`, `audit.gap`: the first record
    /// on disk once this record is written. A trail that begins there, not at
    /// seq 0, is accounted for; one that begins later lost files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail_from: Option<FirstRecord>,
    /// `audit.files_deleted`: the files retention deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// `audit.gap`: the sequence numbers known lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<SeqRange>,
    /// `audit.gap`: a torn last line found at start (never appended onto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn: Option<TornLine>,
}

/// A record in the chain: its `seq`, its `hash`, the key that sealed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPoint {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash (64 hex digits).
    pub hash: String,
    /// The id of the key that sealed it; `None` for a format 1 record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// The first record of the trail on disk: its `seq` and the `prev` it links to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstRecord {
    /// Its sequence number.
    pub seq: u64,
    /// The hash it links to.
    pub prev: String,
}

/// Sequence numbers `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// The first one.
    pub first: u64,
    /// The last one.
    pub last: u64,
}

/// Bytes after a file's last newline: a record whose write never completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TornLine {
    /// The file they are in (its name in the audit directory).
    pub file: String,
    /// Where they start.
    pub offset: u64,
    /// How many.
    pub bytes: u64,
    /// Their SHA-256 (64 hex digits), so the gap names exactly what it covers.
    pub sha256: String,
    /// Where the file was moved, when the new file needed its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
}
