//! Issue 15's four audit defects, each reproduced on a real runtime that is
//! stopped and restarted on the same directory, then fixed:
//!
//! (a) a tail cut while stopped is refused at the next start (or, by
//!     config, recorded as an `audit.gap`), never silently sealed over;
//! (b) deleting the oldest files is detected, while retention's own
//!     deletions are recorded and verify;
//! (c) records carry their key's id: after a key change the trail verifies
//!     with a keyring of both keys, and one key alone names the missing id;
//! (d) a torn last line (a crash mid-write) is detected, reported, recorded
//!     as a gap, and never appended onto.
//!
//! Every run shuts down with wgpu's counters back at baseline.

use std::time::{Duration, SystemTime};

use sessionbus::audit::*;
use sessionbus::config::*;
use sessionbus::*;
use sessionbus_testkit::audit::*;

fn previous_trail_problem(err: StartError) -> TrailProblem {
    match err {
        StartError::Audit(AuditError::PreviousTrail { problem, .. }) => problem,
        other => panic!("refused for another reason: {other}"),
    }
}

fn of_action(dir: &std::path::Path, action: &str) -> Vec<AuditRecord> {
    read_records(dir)
        .into_iter()
        .filter(|r| r.action == action)
        .collect()
}

fn keyring(keys: &[&[u8]]) -> AuditKeyring {
    let mut ring = AuditKeyring::new();
    for key in keys {
        ring.add_key(key).unwrap();
    }
    ring
}

// ---- (a) the previous run's tail -------------------------------------------------

