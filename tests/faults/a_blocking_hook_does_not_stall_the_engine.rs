//! Issue 15 (4): hooks ran on the engine's only thread, so a hook that
//! blocked its thread (a synchronous database call, `std::thread::sleep`)
//! stalled the registry, every session, and its own timeout. Now hooks run
//! off the engine's thread: while one blocks, other sessions are answered,
//! and the blocked hook is cut off at `[hooks] timeout` (its session's
//! memory is released without waiting for it).
//!
//! No timing threshold: the hook blocks on a channel that the test opens
//! only after the other session was answered and the blocked session's
//! release receipt arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use sessionbus::config::Config;
use sessionbus::{HookStats, SessionEndEvent};
use sessionbus_testkit::*;

/// A bound on the test, not a speed check.
const STALLED: Duration = Duration::from_secs(60);

#[tokio::test]
async fn other_sessions_are_answered_while_a_hook_blocks_and_the_hook_is_cut_off() {
    let mut config = Config::default();
    config.hooks.timeout = std::time::Duration::from_millis(200);
    let h = start_with(config).await;
    let (unblock, blocked) = mpsc::channel::<()>();
    let blocked = Arc::new(std::sync::Mutex::new(blocked));
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let returned = Arc::new(AtomicBool::new(false));
    let (hook_returned, first_hook_returned) = (returned.clone(), tokio::sync::oneshot::channel());
    let hook_returned_tx = Arc::new(std::sync::Mutex::new(Some(first_hook_returned.0)));
    let first_hook_returned = first_hook_returned.1;
    let first = Arc::new(AtomicBool::new(true));
    h.rt.on_before_release("blocking-persist", move |_ended: Arc<SessionEndEvent>| {
        let blocks = first.swap(false, Ordering::SeqCst);
        let (blocked, entered_tx) = (blocked.clone(), entered_tx.clone());
        let (hook_returned, hook_returned_tx) = (hook_returned.clone(), hook_returned_tx.clone());
        async move {
            if blocks {
                if let Some(entered) = entered_tx.lock().unwrap().take() {
                    let _ = entered.send(());
                }
                // Blocks its thread, as a synchronous client would.
                let _ = blocked.lock().unwrap().recv();
                hook_returned.store(true, Ordering::SeqCst);
                if let Some(done) = hook_returned_tx.lock().unwrap().take() {
                    let _ = done.send(());
                }
            }
            Ok::<(), std::io::Error>(())
        }
    });

    let stuck = h.rt.open("stuck").await.unwrap();
    stuck.allocate(64 * KIB).await.unwrap();
    let other = h.rt.open("other").await.unwrap();
    other.allocate(64 * KIB).await.unwrap();
    let closing = tokio::spawn({
        let stuck = stuck.clone();
        async move { stuck.close().await }
    });
    entered.await.expect("the hook ran");

    // The hook is blocked now (it is only let go below): the engine answers anyway.
    // (Bounded only so that a regression fails instead of hanging; dropping
    // `unblock` on the way out lets the hook go.)
    tokio::time::timeout(STALLED, other.touch())
        .await
        .expect("another session answers while the hook blocks")
        .unwrap();
    tokio::time::timeout(STALLED, h.rt.stats())
        .await
        .expect("the registry answers while the hook blocks")
        .unwrap();
    let receipt = tokio::time::timeout(STALLED, closing)
        .await
        .expect("the blocked hook is cut off at its timeout")
        .unwrap()
        .expect("the close completes");
    assert_eq!(receipt.buffers, 1, "released without waiting for the hook");
    assert!(
        !returned.load(Ordering::SeqCst),
        "the hook is still blocked: the release did not wait for it"
    );
    let closed = other.close().await.expect("another session closes");
    assert_eq!(closed.buffers, 1);
    let stats = h.rt.stats().await.unwrap();
    assert_eq!(
        stats.hooks,
        HookStats {
            succeeded: 1,
            failed: 0,
            timed_out: 1,
            panicked: 0,
            running: 0
        }
    );
    h.assert_gpu_at_baseline();

    // Let the hook go: its thread comes back, and nothing is released twice.
    unblock.send(()).unwrap();
    first_hook_returned
        .await
        .expect("the blocked hook returns once let go");
    drop((stuck, other));
    h.shutdown_at_baseline().await;
}
