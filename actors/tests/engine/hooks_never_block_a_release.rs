//! Pre-destroy hooks run before a session's memory is released; one that
//! fails, panics (in its call or in its future) or never returns is counted
//! and logged, and the release goes ahead at its timeout. On paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use futures::FutureExt;
use sessionbus_actors::*;

#[test]
fn failing_panicking_and_hanging_hooks_do_not_stop_releases() {
    on_paused_time(|| async {
        let mut config = no_expiry();
        config.hooks.timeout = std::time::Duration::from_millis(2_000);
        let f = start(config).await;
        // What a well-behaved hook saw: the session, and whether its memory was still there.
        let seen: Arc<Mutex<Vec<(SessionId, bool)>>> = Arc::default();
        let pool = f.pool.clone();
        let record = seen.clone();
        f.engine
            .on_before_release("persist", move |ended: Arc<SessionEndEvent>| {
                let (pool, record) = (pool.clone(), record.clone());
                async move {
                    let (reply, holding) = tokio::sync::oneshot::channel();
                    pool.sessions_holding_memory(reply);
                    let holding = holding.await.unwrap_or_default();
                    record
                        .lock()
                        .unwrap()
                        .push((ended.id, holding.contains(&ended.id)));
                    Ok::<(), String>(())
                }
            });
        f.engine.on_before_release("fails", |_| async {
            Err::<(), _>("database unreachable".to_owned())
        });
        f.engine.on_before_release("panics-in-future", |_| async {
            panic!("hook bug (injected)") as Result<(), String>
        });
        f.engine.on_before_release(
            "panics-in-call",
            |_| -> futures::future::Ready<Result<(), String>> {
                panic!("hook bug before its future (injected)")
            },
        );
        f.engine.on_before_release("hangs", |_| {
            futures::future::pending::<Result<(), String>>()
        });

        let mut ids = Vec::new();
        for i in 0..3 {
            let session = f.engine.open(format!("u{i}")).await.unwrap();
            session.allocate(MIB).await.unwrap();
            ids.push(session.id());
            let receipt = session.close().await.unwrap();
            assert_eq!(receipt.buffers, 1, "released despite the hooks");
        }
        // A session that never held GPU memory gets its hooks too.
        let empty = f.engine.open("no-gpu").await.unwrap();
        ids.push(empty.id());
        empty.close().await.unwrap();
        settle(Duration::from_secs(3)).await;

        let stats = f.stats().await;
        assert_eq!(stats.released, 4);
        assert_eq!(
            stats.hooks,
            HookStats {
                succeeded: 4,
                failed: 4,
                timed_out: 4,
                panicked: 8,
                running: 0
            }
        );
        let seen = seen.lock().unwrap().clone();
        let seen_ids: Vec<_> = seen.iter().map(|(id, _)| *id).collect();
        assert_eq!(seen_ids, ids, "once per end, in order");
        assert!(
            seen[..3].iter().all(|(_, holding)| *holding),
            "hooks ran before the memory was released"
        );
        assert_eq!(f.pool.stats().live_buffers, 0);
        let report = f.engine.shutdown().await.unwrap();
        assert_eq!(report.stats.hooks.timed_out, 4);
    });
}

#[test]
fn shutdown_waits_for_hooks_within_its_deadline() {
    on_paused_time(|| async {
        let mut config = no_expiry();
        config.hooks.timeout = std::time::Duration::from_millis(60_000);
        let f = start(config).await;
        let done: Arc<Mutex<u32>> = Arc::default();
        let count = done.clone();
        f.engine.on_before_release("slow-persist", move |_| {
            let count = count.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                *count.lock().unwrap() += 1;
                Ok::<(), String>(())
            }
        });
        for i in 0..4 {
            let session = f.engine.open(format!("u{i}")).await.unwrap();
            if i % 2 == 0 {
                session.allocate(MIB).await.unwrap();
            }
            std::mem::forget(session);
        }
        let report = f
            .engine
            .shutdown_within(Duration::from_secs(10))
            .await
            .unwrap();
        assert!(report.completed);
        assert_eq!(
            *done.lock().unwrap(),
            4,
            "every hook finished before shutdown returned"
        );
        assert_eq!(report.stats.hooks.succeeded, 4);
        assert_eq!(f.pool.stats().live_buffers, 0);
    });
}

