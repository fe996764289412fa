//! Checking a trail: every record intact under its key, every link in place,
//! the start accounted for, the end where the head note says.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::chain::{self, Check, GENESIS};
use super::error::{BreakKind, ChainBreak};
use super::head::{self, HeadState};
use super::keyring::AuditKeyring;
use super::record::action;
use super::rotate;

/// What a verified trail holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Files checked, in chain order.
    pub files: Vec<PathBuf>,
    /// Records checked.
    pub records: u64,
    /// `seq` of the first record present: above 0 when older files were
    /// deleted by retention (recorded in `audit.files_deleted`).
    pub first_seq: Option<u64>,
    /// `seq` of the last record.
    pub last_seq: Option<u64>,
    /// Whether the last record is `runtime.shutdown`.
    pub ends_with_shutdown: bool,
    /// Whether the head note says the trail was closed (`Some(false)`: its
    /// process is running, or did not stop in order; `None`: no head note,
    /// a format 1 trail).
    pub closed: Option<bool>,
    /// The ids of the keys that sealed the records, in order of first use.
    pub key_ids: Vec<String>,
    /// Records in format 1 (no key id), checked against every key given.
    pub legacy_records: u64,
    /// A format 1 trail that begins after seq 0: no record says whether
    /// retention or someone else deleted what came before.
    pub start_unaccounted: bool,
    /// The `reason` of every `audit.gap` record: what earlier runs lost.
    pub gaps: Vec<String>,
    /// Files that retention deleted, as recorded in the trail.
    pub files_deleted: u64,
}

/// Verifies the trail in `dir` under `key` (the configured audit key).
/// See [`verify_with_keyring`]; after a key change, use that with every key.
pub fn verify_dir(dir: &Path, key: &[u8]) -> Result<VerifyReport, ChainBreak> {
    let mut keyring = AuditKeyring::new();
    keyring.add_key(key).map_err(|e| ChainBreak {
        file: dir.into(),
        line: 0,
        seq: None,
        why: BreakKind::Io(e.to_string()),
    })?;
    verify_with_keyring(dir, &keyring)
}