#[tokio::test]
async fn a_clean_restart_records_the_previous_head_it_verified() {
    let dir = scratch_dir("restart-clean");
    one_run(config_with_audit(&dir)).await;
    let before = read_records(&dir);
    let last_line = trail_text(&dir).lines().last().unwrap().to_string();
    one_run(config_with_audit(&dir)).await;

    let started = of_action(&dir, action::RUNTIME_STARTED);
    assert_eq!(started.len(), 2);
    let first = started[0].trail.clone().unwrap();
    assert_eq!(first.previous, None, "a new trail has no previous run");
    let second = started[1].trail.clone().unwrap();
    let previous = second.previous.expect("names the previous head");
    assert_eq!(previous.seq, before.last().unwrap().seq);
    assert!(
        last_line.contains(&previous.hash),
        "the hash of its last line"
    );
    assert_eq!(previous.key_id, started[0].key_id);
    assert_eq!(second.previous_clean, Some(true));
    assert_eq!(second.format, Some(2));
    let report = verify_dir(&dir, &test_key()).unwrap();
    assert_eq!(report.closed, Some(true));
    assert!(report.gaps.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_tail_cut_while_stopped_refuses_the_next_start() {
    let dir = scratch_dir("restart-cut-tail");
    one_run(config_with_audit(&dir)).await;
    let confirmed = read_records(&dir).last().unwrap().seq;
    let last = trail_files(&dir).pop().unwrap();
    cut_last_lines(&last, 2);
    let untouched = snapshot(&dir);

    let err = refused_start(config_with_audit(&dir)).await;
    assert!(err.to_string().contains("tail was cut"), "{err}");
    assert_eq!(
        previous_trail_problem(err),
        TrailProblem::TailMissing {
            confirmed,
            last: Some(confirmed - 2),
        }
    );
    assert_eq!(snapshot(&dir), untouched, "nothing sealed over the cut");
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!(
        bad.why,
        BreakKind::TailMissing {
            confirmed,
            last: Some(confirmed - 2)
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn with_record_gap_a_cut_tail_is_recorded_as_lost_and_the_trail_goes_on() {
    let dir = scratch_dir("restart-cut-tail-gap");
    one_run(config_with_audit(&dir)).await;
    let confirmed = read_records(&dir).last().unwrap().seq;
    cut_last_lines(&trail_files(&dir).pop().unwrap(), 2);

    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().on_lost_records = LostRecords::RecordGap;
    one_run(config).await;

    let gaps = of_action(&dir, action::GAP);
    assert_eq!(gaps.len(), 1);
    let lost = gaps[0].trail.clone().unwrap().lost.unwrap();
    assert_eq!(
        lost,
        SeqRange {
            first: confirmed - 1,
            last: confirmed
        }
    );
    assert!(gaps[0].reason.as_deref().unwrap().contains("tail was cut"));
    let started = &of_action(&dir, action::RUNTIME_STARTED)[1];
    let facts = started.trail.clone().unwrap();
    assert_eq!(
        facts.previous.unwrap().seq,
        confirmed - 2,
        "the last record that verified"
    );
    assert_eq!(facts.previous_clean, Some(false));
    let report = verify_dir(&dir, &test_key()).expect("the trail after the gap verifies");
    assert_eq!(report.gaps.len(), 1);
    assert!(report.ends_with_shutdown);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_changed_record_in_the_tail_refuses_even_with_record_gap() {
    let dir = scratch_dir("restart-changed-tail");
    one_run(config_with_audit(&dir)).await;
    let last = trail_files(&dir).pop().unwrap();
    let text = std::fs::read_to_string(&last).unwrap();
    std::fs::write(&last, text.replace("\"bytes\":4096", "\"bytes\":4097")).unwrap();
    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().on_lost_records = LostRecords::RecordGap;
    match previous_trail_problem(refused_start(config).await) {
        TrailProblem::Changed { file, why, .. } => {
            assert_eq!(file, last);
            assert!(why.contains("hash does not match"), "{why}");
        }
        other => panic!("{other}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- (b) deleted files against retention -----------------------------------------

#[tokio::test]
async fn deleting_the_oldest_file_is_detected() {
    let dir = scratch_dir("restart-deleted-first");
    for _ in 0..3 {
        one_run(config_with_audit(&dir)).await;
    }
    let files = trail_files(&dir);
    assert_eq!(files.len(), 3, "one file per start");
    std::fs::remove_file(&files[0]).unwrap();
    let second_first = read_records(&dir)[0].seq;

    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!((bad.file.clone(), bad.line), (files[1].clone(), 1));
    assert_eq!(
        bad.why,
        BreakKind::FilesMissing {
            first_seq: second_first
        }
    );
    assert_eq!(
        previous_trail_problem(refused_start(config_with_audit(&dir)).await),
        TrailProblem::PrefixMissing {
            expected: 0,
            found: Some(second_first)
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn retention_deletions_are_recorded_and_verify() {
    let dir = scratch_dir("restart-retention");
    for _ in 0..3 {
        one_run(config_with_audit(&dir)).await;
    }
    let files = trail_files(&dir);
    // The first two files were last written 200 days ago (retention: 180).
    let long_ago = SystemTime::now() - Duration::from_secs(200 * 86_400);
    for file in &files[..2] {
        let f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
        f.set_modified(long_ago).unwrap();
    }
    one_run(config_with_audit(&dir)).await;

    let left = trail_files(&dir);
    assert!(!left.contains(&files[0]) && !left.contains(&files[1]));
    let deleted = of_action(&dir, action::FILES_DELETED);
    assert_eq!(deleted.len(), 1);
    let facts = deleted[0].trail.clone().unwrap();
    let names: Vec<String> = files[..2]
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(facts.files, names);
    let report = verify_dir(&dir, &test_key()).expect("retention's deletions verify");
    assert_eq!(report.files_deleted, 2);
    assert_eq!(report.first_seq, Some(facts.trail_from.unwrap().seq));
    // And the next start finds nothing missing.
    one_run(config_with_audit(&dir)).await;
    verify_dir(&dir, &test_key()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- (c) key change ---------------------------------------------------------------

const NEW_KEY_HEX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const NEW_KEY: [u8; 32] = [0x5a; 32];

fn config_with_new_key(dir: &std::path::Path, old_keys: Option<String>) -> Config {
    let mut config = config_with_audit(dir);
    let audit = config.audit.as_mut().unwrap();
    audit.key = Some(NEW_KEY_HEX.into());
    audit.old_keys = old_keys;
    config
}

#[tokio::test]
async fn after_a_key_change_the_trail_verifies_with_a_keyring_of_both() {
    let dir = scratch_dir("restart-key-change");
    one_run(config_with_audit(&dir)).await;
    let old_id = read_records(&dir)[0].key_id.clone().unwrap();

    // Without the old key the start cannot verify the previous tail.
    assert_eq!(
        previous_trail_problem(refused_start(config_with_new_key(&dir, None)).await),
        TrailProblem::UnknownKey {
            key_id: old_id.clone()
        }
    );
    // With it (labelled by its id) the chain goes on under the new key.
    let old_keys = format!("{old_id}:{TEST_KEY_HEX}");
    one_run(config_with_new_key(&dir, Some(old_keys))).await;
    let records = read_records(&dir);
    let new_id = records.last().unwrap().key_id.clone().unwrap();
    assert_ne!(new_id, old_id);
    let started = &of_action(&dir, action::RUNTIME_STARTED)[1];
    assert_eq!(started.key_id.as_deref(), Some(new_id.as_str()));
    let previous = started.trail.clone().unwrap().previous.unwrap();
    assert_eq!(previous.key_id.as_deref(), Some(old_id.as_str()));

    let report = verify_with_keyring(&dir, &keyring(&[&NEW_KEY, &test_key()])).unwrap();
    assert_eq!(report.key_ids, vec![old_id.clone(), new_id.clone()]);
    assert!(report.ends_with_shutdown);

    // One key alone names the id that is missing.
    let files = trail_files(&dir);
    let bad = verify_dir(&dir, &NEW_KEY).unwrap_err();
    assert_eq!((bad.file.clone(), bad.line), (files[0].clone(), 1));
    assert_eq!(bad.why, BreakKind::UnknownKey(old_id.clone()));
    assert!(bad.to_string().contains(&old_id));
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!((bad.file, bad.line), (files[1].clone(), 1));
    assert_eq!(bad.why, BreakKind::UnknownKey(new_id));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- (d) torn last line -------------------------------------------------------------

/// A run that crashed: records written, the trail never closed.
fn crashed_run(dir: &std::path::Path) {
    let mut trail = AuditTrail::open(&audit_config(dir)).unwrap();
    let mut record = AuditRecord::new(action::SESSION_OPENED, SystemTime::now());
    record.resource = Some("0".repeat(32));
    trail.append(record).unwrap();
    trail.sync().unwrap();
    // Dropped without close(): as a process killed here.
}

/// Half of a record line, as a write cut by a crash leaves it.
fn half_line() -> String {
    let mut record = AuditRecord::new(action::SESSION_CLOSED, SystemTime::now());
    record.seq = 99;
    serde_json::to_string(&record).unwrap()[..70].to_string()
}

#[tokio::test]
async fn a_torn_line_after_rotation_is_recorded_and_never_appended_onto() {
    let dir = scratch_dir("restart-torn-rotated");
    one_run(config_with_audit(&dir)).await;
    crashed_run(&dir);
    // The crash came mid-write just after a rotation: the new file holds half a line.
    let next = read_records(&dir).last().unwrap().seq + 1;
    let torn_name = format!("audit-{next:020}.jsonl");
    let half = half_line();
    std::fs::write(dir.join(&torn_name), &half).unwrap();

    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!(bad.file, dir.join(&torn_name));
    assert!(matches!(bad.why, BreakKind::Malformed(_)), "{bad}");

    one_run(config_with_audit(&dir)).await;
    // The torn bytes were moved aside whole; the new file starts clean.
    let aside = dir.join(format!("{torn_name}.torn"));
    assert_eq!(std::fs::read_to_string(&aside).unwrap(), half);
    let gaps = of_action(&dir, action::GAP);
    assert_eq!(gaps.len(), 1);
    let torn = gaps[0].trail.clone().unwrap().torn.unwrap();
    assert_eq!(torn.file, torn_name);
    assert_eq!((torn.offset, torn.bytes), (0, half.len() as u64));
    assert_eq!(
        torn.moved_to.as_deref(),
        Some(format!("{torn_name}.torn").as_str())
    );
    let started = &of_action(&dir, action::RUNTIME_STARTED)[2];
    assert_eq!(started.trail.clone().unwrap().previous_clean, Some(false));
    let report = verify_dir(&dir, &test_key()).expect("the trail verifies after the gap");
    assert_eq!(report.gaps.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_torn_line_after_whole_records_stays_as_it_is_and_verifies_once_recorded() {
    let dir = scratch_dir("restart-torn-inline");
    one_run(config_with_audit(&dir)).await;
    crashed_run(&dir);
    let last = trail_files(&dir).pop().unwrap();
    let half = half_line();
    let mut bytes = std::fs::read(&last).unwrap();
    let offset = bytes.len() as u64;
    bytes.extend_from_slice(half.as_bytes());
    std::fs::write(&last, &bytes).unwrap();

    one_run(config_with_audit(&dir)).await;
    assert_eq!(
        std::fs::read(&last).unwrap(),
        bytes,
        "not appended onto, not cut"
    );
    let torn = of_action(&dir, action::GAP)[0]
        .trail
        .clone()
        .unwrap()
        .torn
        .unwrap();
    assert_eq!((torn.offset, torn.moved_to), (offset, None));
    let report = verify_dir(&dir, &test_key()).expect("a recorded torn line verifies");
    assert_eq!(report.gaps.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- the head note ------------------------------------------------------------------

#[tokio::test]
async fn a_run_that_crashed_is_recorded_as_not_clean() {
    let dir = scratch_dir("restart-after-crash");
    one_run(config_with_audit(&dir)).await;
    crashed_run(&dir);
    let crashed_last = read_records(&dir).last().unwrap().seq;
    assert_eq!(verify_dir(&dir, &test_key()).unwrap().closed, Some(false));
    one_run(config_with_audit(&dir)).await;
    let started = &of_action(&dir, action::RUNTIME_STARTED)[2];
    let facts = started.trail.clone().unwrap();
    assert_eq!(facts.previous.unwrap().seq, crashed_last);
    assert_eq!(facts.previous_clean, Some(false));
    verify_dir(&dir, &test_key()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_edited_head_note_refuses_the_start_and_fails_verify() {
    let dir = scratch_dir("restart-edited-head");
    one_run(config_with_audit(&dir)).await;
    let head = dir.join("audit.head");
    let text = std::fs::read_to_string(&head).unwrap();
    std::fs::write(&head, text.replace("\"closed\"", "\"open\"")).unwrap();
    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().on_lost_records = LostRecords::RecordGap;
    assert!(matches!(
        previous_trail_problem(refused_start(config).await),
        TrailProblem::HeadNoteInvalid(_)
    ));
    let bad = verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!(bad.file, head);
    assert!(matches!(bad.why, BreakKind::HeadNote(_)), "{bad}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_deleted_head_note_refuses_the_start_or_is_recorded_as_a_gap() {
    let dir = scratch_dir("restart-deleted-head");
    one_run(config_with_audit(&dir)).await;
    std::fs::remove_file(dir.join("audit.head")).unwrap();
    assert_eq!(
        previous_trail_problem(refused_start(config_with_audit(&dir)).await),
        TrailProblem::HeadNoteMissing
    );
    assert!(matches!(
        verify_dir(&dir, &test_key()).unwrap_err().why,
        BreakKind::HeadNote(_)
    ));
    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().on_lost_records = LostRecords::RecordGap;
    one_run(config).await;
    let report = verify_dir(&dir, &test_key()).unwrap();
    assert_eq!(report.gaps.len(), 1);
    assert!(report.gaps[0].contains("head note"), "{:?}", report.gaps);
    std::fs::remove_dir_all(&dir).unwrap();
}
