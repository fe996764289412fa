//! The trail on disk: appends sealed records, rotates files, applies retention.
//!
//! Ground rules: one `AuditTrail` per directory, used from one thread (the
//! audit writer's). A record is one `write_all` of one line; if the write
//! fails, the file is cut back to its length before it, so a failure never
//! leaves half a line behind, and the chain head is not advanced, so the
//! next record links to the last one on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::chain::{self, AuditKeys, ChainHead};
use super::config::AuditConfig;
use super::error::AuditError;
use super::record::AuditRecord;
use super::rotate::{self, AuditClock};

/// The audit trail's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditStats {
    /// Records on disk, written by this process.
    pub records_written: u64,
    /// Records that could not be written (disk full, I/O error), so are
    /// missing from the trail. An incident, logged at ERROR as
    /// `audit.write_failed`; once writing works again, an
    /// `audit.records_lost` record in the chain says how many are missing.
    pub write_failures: u64,
    /// Files started after the first (by size or age).
    pub files_rotated: u64,
    /// Files deleted past their retention period.
    pub files_deleted: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    records_written: AtomicU64,
    write_failures: AtomicU64,
    files_rotated: AtomicU64,
    files_deleted: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> AuditStats {
        AuditStats {
            records_written: self.records_written.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            files_rotated: self.files_rotated.load(Ordering::Relaxed),
            files_deleted: self.files_deleted.load(Ordering::Relaxed),
        }
    }
}

struct Current {
    file: File,
    path: PathBuf,
    bytes: u64,
    opened_at: SystemTime,
}

/// The audit trail in one directory.
pub struct AuditTrail {
    dir: PathBuf,
    rotate_bytes: u64,
    rotate_after: Duration,
    retention: Duration,
    keys: AuditKeys,
    clock: Arc<dyn AuditClock>,
    head: ChainHead,
    current: Option<Current>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("dir", &self.dir)
            .field("next_seq", &self.head.next_seq)
            .finish_non_exhaustive()
    }
}

impl AuditTrail {
    /// Opens the trail in `config.dir` on the system clock: validates the
    /// configuration (key included), creates the directory, continues the
    /// chain of the files already there, starts a new file, and deletes
    /// files past retention. An unwritable directory is refused here.
    pub fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        Self::open_with_clock(config, Arc::new(rotate::SystemClock))
    }

    /// Like [`open`](Self::open), reading the time from `clock`.
    pub fn open_with_clock(
        config: &AuditConfig,
        clock: Arc<dyn AuditClock>,
    ) -> Result<Self, AuditError> {
        config.validate()?;
        let key = config.resolve_key()?;
        let unwritable = |source| AuditError::Unwritable {
            path: config.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(unwritable)?;
        let head = recover_head(&config.dir).map_err(unwritable)?;
        let mut trail = AuditTrail {
            dir: config.dir.clone(),
            rotate_bytes: config.rotate_bytes,
            rotate_after: Duration::from_secs(config.rotate_secs),
            retention: Duration::from_secs(config.retention_days * 86_400),
            keys: AuditKeys::derive(&key),
            clock,
            head,
            current: None,
            counters: Arc::default(),
        };
        trail.start_file().map_err(unwritable)?;
        trail.apply_retention();
        Ok(trail)
    }

    /// The counters.
    pub fn stats(&self) -> AuditStats {
        self.counters.snapshot()
    }

    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub(crate) fn keys(&self) -> &AuditKeys {
        &self.keys
    }

    /// The time on the trail's clock.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The file being written.
    pub fn current_file(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    /// Appends `record` (its `seq` and `prev` are set here), rotating first
    /// if the current file is full or old. A failure is counted and
    /// returned; nothing of the record stays on disk.
    pub fn append(&mut self, record: AuditRecord) -> io::Result<()> {
        let result = self.try_append(record);
        match &result {
            Ok(()) => self
                .counters
                .records_written
                .fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.write_failures.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// Appends a note about the trail itself (records lost): counted as
    /// written when it is, but not as a lost record when it is not (the
    /// writer keeps it and tries again).
    pub(crate) fn append_note(&mut self, record: AuditRecord) -> io::Result<()> {
        self.try_append(record)?;
        self.counters
            .records_written
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn try_append(&mut self, record: AuditRecord) -> io::Result<()> {
        if self.due_for_rotation() {
            self.rotate()?;
        }
        let (line, next) = chain::seal(&self.keys, &self.head, record);
        let current = self
            .current
            .as_mut()
            .expect("a file is open after rotation");
        if let Err(e) = current.file.write_all(line.as_bytes()) {
            // Cut back what part of the line made it, so the file stays whole records.
            let _ = current.file.set_len(current.bytes);
            return Err(e);
        }
        current.bytes += line.len() as u64;
        self.head = next;
        Ok(())
    }

    /// Forces what was written to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        match &self.current {
            Some(current) => current.file.sync_data(),
            None => Ok(()),
        }
    }

    fn due_for_rotation(&self) -> bool {
        match &self.current {
            None => true,
            Some(c) => {
                c.bytes >= self.rotate_bytes
                    || self
                        .clock
                        .now()
                        .duration_since(c.opened_at)
                        .is_ok_and(|age| age >= self.rotate_after)
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(old) = self.current.take() {
            // Best effort: the old file's records were all written already.
            // Its modification time is its last record's on the trail's
            // clock, which retention reads (the same as the file system's
            // on the system clock; a test's fake clock moves it too).
            let _ = old.file.set_modified(self.clock.now());
            let _ = old.file.sync_data();
        }
        self.start_file()?;
        self.counters.files_rotated.fetch_add(1, Ordering::Relaxed);
        self.apply_retention();
        Ok(())
    }

    fn start_file(&mut self) -> io::Result<()> {
        let path = self.dir.join(rotate::file_name(self.head.next_seq));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        self.current = Some(Current {
            file,
            path,
            bytes,
            opened_at: self.clock.now(),
        });
        Ok(())
    }

    fn apply_retention(&mut self) {
        let keep = self.current.as_ref().map(|c| c.path.clone());
        match rotate::delete_expired(&self.dir, self.clock.now(), self.retention, keep.as_deref()) {
            Ok(n) => {
                self.counters.files_deleted.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(
                target: "sessionbus::supervisor",
                event = "audit.retention_failed",
                dir = %self.dir.display(),
                error = %e,
                "could not apply the audit retention period"
            ),
        }
    }
}

/// The chain head after the last whole record in `dir` (genesis if none).
fn recover_head(dir: &Path) -> io::Result<ChainHead> {
    for (path, _) in rotate::list(dir)?.into_iter().rev() {
        let mut last = None;
        for line in BufReader::new(File::open(&path)?).lines() {
            let line = line?;
            if let Ok(opened) = chain::open(None, &line) {
                last = Some(opened);
            }
        }
        if let Some(last) = last {
            return Ok(ChainHead {
                next_seq: last.record.seq + 1,
                prev: last.hash,
            });
        }
    }
    Ok(ChainHead::genesis())
}
