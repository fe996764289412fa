//! A command that panics on the `sessionbus-gpu` thread costs only its own
//! answer: releases already waiting in the channel behind it still run, each
//! buffer is destroyed once, and wgpu's counters come back to their baseline.

use sessionbus_testkit::*;

#[tokio::test]
async fn releases_queued_behind_a_worker_panic_are_released_once() {
    let h = start().await;
    let mut sessions = Vec::new();
    for i in 0..20 {
        let session = h.rt.open(format!("u{i}")).await.unwrap();
        session.allocate(16 * KIB).await.unwrap();
        session.allocate(48 * KIB).await.unwrap();
        sessions.push(session);
    }
    assert_eq!(
        h.rt.gpu_counters()
            .expect("the runtime's own wgpu pool")
            .buffers
            - h.baseline.buffers,
        40
    );
    // The panic goes into the channel first; the closes' releases queue behind it.
    h.rt.inject_gpu_worker_panic();
    let closes = sessions.iter().map(|s| s.close());
    let receipts = futures::future::join_all(closes).await;
    for receipt in receipts {
        let receipt = receipt.unwrap();
        assert_eq!(receipt.error, None);
        assert_eq!((receipt.buffers, receipt.bytes), (2, 64 * KIB));
    }
    assert_eq!(h.rt.gpu_worker_panics(), 1);
    h.assert_gpu_at_baseline();
    // The thread goes on serving.
    let after = h.rt.open("after").await.unwrap();
    after.allocate(16 * KIB).await.unwrap();
    assert_eq!(after.close().await.unwrap().buffers, 1);
    let stats = h.rt.stats().await.unwrap();
    assert_eq!(stats.released_buffers, 41, "nothing released twice");
    assert_eq!(stats.incidents, 0);
    h.shutdown_at_baseline().await;
}
