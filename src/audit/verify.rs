//! Checking a trail: every record intact, every link in place.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{self, AuditKeys, GENESIS};
use super::error::{BreakKind, ChainBreak};
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
    /// deleted by retention (the chain is checked from there).
    pub first_seq: Option<u64>,
    /// `seq` of the last record.
    pub last_seq: Option<u64>,
    /// Whether the last record is `runtime.shutdown`: a trail that ends
    /// otherwise is still being written, or its process did not stop in
    /// order, or records were cut from its end (which no chain can tell).
    pub ends_with_shutdown: bool,
}

/// Verifies the trail in `dir` under `key` (the configured audit key).
/// Returns the first bad record: changed (its hash), removed or reordered
/// (the link to the record before), truncated or garbled (not a record).
pub fn verify_dir(dir: &Path, key: &[u8]) -> Result<VerifyReport, ChainBreak> {
    let keys = AuditKeys::derive(key);
    let files = rotate::list(dir).map_err(|e| ChainBreak {
        file: dir.into(),
        line: 0,
        seq: None,
        why: BreakKind::Io(e.to_string()),
    })?;
    let mut report = VerifyReport {
        files: Vec::new(),
        records: 0,
        first_seq: None,
        last_seq: None,
        ends_with_shutdown: false,
    };
    // (seq, hash) of the last good record.
    let mut last: Option<(u64, String)> = None;
    for (path, named_seq) in files {
        let broken = |line: u64, seq: Option<u64>, why: BreakKind| ChainBreak {
            file: path.clone(),
            line,
            seq,
            why,
        };
        let file = File::open(&path).map_err(|e| broken(0, None, BreakKind::Io(e.to_string())))?;
        let mut reader = BufReader::new(file);
        let mut number = 0u64;
        let mut text = String::new();
        loop {
            text.clear();
            let read = reader
                .read_line(&mut text)
                .map_err(|e| broken(number + 1, None, BreakKind::Io(e.to_string())))?;
            if read == 0 {
                break;
            }
            number += 1;
            let Some(line) = text.strip_suffix('\n') else {
                return Err(broken(
                    number,
                    None,
                    BreakKind::Malformed("the last line is cut short (no newline)".into()),
                ));
            };
            let opened = chain::open(Some(&keys), line)
                .map_err(|why| broken(number, None, BreakKind::Malformed(why)))?;
            let seq = opened.record.seq;
            if !opened.intact {
                return Err(broken(number, Some(seq), BreakKind::Changed));
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
                    seq == last_seq + 1 && opened.record.prev == *last_hash,
                ),
                // The first record present: the very first of the trail links to
                // genesis; a later one follows files deleted by retention.
                None => (seq, seq > 0 || opened.record.prev == GENESIS),
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
            report.records += 1;
            report.first_seq.get_or_insert(seq);
            report.last_seq = Some(seq);
            report.ends_with_shutdown = opened.record.action == action::RUNTIME_SHUTDOWN;
            last = Some((seq, opened.hash));
        }
        report.files.push(path);
    }
    Ok(report)
}
