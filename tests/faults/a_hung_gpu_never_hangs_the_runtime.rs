//! Issue 15 (3): a GPU thread that stops answering (a hung device or driver,
//! injected here with `inject_gpu_hang`) must not hang the runtime. Every wait
//! on it is bounded by `[supervision] step_timeout`: shutdown returns and
//! reports what the GPU still held, an offload or a restore gives up (the
//! session goes on answering and its buffers come back intact once the
//! device does), and a device reopen fails instead of waiting forever.
//!
//! Each test ends the hang and checks wgpu's counters at their baseline.

use std::time::Duration;

use sessionbus::config::Config;
use sessionbus::pool::GpuError;
use sessionbus::{AllocError, GpuInitError, SessionError};
use sessionbus_testkit::*;

/// A bound on each test, not a speed check.
const HUNG: Duration = Duration::from_secs(60);

fn short_steps() -> Config {
    let mut config = Config::default();
    config.supervision.step_timeout = std::time::Duration::from_millis(300);
    config
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..64 * KIB)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn shutdown_returns_and_reports_what_a_hung_gpu_still_holds() {
    let h = start_with(short_steps()).await;
    let session = h.rt.open("u").await.unwrap();
    session.allocate(64 * KIB).await.unwrap();
    let hang = h.rt.inject_gpu_hang();
    let baseline = h.baseline;
    let report = tokio::time::timeout(HUNG, h.rt.shutdown_within(Duration::from_secs(5)))
        .await
        .expect("shutdown returns although the GPU thread hangs");
    assert!(!report.gpu_stopped, "the GPU thread did not stop: reported");
    assert_eq!(
        report.gpu_held.live_buffers, 1,
        "what it still held: reported"
    );
    assert_eq!(report.gpu_held.live_bytes, 64 * KIB);
    assert_eq!(report.sessions.sessions_ended, 1);
    assert!(
        report.sessions.stats.incidents >= 1,
        "the release was declared stuck"
    );
    drop(session);
    // The device comes back: the thread destroys what it held and stops.
    let after = hang
        .release_and_wait_stopped(HUNG)
        .expect("the GPU thread stops once the device answers");
    assert_eq!(after, baseline, "wgpu counters at baseline");
}

#[tokio::test]
async fn offload_and_restore_give_up_and_the_buffers_come_back_intact() {
    let h = start_with(short_steps()).await;
    let a = h.rt.open("a").await.unwrap();
    let a_buffer = a.allocate(64 * KIB).await.unwrap().id;
    a.write_buffer(a_buffer, 0, pattern(1)).await.unwrap();
    let b = h.rt.open("b").await.unwrap();
    let b_buffer = b.allocate(64 * KIB).await.unwrap().id;
    b.write_buffer(b_buffer, 0, pattern(2)).await.unwrap();
    b.offload().await.unwrap();

    let hang = h.rt.inject_gpu_hang();
    let offload = tokio::time::timeout(HUNG, a.offload())
        .await
        .expect("the offload gives up");
    assert!(
        matches!(
            offload,
            Err(SessionError::Allocation {
                source: AllocError::Gpu(GpuError::TimedOut {
                    operation: "offload",
                    ..
                }),
                ..
            })
        ),
        "{offload:?}"
    );
    tokio::time::timeout(HUNG, a.touch())
        .await
        .expect("the session answers after the offload gave up")
        .unwrap();
    let restore = tokio::time::timeout(HUNG, b.read_buffer(b_buffer))
        .await
        .expect("the restore gives up");
    let Err(SessionError::Allocation {
        source: AllocError::RestoreFailed(cause),
        ..
    }) = &restore
    else {
        panic!("a failed restore, got {restore:?}");
    };
    assert!(
        matches!(
            **cause,
            AllocError::Gpu(GpuError::TimedOut {
                operation: "restore",
                ..
            })
        ),
        "{cause:?}"
    );
    b.touch()
        .await
        .expect("the session answers after the restore gave up");

    // The device answers again: the late offload and restore are carried
    // out in order, and the next use of each session finds its bytes.
    hang.release();
    assert_eq!(a.read_buffer(a_buffer).await.unwrap(), pattern(1));
    assert_eq!(b.read_buffer(b_buffer).await.unwrap(), pattern(2));
    assert_eq!(a.close().await.unwrap().buffers, 1);
    assert_eq!(b.close().await.unwrap().buffers, 1);
    h.assert_gpu_at_baseline();
    let stats = h.rt.stats().await.unwrap();
    assert_eq!(stats.budget.device_used, 0, "every charge given back");
    drop((a, b));
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn a_device_reopen_gives_up_on_a_hung_gpu_thread() {
    let h = start_with(short_steps()).await;
    h.rt.inject_gpu_device_loss();
    let hang = h.rt.inject_gpu_hang();
    let recovered = tokio::time::timeout(HUNG, h.rt.recover_gpu())
        .await
        .expect("recover_gpu returns although the GPU thread hangs");
    assert!(
        matches!(recovered, Err(GpuInitError::Unresponsive { .. })),
        "{recovered:?}"
    );
    // Once the thread is back, the queued reopen is carried out.
    hang.release();
    tokio::time::timeout(HUNG, async {
        while h.rt.gpu_lost() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the new device opens once the thread answers");
    let session = h.rt.open("after").await.unwrap();
    session.allocate(64 * KIB).await.unwrap();
    assert_eq!(session.close().await.unwrap().buffers, 1);
    drop(session);
    let report = h.rt.shutdown().await;
    assert!(report.gpu_stopped);
    assert_eq!(
        report.gpu_after.expect("wgpu counters"),
        report.gpu_baseline.expect("wgpu counters"),
        "the new device's baseline"
    );
}
