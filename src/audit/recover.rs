//! What a start finds: the previous run's tail, checked under its key and
//! against the head note, before anything is appended.
//!
//! Ground rules: nothing here writes. The start continues from the last
//! record that verifies, never from a line that merely parses. It reads the
//! files from the one holding the head note's last record (or, on a format 1
//! trail without a note, the last file with a whole record) to the end:
//! bounded by one rotation's worth of files, not the whole trail. Bytes after
//! the last file's last newline are a torn line: reported, never appended onto.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::chain::{self, ChainHead, Check};
use super::error::TrailProblem;
use super::facts::{ChainPoint, FirstRecord, SeqRange};
use super::head::{self, HeadState};
use super::keyring::{AuditKeyring, encode_hex};
use super::record::action;
use super::rotate;

/// A torn line found at start.
#[derive(Debug)]
pub(crate) struct Torn {
    pub(crate) path: PathBuf,
    pub(crate) offset: u64,
    pub(crate) bytes: u64,
    pub(crate) sha256: String,
}

/// Records that earlier runs wrote and the directory no longer holds.
#[derive(Debug)]
pub(crate) struct Loss {
    pub(crate) problem: TrailProblem,
    pub(crate) lost: Option<SeqRange>,
}

/// The previous trail, checked.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Where the chain goes on: after the last record that verifies.
    pub(crate) head: ChainHead,
    /// That record.
    pub(crate) previous: Option<ChainPoint>,
    /// Whether the previous run ended in order.
    pub(crate) previous_clean: bool,
    /// The first record on disk.
    pub(crate) trail_from: Option<FirstRecord>,
    pub(crate) torn: Option<Torn>,
    /// Missing records (the caller refuses or records a gap).
    pub(crate) losses: Vec<Loss>,
}

