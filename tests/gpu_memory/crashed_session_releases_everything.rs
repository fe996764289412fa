//! A panic inside a session handler drops the actix actor and nothing restarts
//! it; the session must still end once, as `Crashed`, with its buffers freed.

use sessionbus::{EndReason, Turn};
use sessionbus_testkit::*;

#[tokio::test]
async fn a_panic_in_a_handler_ends_the_session_as_crashed_and_frees_its_buffers() {
    let mut h = start().await;
    let session = h.rt.open("carol").await.unwrap();
    let bystander = h.rt.open("dan").await.unwrap();
    bystander.allocate(MIB).await.unwrap();
    for _ in 0..4 {
        session.allocate(256 * KIB).await.unwrap();
    }
    session.inject_panic().await;

    let events = h.until_released(1).await;
    assert_eq!(
        ends_by_session(&events)[&session.id()],
        vec![EndReason::Crashed]
    );
    assert_eq!(
        h.rt.gpu_counters()
            .expect("the runtime's own wgpu pool")
            .buffers
            - h.baseline.buffers,
        1,
        "only the bystander's buffer is left"
    );

    // The crashed session answers "gone"; its receipt is available; the runtime carries on.
    assert!(session.chat(Turn::default()).await.unwrap_err().is_gone());
    let receipt = session.close().await.unwrap();
    assert_eq!(
        (receipt.reason, receipt.buffers, receipt.bytes),
        (EndReason::Crashed, 4, MIB)
    );
    bystander
        .chat(Turn::default())
        .await
        .expect("other sessions are unaffected");
    bystander.close().await.unwrap();
    h.assert_gpu_at_baseline();
    assert_eq!(h.rt.stats().await.unwrap().incidents, 1);
    h.shutdown_at_baseline().await;
}
