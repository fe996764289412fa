//! Dropping the last handle is a disconnect: one end, everything released.

use sessionbus::EndReason;
use sessionbus_testkit::*;

#[tokio::test]
async fn dropping_every_handle_ends_the_session_as_disconnected() {
    let mut h = start().await;
    let session = h.rt.open("bob").await.unwrap();
    let id = session.id();
    let other = session.clone();
    session.allocate(MIB).await.unwrap();
    drop(session);
    other
        .allocate(MIB)
        .await
        .expect("one handle left keeps it alive");
    drop(other);

    let events = h.until_released(1).await;
    assert_eq!(ends_by_session(&events)[&id], vec![EndReason::Disconnected]);
    h.assert_gpu_at_baseline();
    let report = h.shutdown_at_baseline().await;
    assert_eq!(
        report.sessions.sessions_ended, 0,
        "nothing was left for shutdown"
    );
}