/// A hook that blocks until the test lets it go, and says when it began and
/// when it returned. Only the first run blocks; later runs return at once.
type Hook = Box<
    dyn Fn(Arc<SessionEndEvent>) -> futures::future::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;

struct BlockingHook {
    hook: Hook,
    unblock: std::sync::mpsc::Sender<()>,
    entered: tokio::sync::oneshot::Receiver<()>,
    returned: tokio::sync::oneshot::Receiver<()>,
}

fn blocking_hook() -> BlockingHook {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (unblock, blocked) = std::sync::mpsc::channel::<()>();
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (returned_tx, returned) = tokio::sync::oneshot::channel();
    let blocked = Arc::new(Mutex::new(blocked));
    let signals = Arc::new(Mutex::new(Some((entered_tx, returned_tx))));
    let first = Arc::new(AtomicBool::new(true));
    let hook: Hook = Box::new(move |_ended| {
        let blocks = first.swap(false, Ordering::SeqCst);
        let (blocked, signals) = (blocked.clone(), signals.clone());
        async move {
            if blocks {
                let (entered, returned) = signals.lock().unwrap().take().unwrap();
                let _ = entered.send(());
                // Blocks its thread, as a synchronous client would. (Bounded
                // only so that a regression, which blocks the test's own
                // thread, fails instead of hanging.)
                let _ = blocked
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(60));
                let _ = returned.send(());
            }
            Ok(())
        }
        .boxed()
    });
    BlockingHook {
        hook,
        unblock,
        entered,
        returned,
    }
}

/// Issue 15 (4): hooks ran on the engine's thread, so one that blocked it
/// stalled every session. While this one blocks (it is let go only at the
/// end), other sessions open, answer, and close with their memory released.
#[test]
fn a_hook_that_blocks_its_thread_does_not_stall_the_engine() {
    on_paused_time(|| async {
        let f = start(no_expiry()).await;
        let blocking = blocking_hook();
        f.engine.on_before_release("blocks", blocking.hook);
        let stuck = f.engine.open("stuck").await.unwrap();
        stuck.allocate(MIB).await.unwrap();
        let other = f.engine.open("other").await.unwrap();
        other.allocate(MIB).await.unwrap();
        let closing = actix::spawn({
            let stuck = stuck.clone();
            async move { stuck.close().await }
        });
        blocking.entered.await.unwrap();

        other.touch().await.expect("answered while the hook blocks");
        let third = f
            .engine
            .open("third")
            .await
            .expect("opened while the hook blocks");
        third.allocate(MIB).await.unwrap();
        assert_eq!(other.close().await.unwrap().buffers, 1);
        assert_eq!(third.close().await.unwrap().buffers, 1);
        assert_eq!(f.stats().await.hooks.running, 1, "the blocked one");
        let mut returned = blocking.returned;
        assert!(
            returned.try_recv().is_err(),
            "all of the above happened while the hook was blocked"
        );

        blocking.unblock.send(()).unwrap();
        returned.await.unwrap();
        assert_eq!(closing.await.unwrap().unwrap().buffers, 1);
        let stats = f.stats().await;
        assert_eq!(stats.hooks.succeeded, 3);
        assert_eq!(stats.hooks.running, 0);
        drop(stuck);
        f.shutdown_clean().await;
    });
}

/// On real time: a hook blocking past `[hooks] timeout` is cut off there;
/// its session's memory is released while it is still blocked.
#[test]
fn a_hook_blocked_past_its_timeout_is_cut_off() {
    actix::System::new().block_on(async {
        let mut config = no_expiry();
        config.hooks.timeout = std::time::Duration::from_millis(100);
        let f = start(config).await;
        let blocking = blocking_hook();
        f.engine.on_before_release("blocks", blocking.hook);
        let stuck = f.engine.open("stuck").await.unwrap();
        stuck.allocate(MIB).await.unwrap();
        let receipt = stuck.close().await.expect("released at the hook's timeout");
        assert_eq!(receipt.buffers, 1);
        let mut returned = blocking.returned;
        assert!(
            returned.try_recv().is_err(),
            "the hook is still blocked: the release did not wait for it"
        );
        assert_eq!(f.pool.stats().live_buffers, 0);
        let stats = f.stats().await;
        assert_eq!(stats.hooks.timed_out, 1);
        assert_eq!(stats.hooks.running, 0);

        blocking.unblock.send(()).unwrap();
        returned
            .await
            .expect("the hook's thread comes back once let go");
        drop(stuck);
        f.shutdown_clean().await;
    });
}
