//! `shutdown()` ends every live session with reason `shutdown` and returns only
//! when wgpu has freed all their buffers.

use sessionbus::{EndReason, OpenError};
use sessionbus_testkit::*;

#[tokio::test]
async fn shutdown_ends_all_sessions_and_wgpu_is_back_at_baseline() {
    let mut h = start().await;
    let mut keep = Vec::new();
    for i in 0..100 {
        let s = h.rt.open(format!("u{i}")).await.unwrap();
        s.allocate(16 * KIB).await.unwrap();
        s.allocate(48 * KIB).await.unwrap();
        keep.push(s);
    }
    assert_eq!(
        h.rt.gpu_counters()
            .expect("the runtime's own wgpu pool")
            .buffers
            - h.baseline.buffers,
        200
    );
    // Subscriber task keeps reading while shutdown runs.
    let mut events = std::mem::replace(&mut h.events, tokio::sync::mpsc::channel(1).1);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(event) = events.recv().await {
            all.push(event);
        }
        all
    });
    let engine = h.rt.engine().clone();
    let baseline = h.baseline;
    let report = h.rt.shutdown().await;
    assert_eq!(report.gpu_after.expect("wgpu counters"), baseline);
    assert_eq!(
        (
            report.sessions.sessions_ended,
            report.sessions.buffers_released
        ),
        (100, 200)
    );
    assert_eq!(report.sessions.bytes_released, 100 * 64 * KIB);
    assert!(matches!(
        engine.open("late").await,
        Err(OpenError::RuntimeStopped | OpenError::ShuttingDown)
    ));

    let all = collector.await.unwrap();
    let ends = ends_by_session(&all);
    assert_eq!(ends.len(), 100);
    assert!(ends.values().all(|r| r == &vec![EndReason::Shutdown]));
    drop(keep);
}
