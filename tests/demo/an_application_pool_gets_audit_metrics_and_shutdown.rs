//! Issue 16 (2), bring your own memory: the `app_pool` example runs the
//! runtime on an application's allocator (no wgpu device of the runtime's
//! own). Every allocation goes back to that allocator through its own free
//! callback, the shutdown report says so from the pool's own count, and the
//! audit trail written on the way verifies.

use sessionbus::audit::verify_dir;

#[test]
fn the_app_pool_example_frees_everything_through_the_applications_allocator() {
    let dir = std::env::temp_dir().join(format!("sessionbus-app-pool-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output =
        std::process::Command::new(sessionbus_testkit::example_binary("sessionbus", "app_pool"))
            .arg("--audit-dir")
            .arg(&dir)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .expect("the app_pool example runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "app_pool failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");

    let allocator = &summary["allocator"];
    assert_eq!(allocator["allocated"], 24, "12 sessions × 2 allocations");
    assert_eq!(allocator["freed"], allocator["allocated"]);
    assert_eq!(
        allocator["live_before_shutdown"], 8,
        "4 sessions were left to shutdown"
    );
    assert_eq!(allocator["live_after_shutdown"], 0);

    let runtime = &summary["runtime"];
    assert_eq!(runtime["gpu_held"]["live_buffers"], 0);
    assert_eq!(runtime["gpu_held"]["released_total"], 24);
    assert_eq!(
        runtime["gpu_after"],
        serde_json::Value::Null,
        "no wgpu device of its own"
    );
    assert_eq!(runtime["gpu_stopped"], true);
    assert_eq!(runtime["sessions"]["completed"], true);
    assert_eq!(runtime["sessions"]["sessions_ended"], 4);
    assert_eq!(runtime["bus_undelivered"], 0);

    // The audit trail saw every session open, end and be released, and verifies.
    let written = runtime["audit"]["records_written"].as_u64().unwrap();
    assert!(
        written > 12 * 3 + 1,
        "{written} records: start, 12 × (open, end, release), shutdown"
    );
    let report = verify_dir(&dir, &[0xab; 32]).expect("the trail verifies");
    assert_eq!(report.records, written);
    assert!(report.ends_with_shutdown);
    let _ = std::fs::remove_dir_all(&dir);
}
