//! The trail on disk: appends sealed records, rotates files, applies retention.
//!
//! Ground rules: one `AuditTrail` per directory, used from one thread (the
//! audit writer's). A record is one `write_all` of one line; if the write
//! fails, the file is cut back to its length before it, so a failure never
//! leaves half a line behind, and the chain head is not advanced, so the
//! next record links to the last one on disk.
//!
//! Opening checks what earlier runs left (`recover.rs`) before anything is
//! appended, and always starts a new file: never one that ends in a torn
//! line. The trail's own records (`runtime.started`, `audit.gap`,
//! `audit.files_deleted`) are queued as notes and written before the next
//! record, so a note is never lost to a failed write either.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::chain::{self, AuditKeys, ChainHead};
use super::config::{AuditConfig, LostRecords};
use super::error::AuditError;
use super::facts::{ChainPoint, FirstRecord, TornLine, TrailFacts};
use super::head::{self, HeadNote, HeadState};
use super::keyring::AuditKeyring;
use super::record::{AuditRecord, action};
use super::recover::{self, Failure, Recovered};
use super::rotate::{self, AuditClock};

/// The record format this code writes.
pub(crate) const FORMAT: u32 = 2;

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
    /// Gaps found at start and recorded as `audit.gap` (a torn line, or,
    /// with `on_lost_records = "record_gap"`, records missing).
    pub gaps_recorded: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    records_written: AtomicU64,
    write_failures: AtomicU64,
    files_rotated: AtomicU64,
    files_deleted: AtomicU64,
    gaps_recorded: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> AuditStats {
        AuditStats {
            records_written: self.records_written.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            files_rotated: self.files_rotated.load(Ordering::Relaxed),
            files_deleted: self.files_deleted.load(Ordering::Relaxed),
            gaps_recorded: self.gaps_recorded.load(Ordering::Relaxed),
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
    rotate_size: u64,
    rotate_after: Duration,
    retention: Duration,
    keys: AuditKeys,
    keyring: AuditKeyring,
    clock: Arc<dyn AuditClock>,
    head: ChainHead,
    /// The last record written (for the head note).
    last: Option<ChainPoint>,
    /// The first record on disk (for the head note).
    trail_from: Option<FirstRecord>,
    /// The trail's own records, written before the next one.
    notes: VecDeque<AuditRecord>,
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
    /// configuration (keys included), creates the directory, checks the
    /// previous tail under its key and against the head note (refusing with
    /// [`AuditError::PreviousTrail`] what does not verify, or recording a
    /// gap), starts a new file that continues the chain, writes
    /// `runtime.started`, and deletes files past retention. An unwritable
    /// directory is refused here. Call [`close`](Self::close) when done; a
    /// trail dropped without it reads as a run that did not end in order.
    pub fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        Self::open_with_clock(config, Arc::new(rotate::SystemClock))
    }

    /// Like [`open`](Self::open), reading the time from `clock`.
    pub fn open_with_clock(
        config: &AuditConfig,
        clock: Arc<dyn AuditClock>,
    ) -> Result<Self, AuditError> {
        config.validate()?;
        let keyring = config.resolve_keyring()?;
        let unwritable = |source| AuditError::Unwritable {
            path: config.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(unwritable)?;
        let recovered = match recover::recover(&config.dir, &keyring) {
            Ok(recovered) => recovered,
            Err(Failure::Io(e)) => return Err(unwritable(e)),
            Err(Failure::Problem(problem)) => {
                return Err(AuditError::PreviousTrail {
                    dir: config.dir.clone(),
                    problem,
                });
            }
        };
        if config.on_lost_records == LostRecords::Refuse {
            if let Some(loss) = recovered.losses.first() {
                return Err(AuditError::PreviousTrail {
                    dir: config.dir.clone(),
                    problem: loss.problem.clone(),
                });
            }
        }
        let mut trail = AuditTrail {
            dir: config.dir.clone(),
            rotate_size: config.rotate_size,
            rotate_after: config.rotate_age,
            retention: config.retention,
            keys: keyring
                .current()
                .expect("a validated config has a key")
                .clone(),
            keyring,
            clock,
            head: recovered.head.clone(),
            last: recovered.previous.clone(),
            trail_from: recovered.trail_from.clone(),
            notes: VecDeque::new(),
            current: None,
            counters: Arc::default(),
        };
        let moved_to = trail.set_torn_aside(&recovered).map_err(unwritable)?;
        trail.start_file().map_err(unwritable)?;
        trail.queue_start_notes(recovered, moved_to);
        trail.apply_retention();
        trail.flush_notes().map_err(unwritable)?;
        trail.write_head(HeadState::Open).map_err(unwritable)?;
        Ok(trail)
    }

    /// A torn last file whose name the new file needs is moved aside
    /// (`<name>.torn`), whole: its bytes stay for whoever investigates.
    fn set_torn_aside(&self, recovered: &Recovered) -> io::Result<Option<String>> {
        let Some(torn) = &recovered.torn else {
            return Ok(None);
        };
        if torn.path != self.dir.join(rotate::file_name(self.head.next_seq)) {
            return Ok(None);
        }
        let name = file_name_of(&torn.path);
        let mut aside = format!("{name}.torn");
        let mut n = 1;
        while self.dir.join(&aside).exists() {
            n += 1;
            aside = format!("{name}.torn.{n}");
        }
        std::fs::rename(&torn.path, self.dir.join(&aside))?;
        Ok(Some(aside))
    }

    /// `runtime.started` (what the previous run left, verified) and a gap
    /// for each torn line or loss found.
    fn queue_start_notes(&mut self, recovered: Recovered, moved_to: Option<String>) {
        let now = self.clock.now();
        let trail_from = Some(self.first_on_disk());
        let mut started = AuditRecord::new(action::RUNTIME_STARTED, now);
        started.trail = Some(TrailFacts {
            format: Some(FORMAT),
            previous_clean: recovered
                .previous
                .as_ref()
                .map(|_| recovered.previous_clean),
            previous: recovered.previous.clone(),
            trail_from: trail_from.clone(),
            ..TrailFacts::default()
        });
        self.notes.push_back(started);
        if let Some(torn) = &recovered.torn {
            let file = file_name_of(&torn.path);
            let mut gap = AuditRecord::new(action::GAP, now);
            gap.reason = Some(format!(
                "torn last line: {} bytes at offset {} of {file}, a record whose write never \
                 completed (the previous run stopped mid-write); not appended onto",
                torn.bytes, torn.offset
            ));
            gap.trail = Some(TrailFacts {
                torn: Some(TornLine {
                    file: file.clone(),
                    offset: torn.offset,
                    bytes: torn.bytes,
                    sha256: torn.sha256.clone(),
                    moved_to: moved_to.clone(),
                }),
                ..TrailFacts::default()
            });
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "audit.torn_line",
                file = %torn.path.display(),
                offset = torn.offset,
                bytes = torn.bytes,
                "the audit trail ends in a torn line; recorded as a gap, not appended onto"
            );
            self.notes.push_back(gap);
        }
        for loss in &recovered.losses {
            let mut gap = AuditRecord::new(action::GAP, now);
            gap.reason = Some(format!("records lost while stopped: {}", loss.problem));
            gap.trail = Some(TrailFacts {
                lost: loss.lost,
                trail_from: trail_from.clone(),
                ..TrailFacts::default()
            });
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "audit.gap",
                dir = %self.dir.display(),
                problem = %loss.problem,
                "records of earlier runs are missing; recorded as a gap"
            );
            self.notes.push_back(gap);
        }
        self.counters
            .gaps_recorded
            .fetch_add((self.notes.len() - 1) as u64, Ordering::Relaxed);
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
        self.flush_notes()?;
        self.write_sealed(record)
    }

    /// Writes the queued notes; one that fails stays queued for the next try.
    fn flush_notes(&mut self) -> io::Result<()> {
        while let Some(note) = self.notes.front() {
            self.write_sealed(note.clone())?;
            self.notes.pop_front();
            self.counters
                .records_written
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn write_sealed(&mut self, record: AuditRecord) -> io::Result<()> {
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
        self.last = Some(ChainPoint {
            seq: next.next_seq - 1,
            hash: next.prev.clone(),
            key_id: Some(self.keys.id.clone()),
        });
        if self.trail_from.is_none() {
            self.trail_from = Some(FirstRecord {
                seq: self.head.next_seq,
                prev: self.head.prev.clone(),
            });
        }
        self.head = next;
        Ok(())
    }

    /// Syncs and notes in `audit.head` that the trail is closed: its last
    /// record is the last. The next start checks the trail ends there.
    pub fn close(&mut self) -> io::Result<()> {
        self.flush_notes()?;
        self.sync()?;
        self.write_head(HeadState::Closed)
    }

    fn write_head(&self, state: HeadState) -> io::Result<()> {
        let Some(last) = self.last.clone() else {
            return Ok(());
        };
        let note = HeadNote {
            format: FORMAT,
            state,
            trail_from: self.first_on_disk(),
            last,
            key_id: self.keys.id.clone(),
        };
        head::write(&self.dir, &self.keys, note)
    }

    /// The first record on disk, or the next one to be written on an empty trail.
    fn first_on_disk(&self) -> FirstRecord {
        self.trail_from.clone().unwrap_or_else(|| FirstRecord {
            seq: self.head.next_seq,
            prev: self.head.prev.clone(),
        })
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
                c.bytes >= self.rotate_size
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
        if let Err(e) = self.write_head(HeadState::Open) {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "audit.head_failed",
                dir = %self.dir.display(),
                error = %e,
                "could not update the audit head note"
            );
        }
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
            Ok(deleted) if deleted.is_empty() => {}
            Ok(deleted) => {
                self.counters
                    .files_deleted
                    .fetch_add(deleted.len() as u64, Ordering::Relaxed);
                // Where the trail begins now: the first remaining file's first
                // record, or (all older files gone) the next record written.
                self.trail_from = rotate::list(&self.dir)
                    .ok()
                    .and_then(|files| files.into_iter().next())
                    .and_then(|(path, _)| {
                        recover::first_record(&path, &self.keyring).ok().flatten()
                    });
                let first = self.first_on_disk();
                let mut note = AuditRecord::new(action::FILES_DELETED, self.clock.now());
                note.reason = Some(format!(
                    "{} files past the retention period deleted; the trail now begins at seq {}",
                    deleted.len(),
                    first.seq
                ));
                note.trail = Some(TrailFacts {
                    files: deleted.iter().map(|p| file_name_of(p)).collect(),
                    trail_from: Some(first),
                    ..TrailFacts::default()
                });
                self.notes.push_back(note);
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

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