/// Why recovery stopped.
#[derive(Debug)]
pub(crate) enum Failure {
    Io(io::Error),
    Problem(TrailProblem),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

impl From<TrailProblem> for Failure {
    fn from(p: TrailProblem) -> Self {
        Failure::Problem(p)
    }
}

/// The last record read so far, with what a start needs to know about it.
struct Last {
    point: ChainPoint,
    clean_end: bool,
}

pub(crate) fn recover(dir: &Path, keyring: &AuditKeyring) -> Result<Recovered, Failure> {
    let files = rotate::list(dir)?;
    let note = match head::read(dir, keyring)? {
        head::Read::Missing => None,
        head::Read::Valid(note) => Some(note),
        head::Read::UnknownKey(key_id) => return Err(TrailProblem::UnknownKey { key_id }.into()),
        head::Read::Invalid(why) => return Err(TrailProblem::HeadNoteInvalid(why).into()),
    };

    // Where to start reading: the file holding the note's last record, or the
    // last file with a whole record.
    let start = match &note {
        Some(note) => files
            .iter()
            .rposition(|(_, first)| *first <= note.last.seq)
            .unwrap_or(0),
        None => {
            let mut start = 0;
            for (i, (path, _)) in files.iter().enumerate().rev() {
                if std::fs::read(path)?.contains(&b'\n') {
                    start = i;
                    break;
                }
            }
            start
        }
    };

    let mut last: Option<Last> = None;
    let mut confirmed_seen = false;
    let mut saw_format_2 = false;
    let mut torn = None;
    for (index, (path, named_seq)) in files.iter().enumerate().skip(start) {
        let bytes = std::fs::read(path)?;
        let whole_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole_len < bytes.len() {
            if index + 1 < files.len() {
                return Err(TrailProblem::Changed {
                    file: path.clone(),
                    line: count_lines(&bytes[..whole_len]) + 1,
                    why: "a line cut short in the middle of the trail".into(),
                }
                .into());
            }
            let rest = &bytes[whole_len..];
            torn = Some(Torn {
                path: path.clone(),
                offset: whole_len as u64,
                bytes: rest.len() as u64,
                sha256: encode_hex(&Sha256::digest(rest)),
            });
        }
        let text = String::from_utf8_lossy(&bytes[..whole_len]);
        for (n, line) in text.lines().enumerate() {
            let changed = |why: String| TrailProblem::Changed {
                file: path.clone(),
                line: n as u64 + 1,
                why,
            };
            let opened = chain::open(keyring, line).map_err(changed)?;
            match opened.check {
                Check::Intact => {}
                Check::Changed => {
                    return Err(changed(
                        "record changed: its hash does not match its content".into(),
                    )
                    .into());
                }
                Check::UnknownKey(key_id) => return Err(TrailProblem::UnknownKey { key_id }.into()),
            }
            let record = &opened.record;
            saw_format_2 |= record.key_id.is_some();
            // A file is named after its first record; each record links to the one before.
            let linked = (n > 0 || record.seq == *named_seq)
                && last.as_ref().is_none_or(|last| {
                    record.seq == last.point.seq + 1 && record.prev == last.point.hash
                });
            if !linked {
                return Err(changed(format!(
                    "seq {} does not link to the record before it",
                    record.seq
                ))
                .into());
            }
            if let Some(note) = &note {
                if record.seq == note.last.seq {
                    if opened.hash != note.last.hash {
                        return Err(changed(format!(
                            "seq {} is not the record the head note confirms",
                            record.seq
                        ))
                        .into());
                    }
                    confirmed_seen = true;
                } else if record.seq > note.last.seq && note.state == HeadState::Closed {
                    return Err(changed(format!(
                        "seq {} follows the record the trail was closed with",
                        record.seq
                    ))
                    .into());
                }
            }
            last = Some(Last {
                point: ChainPoint {
                    seq: record.seq,
                    hash: opened.hash.clone(),
                    key_id: record.key_id.clone(),
                },
                clean_end: record.action == action::RUNTIME_SHUTDOWN
                    && record.reason.as_deref() == Some("shutdown"),
            });
        }
    }

    let trail_from = match files.first() {
        Some((path, _)) => first_record(path, keyring)?,
        None => None,
    };
    let mut losses = Vec::new();
    let last_seq = last.as_ref().map(|l| l.point.seq);
    match &note {
        Some(note) => {
            if !confirmed_seen {
                losses.push(Loss {
                    problem: TrailProblem::TailMissing {
                        confirmed: note.last.seq,
                        last: last_seq,
                    },
                    lost: Some(SeqRange {
                        first: last_seq.map_or(0, |s| s + 1),
                        last: note.last.seq,
                    }),
                });
            }
            if let Some(first) = &trail_from {
                if first.seq > note.trail_from.seq {
                    losses.push(Loss {
                        problem: TrailProblem::PrefixMissing {
                            expected: note.trail_from.seq,
                            found: Some(first.seq),
                        },
                        lost: Some(SeqRange {
                            first: note.trail_from.seq,
                            last: first.seq - 1,
                        }),
                    });
                } else if first.seq == note.trail_from.seq && first.prev != note.trail_from.prev {
                    return Err(TrailProblem::Changed {
                        file: files[0].0.clone(),
                        line: 1,
                        why: "the first record is not the one the head note names".into(),
                    }
                    .into());
                }
            }
        }
        None if saw_format_2 => losses.push(Loss {
            problem: TrailProblem::HeadNoteMissing,
            lost: None,
        }),
        None => {}
    }
    let previous_clean = last.as_ref().is_some_and(|l| l.clean_end)
        && note.as_ref().is_none_or(|n| n.state == HeadState::Closed);
    let head = match &last {
        Some(last) => ChainHead {
            next_seq: last.point.seq + 1,
            prev: last.point.hash.clone(),
        },
        None => ChainHead::genesis(),
    };
    Ok(Recovered {
        head,
        previous: last.map(|l| l.point),
        previous_clean,
        trail_from,
        torn,
        losses,
    })
}

/// The first whole record of `path` (its seq and prev), read without
/// checking more than that it parses: the tail check above verifies hashes.
pub(crate) fn first_record(path: &Path, keyring: &AuditKeyring) -> io::Result<Option<FirstRecord>> {
    use std::io::BufRead;
    let mut reader = io::BufReader::new(std::fs::File::open(path)?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let Some(line) = line.strip_suffix('\n') else {
        return Ok(None);
    };
    Ok(chain::open(keyring, line).ok().map(|opened| FirstRecord {
        seq: opened.record.seq,
        prev: opened.record.prev,
    }))
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}
