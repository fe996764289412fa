//! Rotation by size and by age keeps the chain verifiable across files;
//! files past the retention period are deleted. Time comes from a fake
//! clock (the trail's one time seam): no test waits for a day to pass.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sessionbus::audit::*;
use sessionbus_testkit::audit::*;
use sessionbus_testkit::*;

const DAY: Duration = Duration::from_secs(86_400);

/// A clock the test moves by hand.
#[derive(Clone)]
struct FakeClock(Arc<Mutex<SystemTime>>);

impl FakeClock {
    fn new() -> Self {
        FakeClock(Arc::new(Mutex::new(SystemTime::now())))
    }
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl AuditClock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

fn record(i: u64) -> AuditRecord {
    let mut record = AuditRecord::new(action::SESSION_CLOSED, SystemTime::now());
    record.resource = Some(format!("{i:032x}"));
    record
}

#[test]
fn files_rotate_by_age_and_the_chain_spans_them() {
    let dir = scratch_dir("rotate-age");
    let clock = FakeClock::new();
    let config = AuditConfig {
        rotate_age: std::time::Duration::from_secs(3600),
        ..audit_config(&dir)
    };
    let mut trail = AuditTrail::open_with_clock(&config, Arc::new(clock.clone())).unwrap();
    for hour in 0..4 {
        for i in 0..3 {
            trail.append(record(hour * 10 + i)).unwrap();
        }
        clock.advance(Duration::from_secs(3600));
    }
    trail.sync().unwrap();
    assert_eq!(trail.stats().files_rotated, 3, "one new file per hour");
    assert_eq!(trail_files(&dir).len(), 4);
    let report = verify_dir(&dir, &test_key()).unwrap();
    assert_eq!(report.records, 1 + 12, "runtime.started, then the records");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_past_retention_are_deleted_and_the_rest_still_verifies() {
    let dir = scratch_dir("retention");
    let clock = FakeClock::new();
    let config = AuditConfig {
        rotate_size: 1024,
        retention: std::time::Duration::from_secs(180 * 86_400),
        ..audit_config(&dir)
    };
    let mut trail = AuditTrail::open_with_clock(&config, Arc::new(clock.clone())).unwrap();
    for i in 0..30 {
        trail.append(record(i)).unwrap();
    }
    let old_files = trail_files(&dir);
    assert!(old_files.len() >= 3, "{} files", old_files.len());

    // 179 days later nothing is old enough; 181 days later every file last
    // written back then goes at the next rotation, except the one being written.
    clock.advance(179 * DAY);
    for i in 30..40 {
        trail.append(record(i)).unwrap();
    }
    assert_eq!(trail.stats().files_deleted, 0);
    clock.advance(2 * DAY);
    for i in 40..60 {
        trail.append(record(i)).unwrap();
    }
    trail.sync().unwrap();
    let left = trail_files(&dir);
    // The last of the first batch's files was still being written 179 days later.
    assert_eq!(trail.stats().files_deleted as usize, old_files.len() - 1);
    for file in &old_files[..old_files.len() - 1] {
        assert!(
            !left.contains(file),
            "{} outlived retention",
            file.display()
        );
    }
    assert!(left.contains(old_files.last().unwrap()));
    let report = verify_dir(&dir, &test_key()).expect("what is left still verifies");
    assert!(
        report.first_seq.unwrap() > 0,
        "starts after the deleted files"
    );
    // runtime.started, 60 records, and the audit.files_deleted that retention wrote.
    assert_eq!(report.last_seq, Some(61));
    assert_eq!(report.files_deleted, trail.stats().files_deleted);
    let deleted: Vec<_> = read_records(&dir)
        .into_iter()
        .filter(|r| r.action == action::FILES_DELETED)
        .collect();
    assert_eq!(deleted.len(), 1, "one retention run, one record");
    let facts = deleted[0].trail.clone().unwrap();
    assert_eq!(facts.files.len(), old_files.len() - 1);
    assert_eq!(facts.trail_from.unwrap().seq, report.first_seq.unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_runtime_rotating_by_size_leaves_a_verifiable_chain() {
    let dir = scratch_dir("rotate-runtime");
    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().rotate_size = 2048;
    let mut h = start_with(config).await;
    for i in 0..20 {
        let session = h.rt.open(format!("user-{i}@example.com")).await.unwrap();
        session.allocate(4 * KIB).await.unwrap();
        session.close().await.unwrap();
    }
    h.until_released(20).await;
    let report = h.shutdown_at_baseline().await;
    let audit = report.audit.unwrap();
    assert!(audit.files_rotated >= 3, "{audit:?}");
    assert_eq!(audit.write_failures, 0);
    let verified = verify_dir(&dir, &test_key()).unwrap();
    assert_eq!(verified.records, audit.records_written);
    assert!(verified.ends_with_shutdown);
    assert_eq!(verified.files.len() as u64, audit.files_rotated + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
