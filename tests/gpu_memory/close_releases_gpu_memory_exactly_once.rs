//! Invariants 1–3 for an explicit close, on real wgpu buffers.

use sessionbus::{EndReason, LifecycleEvent, Owner, State, Turn};
use sessionbus_testkit::*;

#[tokio::test]
async fn close_returns_once_the_buffers_are_destroyed_and_wgpu_agrees() {
    let mut h = start().await;
    let session = h.rt.open("alice").await.unwrap();
    for _ in 0..3 {
        session.chat(Turn::default()).await.unwrap();
        session.allocate(64 * KIB).await.unwrap();
    }
    let during = h.rt.gpu_counters().expect("the runtime's own wgpu pool");
    assert_eq!(
        during.buffers - h.baseline.buffers,
        3,
        "three live wgpu buffers"
    );

    let receipt = session.close().await.unwrap();
    assert_eq!(
        (receipt.reason, receipt.buffers, receipt.bytes),
        (EndReason::Closed, 3, 192 * KIB)
    );
    // close() resolved after destroy + poll: wgpu has already freed them.
    h.assert_gpu_at_baseline();
    assert_eq!(session.state(), State::Closed);

    // A second close, by handle or by id, returns the same receipt and frees nothing more.
    assert_eq!(session.close().await.unwrap(), receipt);
    assert_eq!(
        h.rt.close(session.id(), Owner::new("alice")).await.unwrap(),
        receipt
    );
    assert_eq!(h.rt.pool_stats().released_total, 3);

    let events = h.until_released(1).await;
    assert_eq!(
        ends_by_session(&events)[&session.id()],
        vec![EndReason::Closed]
    );
    let end = events.iter().find_map(|e| match e {
        LifecycleEvent::Ended(end) => Some(end.clone()),
        _ => None,
    });
    let end = end.unwrap();
    assert_eq!(
        (end.allocations.len(), end.bytes, end.owner.as_str()),
        (3, 192 * KIB, "alice")
    );
    assert!(end.version > 1);
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn many_sessions_closing_concurrently_each_end_once() {
    let mut h = start().await;
    let mut sessions = Vec::new();
    for i in 0..200 {
        let s = h.rt.open(format!("user-{i}")).await.unwrap();
        s.allocate(4 * KIB).await.unwrap();
        s.allocate(8 * KIB).await.unwrap();
        sessions.push(s);
    }
    let closes: Vec<_> = sessions.iter().map(|s| s.close()).collect();
    let receipts = futures::future::join_all(closes).await;
    assert!(
        receipts
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.buffers == 2))
    );
    h.assert_gpu_at_baseline();
    let events = h.until_released(200).await;
    let ends = ends_by_session(&events);
    assert_eq!(ends.len(), 200);
    assert!(ends.values().all(|r| r == &vec![EndReason::Closed]));
    h.shutdown_at_baseline().await;
}
