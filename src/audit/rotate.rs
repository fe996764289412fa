//! The trail's files: names, order, and retention.
//!
//! A file is named after the `seq` of its first record
//! (`audit-00000000000000000042.jsonl`), so name order is chain order.
//! Retention goes by a file's last modification (its last record): the
//! oldest files, last written more than `retention` ago, are deleted.
//! The file being written is never deleted.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where the audit trail reads the time: the one seam, so rotation by age
/// and retention are tested on a fake clock instead of by waiting days.
pub trait AuditClock: Send + Sync + 'static {
    /// Now, on the wall clock.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl AuditClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";

/// The name of the file whose first record has `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{PREFIX}{first_seq:020}{SUFFIX}")
}

/// The trail's files in `dir`, in chain order, with their first `seq`.
/// Other files are left alone.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((entry.path(), seq));
    }
    files.sort_by_key(|(_, seq)| *seq);
    Ok(files)
}

/// Deletes the oldest of the trail's files while they were last written
/// before `now - retention`, never `keep`; returns them. Only a prefix
/// of the chain goes, so what is left is always one unbroken chain (and the
/// trail records the deletion, so it verifies as retention, not as loss).
pub(crate) fn delete_expired(
    dir: &Path,
    now: SystemTime,
    retention: Duration,
    keep: Option<&Path>,
) -> io::Result<Vec<PathBuf>> {
    let Some(cutoff) = now.checked_sub(retention) else {
        return Ok(Vec::new());
    };
    let mut deleted = Vec::new();
    for (path, _) in list(dir)? {
        if Some(path.as_path()) == keep {
            break;
        }
        let modified = std::fs::metadata(&path)?.modified()?;
        if modified >= cutoff {
            break;
        }
        std::fs::remove_file(&path)?;
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "audit.file_deleted",
            file = %path.display(),
            "audit file past its retention period deleted"
        );
        deleted.push(path);
    }
    Ok(deleted)
}
