//! The head note (`audit.head`): where the trail stood when this process
//! last said so, sealed with the key, kept next to the trail's files.
//!
//! Ground rules: a chain cannot prove its own end (cut records from its
//! tail and what is left still verifies), so the writer notes its head
//! outside the chain: at start (`open`), at every rotation (`open`), and at
//! shutdown once the last record is synced (`closed`). The next start
//! compares the trail with the note: a trail that ends before the note's
//! `last`, or begins after its `trail_from`, lost records while the process
//! was stopped. The note is written to `audit.head.tmp`, synced and renamed,
//! so a crash leaves the old note or the new one, never half of one. Records
//! written after the last note (a crash between rotations) are not covered:
//! the next start records that the previous run did not end in order.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::AuditKeys;
use super::facts::{ChainPoint, FirstRecord};
use super::keyring::AuditKeyring;

/// The head note's file name in the audit directory.
pub(crate) const HEAD_FILE: &str = "audit.head";

/// Whether the writer was still writing when it wrote the note.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HeadState {
    /// Records may follow `last` (the process was running).
    Open,
    /// `last` is the trail's last record: the process closed the trail.
    Closed,
}

/// The note itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeadNote {
    pub(crate) format: u32,
    pub(crate) state: HeadState,
    /// The first record on disk when the note was written.
    pub(crate) trail_from: FirstRecord,
    /// The last record written when the note was written.
    pub(crate) last: ChainPoint,
    /// The key that sealed the note.
    pub(crate) key_id: String,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    note: HeadNote,
    mac: String,
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(HEAD_FILE)
}

fn mac(keys: &AuditKeys, note: &HeadNote) -> String {
    let body = serde_json::to_string(note).expect("a head note always serializes");
    keys.hash(format!("sessionbus audit head\n{body}").as_bytes())
}

/// Writes the note, replacing the old one whole.
pub(crate) fn write(dir: &Path, keys: &AuditKeys, note: HeadNote) -> io::Result<()> {
    let sealed = Sealed {
        mac: mac(keys, &note),
        note,
    };
    let tmp = dir.join(format!("{HEAD_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(serde_json::to_string(&sealed)?.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path(dir))
}

/// What reading the note found.
#[derive(Debug)]
pub(crate) enum Read {
    /// No note: a new trail, or one written before head notes existed (format 1).
    Missing,
    /// A note sealed under a key of the keyring.
    Valid(HeadNote),
    /// A note sealed under a key the keyring does not hold.
    UnknownKey(String),
    /// A note that does not verify (changed, garbled).
    Invalid(String),
}

/// Reads and checks the note in `dir`.
pub(crate) fn read(dir: &Path, keyring: &AuditKeyring) -> io::Result<Read> {
    let text = match std::fs::read_to_string(path(dir)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(e),
    };
    let sealed: Sealed = match serde_json::from_str(text.trim_end()) {
        Ok(sealed) => sealed,
        Err(e) => return Ok(Read::Invalid(format!("not a head note: {e}"))),
    };
    let Some(keys) = keyring.get(&sealed.note.key_id) else {
        return Ok(Read::UnknownKey(sealed.note.key_id));
    };
    if mac(keys, &sealed.note) != sealed.mac {
        return Ok(Read::Invalid("its seal does not match its content".into()));
    }
    Ok(Read::Valid(sealed.note))
}
