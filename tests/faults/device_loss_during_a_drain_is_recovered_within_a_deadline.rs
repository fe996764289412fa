//! Issue 15 (3): `recover_gpu` waited for as many `device_lost` receipts as
//! it had asked for, but a session already closing (draining a lease) joins
//! its own end, which keeps its own reason: the wait never ended. Now it
//! counts only the sessions it actually ended, waits for every release it
//! asked for (whatever the reason of the end that makes it), and stops
//! waiting at a deadline.

use std::time::Duration;

use sessionbus::config::Config;
use sessionbus::{EndReason, State};
use sessionbus_testkit::*;

/// How long a test waits before calling `recover_gpu` hung: a bound on the
/// test, not a speed check.
const HUNG: Duration = Duration::from_secs(60);

async fn until_closing(session: &sessionbus::SessionHandle) {
    while session.state() != State::Closing {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_session_already_closing_is_waited_for_but_not_counted() {
    let h = start().await;
    let closing = h.rt.open("closing").await.unwrap();
    closing.allocate(64 * KIB).await.unwrap();
    let lease = closing.lease().await.unwrap();
    let live = h.rt.open("live").await.unwrap();
    live.allocate(64 * KIB).await.unwrap();
    // The close waits for the lease: the session is draining when the device goes.
    let close = tokio::spawn({
        let closing = closing.clone();
        async move { closing.close().await }
    });
    until_closing(&closing).await;
    h.rt.inject_gpu_device_loss();
    let returned = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(lease);
    });
    let ended = tokio::time::timeout(HUNG, h.rt.recover_gpu())
        .await
        .expect("recover_gpu returns (it hung here before)")
        .expect("a new device opens");
    assert_eq!(
        ended, 1,
        "only the session recover_gpu ended; the closing one kept its own end"
    );
    returned.await.unwrap();
    let receipt = close.await.unwrap().expect("the close completes");
    assert_eq!(receipt.reason, EndReason::Closed);
    assert_eq!(
        receipt.buffers, 1,
        "released before the new device took over"
    );
    let stats = h.rt.stats().await.unwrap();
    assert_eq!(
        stats.ended_by,
        vec![(EndReason::Closed, 1), (EndReason::DeviceLost, 1)]
    );
    assert_eq!(stats.releasing, 0, "recover_gpu waited for both releases");
    assert!(!h.rt.gpu_lost());
    drop((closing, live));
    let report = h.rt.shutdown().await;
    assert_eq!(
        report.gpu_after.expect("wgpu counters"),
        report.gpu_baseline.expect("wgpu counters")
    );
}

#[tokio::test]
async fn recovery_stops_waiting_at_its_deadline() {
    let mut config = Config::default();
    // A drain that would outlast any test: only the deadline can end the wait.
    config.leases.drain_timeout = std::time::Duration::from_secs(600);
    let h = start_with(config).await;
    let draining = h.rt.open("draining").await.unwrap();
    draining.allocate(64 * KIB).await.unwrap();
    let lease = draining.lease().await.unwrap();
    let idle = h.rt.open("idle").await.unwrap();
    h.rt.inject_gpu_device_loss();
    let report = tokio::time::timeout(HUNG, h.rt.recover_gpu_within(Duration::from_millis(500)))
        .await
        .expect("recover_gpu_within returns at its deadline")
        .expect("a new device opens");
    assert_eq!(report.ended, 2, "both sessions ended with device_lost");
    assert_eq!(report.already_ending, 0);
    assert_eq!(report.unreleased, 1, "the draining one is not released yet");
    assert!(!report.completed);
    assert!(report.took >= Duration::from_millis(500));
    assert!(!h.rt.gpu_lost(), "the new device opened anyway");
    // The lease comes back: the end completes; the old device's buffer went with it.
    drop(lease);
    let receipt = draining.close().await.unwrap();
    assert_eq!(receipt.reason, EndReason::DeviceLost);
    drop((draining, idle));
    let report = h.rt.shutdown().await;
    assert_eq!(
        report.gpu_after.expect("wgpu counters"),
        report.gpu_baseline.expect("wgpu counters")
    );
}

#[tokio::test]
async fn recover_gpu_is_bounded_by_the_configured_deadline() {
    let mut config = Config::default();
    config.leases.drain_timeout = std::time::Duration::from_secs(600);
    config.shutdown.deadline = std::time::Duration::from_secs_f64(0.5);
    let h = start_with(config).await;
    let draining = h.rt.open("draining").await.unwrap();
    draining.allocate(64 * KIB).await.unwrap();
    let lease = draining.lease().await.unwrap();
    h.rt.inject_gpu_device_loss();
    let ended = tokio::time::timeout(HUNG, h.rt.recover_gpu())
        .await
        .expect("recover_gpu returns by [shutdown] deadline")
        .expect("a new device opens");
    assert_eq!(ended, 1);
    drop(lease);
    assert_eq!(
        draining.close().await.unwrap().reason,
        EndReason::DeviceLost
    );
    drop(draining);
    let report = h.rt.shutdown().await;
    assert_eq!(
        report.gpu_after.expect("wgpu counters"),
        report.gpu_baseline.expect("wgpu counters")
    );
}
