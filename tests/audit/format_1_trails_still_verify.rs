//! Trails written in format 1 (before key ids, head notes and recorded
//! retention) still verify, are reported as the older format, and a
//! runtime started on one continues its chain in format 2.

use sessionbus::audit::*;
use sessionbus_testkit::audit::*;
use sessionbus_testkit::*;

/// Four records sealed by the format 1 writer under the test key.
const FORMAT_1_TRAIL: [&str; 4] = [
    r#"{"seq":0,"ts":"2025-11-24T16:00:00.000000Z","action":"runtime.started","resource":null,"operator":null,"owner":null,"client_ip":null,"trace_id":null,"reason":null,"bytes":null,"prev":"0000000000000000000000000000000000000000000000000000000000000000","hash":"d682bbb91628e68db1685dc4cfe91472bbc882c6a5670065fea2c70bed570905"}"#,
    r#"{"seq":1,"ts":"2025-11-24T16:00:00.000000Z","action":"session.opened","resource":"0123456789abcdef0123456789abcdef","operator":null,"owner":null,"client_ip":null,"trace_id":null,"reason":null,"bytes":null,"prev":"d682bbb91628e68db1685dc4cfe91472bbc882c6a5670065fea2c70bed570905","hash":"086b7c8770092dd82df57c78eeee75e40776b285f3f3da24137953689e877e4b"}"#,
    r#"{"seq":2,"ts":"2025-11-24T16:00:00.000000Z","action":"session.closed","resource":"0123456789abcdef0123456789abcdef","operator":null,"owner":null,"client_ip":null,"trace_id":null,"reason":"closed","bytes":null,"prev":"086b7c8770092dd82df57c78eeee75e40776b285f3f3da24137953689e877e4b","hash":"b007f69f9e03792b38f27135c95805ac716eb3c324ccbe9b16d8e6137538ebb3"}"#,
    r#"{"seq":3,"ts":"2025-11-24T16:00:00.000000Z","action":"runtime.shutdown","resource":null,"operator":null,"owner":null,"client_ip":null,"trace_id":null,"reason":"shutdown","bytes":null,"prev":"b007f69f9e03792b38f27135c95805ac716eb3c324ccbe9b16d8e6137538ebb3","hash":"e4b171f83d7ceec0cf0c00feced10cb54699a850e380481de595079f9d29558e"}"#,
];

fn format_1_trail(name: &str) -> std::path::PathBuf {
    let dir = scratch_dir(name);
    let mut text = FORMAT_1_TRAIL.join("\n");
    text.push('\n');
    std::fs::write(dir.join("audit-00000000000000000000.jsonl"), text).unwrap();
    dir
}

#[test]
fn a_format_1_trail_verifies_and_says_so() {
    let dir = format_1_trail("format-1");
    let report = verify_dir(&dir, &test_key()).unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(report.legacy_records, 4);
    assert!(report.key_ids.is_empty());
    assert_eq!(report.closed, None, "no head note in format 1");
    assert!(report.ends_with_shutdown);
    let bad = verify_dir(&dir, &[0x42; 32]).unwrap_err();
    assert_eq!((bad.line, bad.why), (1, BreakKind::Changed));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_runtime_continues_a_format_1_trail_in_format_2() {
    let dir = format_1_trail("format-1-continued");
    let mut h = start_with(config_with_audit(&dir)).await;
    let session = h.rt.open("someone@example.com").await.unwrap();
    session.allocate(4 * KIB).await.unwrap();
    session.close().await.unwrap();
    h.until_released(1).await;
    h.shutdown_at_baseline().await;

    let records = read_records(&dir);
    let started = &records[4];
    assert_eq!(started.action, action::RUNTIME_STARTED);
    let facts = started.trail.clone().unwrap();
    let previous = facts.previous.unwrap();
    assert_eq!(previous.seq, 3);
    assert!(FORMAT_1_TRAIL[3].contains(&previous.hash));
    assert_eq!(previous.key_id, None, "a format 1 record");
    assert_eq!(facts.previous_clean, Some(true));
    let report = verify_dir(&dir, &test_key()).unwrap();
    assert_eq!(report.legacy_records, 4);
    assert_eq!(report.key_ids.len(), 1);
    assert_eq!(report.closed, Some(true));
    std::fs::remove_dir_all(&dir).unwrap();
}
