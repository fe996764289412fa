//! A lost GPU device (faked with `device.destroy()`, as a driver reset
//! would leave it): `recover_gpu` ends every session once with reason
//! `device_lost`, releases what they held, and opens a new device, so new
//! sessions work without restarting the process.

use sessionbus::EndReason;
use sessionbus_testkit::*;

#[tokio::test]
async fn after_a_device_loss_sessions_end_once_and_a_new_device_serves() {
    let mut h = start().await;
    let mut sessions = Vec::new();
    for i in 0..10 {
        let session = h.rt.open(format!("u{i}")).await.unwrap();
        session.allocate(64 * KIB).await.unwrap();
        sessions.push(session);
    }
    let idle = h.rt.open("no-gpu").await.unwrap(); // holds nothing on the GPU
    h.rt.inject_gpu_device_loss();
    let ended = h.rt.recover_gpu().await.unwrap();
    assert_eq!(ended, 11);
    let events = h.until_released(11).await;
    let ends = ends_by_session(&events);
    assert_eq!(ends.len(), 11);
    assert!(
        ends.values().all(|r| r == &vec![EndReason::DeviceLost]),
        "{ends:?}"
    );
    assert!(!h.rt.gpu_lost(), "the new device is not lost");
    // The old device's state is gone with it; the new one starts at its own baseline.
    let fresh = h.rt.gpu_counters().expect("the runtime's own wgpu pool");
    let session = h.rt.open("after").await.unwrap();
    session.allocate(64 * KIB).await.unwrap();
    assert_eq!(
        h.rt.gpu_counters()
            .expect("the runtime's own wgpu pool")
            .buffers
            - fresh.buffers,
        1
    );
    assert_eq!(session.close().await.unwrap().buffers, 1);
    assert_eq!(
        h.rt.gpu_counters().expect("the runtime's own wgpu pool"),
        fresh
    );
    let stats = h.rt.stats().await.unwrap();
    assert_eq!(
        stats.ended_by,
        vec![(EndReason::Closed, 1), (EndReason::DeviceLost, 11)]
    );
    drop((sessions, idle));
    let report = h.rt.shutdown().await;
    assert_eq!(
        report.gpu_after.expect("wgpu counters"),
        report.gpu_baseline.expect("wgpu counters"),
        "the new device's counters at baseline"
    );
}