/// Verifies the trail in `dir` under the keys of `keyring`. Returns the
/// first bad record: changed (its hash), sealed under a key not given,
/// removed or reordered (the link to the record before), truncated or
/// garbled (not a record); or what is missing: files from the start that no
/// retention record accounts for, records from the end that the head note
/// confirms. A torn line that a later `audit.gap` names is not an error.
pub fn verify_with_keyring(dir: &Path, keyring: &AuditKeyring) -> Result<VerifyReport, ChainBreak> {
    let io_break = |file: &Path, e: std::io::Error| ChainBreak {
        file: file.into(),
        line: 0,
        seq: None,
        why: BreakKind::Io(e.to_string()),
    };
    let files = rotate::list(dir).map_err(|e| io_break(dir, e))?;
    let head_path = head::path(dir);
    let head_break = |why: BreakKind| ChainBreak {
        file: head_path.clone(),
        line: 0,
        seq: None,
        why,
    };
    // A bad note is reported after the records: a bad record is the first thing to name.
    let (note, bad_note) = match head::read(dir, keyring).map_err(|e| io_break(&head_path, e))? {
        head::Read::Missing => (None, None),
        head::Read::Valid(note) => (Some(note), None),
        head::Read::UnknownKey(id) => (None, Some(BreakKind::UnknownKey(id))),
        head::Read::Invalid(why) => (None, Some(BreakKind::HeadNote(why))),
    };
    let mut report = VerifyReport {
        files: Vec::new(),
        records: 0,
        first_seq: None,
        last_seq: None,
        ends_with_shutdown: false,
        closed: note.as_ref().map(|n| n.state == HeadState::Closed),
        key_ids: Vec::new(),
        legacy_records: 0,
        start_unaccounted: false,
        gaps: Vec::new(),
        files_deleted: 0,
    };
    // (seq, hash) of the last good record; (seq, prev) of the first.
    let mut last: Option<(u64, String)> = None;
    let mut first: Option<(PathBuf, u64, String)> = None;
    // Where records before the first one present are accounted for.
    let mut claims: HashSet<(u64, String)> = HashSet::new();
    // Torn lines not (yet) named by an `audit.gap`: (file name, offset, path, line).
    let mut torn: Vec<(String, u64, PathBuf, u64)> = Vec::new();
    let count = files.len();
    for (index, (path, named_seq)) in files.into_iter().enumerate() {
        let broken = |line: u64, seq: Option<u64>, why: BreakKind| ChainBreak {
            file: path.clone(),
            line,
            seq,
            why,
        };
        let bytes = std::fs::read(&path).map_err(|e| io_break(&path, e))?;
        let whole_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let text = std::str::from_utf8(&bytes[..whole_len])
            .map_err(|e| broken(0, None, BreakKind::Malformed(format!("not UTF-8: {e}"))))?;
        let mut number = 0u64;
        for line in text.split_terminator('\n') {
            number += 1;
            let opened = chain::open(keyring, line)
                .map_err(|why| broken(number, None, BreakKind::Malformed(why)))?;
            let record = &opened.record;
            let seq = record.seq;
            match &opened.check {
                Check::Intact => {}
                Check::Changed => return Err(broken(number, Some(seq), BreakKind::Changed)),
                Check::UnknownKey(id) => {
                    return Err(broken(number, Some(seq), BreakKind::UnknownKey(id.clone())));
                }
            }
            if number == 1 && seq != named_seq {
                // A file is named after its first record: records were cut from its start.
                return Err(broken(
                    number,
                    Some(seq),
                    BreakKind::BrokenLink {
                        expected: named_seq,
                        found: seq,
                    },
                ));
            }
            let (expected, linked) = match &last {
                Some((last_seq, last_hash)) => (
                    last_seq + 1,
                    seq == last_seq + 1 && record.prev == *last_hash,
                ),
                // The first record present: checked against the claims below.
                None => (seq, seq > 0 || record.prev == GENESIS),
            };
            if !linked {
                return Err(broken(
                    number,
                    Some(seq),
                    BreakKind::BrokenLink {
                        expected,
                        found: seq,
                    },
                ));
            }
            if let Some(note) = &note {
                if seq == note.last.seq && opened.hash != note.last.hash {
                    return Err(broken(
                        number,
                        Some(seq),
                        BreakKind::HeadNote(format!(
                            "the record at seq {seq} is not the one the head note confirms"
                        )),
                    ));
                }
            }
            match &record.key_id {
                Some(id) if !report.key_ids.contains(id) => report.key_ids.push(id.clone()),
                Some(_) => {}
                None => report.legacy_records += 1,
            }
            if let Some(facts) = &record.trail {
                if let Some(from) = &facts.trail_from {
                    claims.insert((from.seq, from.prev.clone()));
                }
                if let Some(named) = &facts.torn {
                    torn.retain(|(file, offset, ..)| {
                        !(*file == named.file && *offset == named.offset)
                    });
                }
                if record.action == action::FILES_DELETED {
                    report.files_deleted += facts.files.len() as u64;
                }
            }
            if record.action == action::GAP {
                report.gaps.push(record.reason.clone().unwrap_or_default());
            }
            if first.is_none() {
                first = Some((path.clone(), seq, record.prev.clone()));
            }
            report.records += 1;
            report.first_seq.get_or_insert(seq);
            report.last_seq = Some(seq);
            report.ends_with_shutdown = record.action == action::RUNTIME_SHUTDOWN;
            last = Some((seq, opened.hash));
        }
        if whole_len < bytes.len() {
            if index + 1 == count {
                return Err(broken(
                    number + 1,
                    None,
                    BreakKind::Malformed(
                        "the last line is cut short (no newline): its process stopped \
                         mid-write, and no start has recorded it as a gap yet"
                            .into(),
                    ),
                ));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            torn.push((name, whole_len as u64, path.clone(), number + 1));
        }
        report.files.push(path);
    }
    if let Some((_, _, path, line)) = torn.into_iter().next() {
        return Err(ChainBreak {
            file: path,
            line,
            seq: None,
            why: BreakKind::Malformed("a line cut short, and no audit.gap record names it".into()),
        });
    }
    if let Some((path, seq, prev)) = first {
        let from_genesis = seq == 0 && prev == GENESIS;
        if !from_genesis && !claims.contains(&(seq, prev)) {
            if note.is_some() || !report.key_ids.is_empty() {
                return Err(ChainBreak {
                    file: path,
                    line: 1,
                    seq: Some(seq),
                    why: BreakKind::FilesMissing { first_seq: seq },
                });
            }
            report.start_unaccounted = true;
        }
    }
    if let Some(why) = bad_note {
        return Err(head_break(why));
    }
    match &note {
        Some(note) => {
            if report.last_seq.is_none_or(|last| last < note.last.seq) {
                return Err(head_break(BreakKind::TailMissing {
                    confirmed: note.last.seq,
                    last: report.last_seq,
                }));
            }
            if note.state == HeadState::Closed && report.last_seq != Some(note.last.seq) {
                return Err(head_break(BreakKind::HeadNote(format!(
                    "records follow seq {}, the record the trail was closed with",
                    note.last.seq
                ))));
            }
        }
        None if !report.key_ids.is_empty() => {
            return Err(head_break(BreakKind::HeadNote(
                "missing, beside format 2 records: the trail's end cannot be confirmed".into(),
            )));
        }
        None => {}
    }
    Ok(report)
}
