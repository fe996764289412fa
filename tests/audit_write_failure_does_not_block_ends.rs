//! A write failure at run time (the directory vanished under the trail,
//! as a full or failed disk would) is counted and logged at ERROR, and
//! session ends go on: every close returns its receipt, nothing leaks.

use std::time::Duration;

use sessionbus_testkit::audit::*;
use sessionbus_testkit::*;

#[tokio::test]
async fn a_failing_disk_is_counted_and_logged_and_ends_still_complete() {
    let logs = logs::capture();
    let dir = scratch_dir("audit-write-failure");
    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().rotate_size = 1024;
    let mut h = start_with(config).await;
    let first = h.rt.open("before@example.com").await.unwrap();
    first.close().await.unwrap();
    h.until_released(1).await;

    // The directory goes away and a file takes its name: the next file cannot be created.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "in the way").unwrap();
    for i in 0..10 {
        let session = h.rt.open(format!("after-{i}@example.com")).await.unwrap();
        session.allocate(16 * KIB).await.unwrap();
        let receipt = session
            .close()
            .await
            .expect("an end never waits on the disk");
        assert_eq!(receipt.bytes, 16 * KIB);
    }
    h.until_released(10).await;
    h.assert_gpu_at_baseline();

    // The counter shows it while running: every record since (an open, a
    // close and a release per session) is lost, counted by the writer on its
    // own thread as it catches up.
    let mut waited = 0;
    while h.rt.audit_stats().unwrap().write_failures < 30 {
        assert!(
            waited < 3000,
            "write failures not counted: {:?}",
            h.rt.audit_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    // The disk comes back: the next record says, in the chain, how many were lost.
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let last = h.rt.open("recovered@example.com").await.unwrap();
    last.close().await.unwrap();
    h.until_released(1).await;
    let report = h.shutdown_at_baseline().await;
    let audit = report.audit.unwrap();
    assert!(audit.write_failures >= 10, "{audit:?}");
    assert!(
        audit.records_written >= 3,
        "what came before the failure: {audit:?}"
    );
    let records = read_records(&dir);
    assert_eq!(records[0].action, sessionbus::audit::action::RECORDS_LOST);
    let reason = records[0].reason.clone().unwrap();
    let lost: u64 = reason.split(' ').next().unwrap().parse().unwrap();
    assert_eq!(lost, audit.write_failures, "{reason}");
    assert!(
        reason.ends_with("records lost to write failures"),
        "{reason}"
    );
    // The file written before the failure went with the directory: verify
    // checks every record from the gap on, then says the start is missing
    // (no retention deleted it).
    let bad = sessionbus::audit::verify_dir(&dir, &test_key()).unwrap_err();
    assert_eq!(
        bad.why,
        sessionbus::audit::BreakKind::FilesMissing {
            first_seq: records[0].seq
        }
    );

    let failed: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["fields"]["event"] == "audit.write_failed")
        .collect();
    assert!(!failed.is_empty(), "the failure is logged");
    assert_eq!(failed[0]["level"], "ERROR");
    std::fs::remove_dir_all(&dir).unwrap();
}
