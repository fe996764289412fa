//! Pre-destroy hooks run before a session's memory is released; one that
//! fails, panics (in its call or in its future) or never returns is counted
//! and logged, and the release goes ahead at its timeout. On paused time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::FutureExt;
use sessionbus_actors::*;

#[test]
fn failing_panicking_and_hanging_hooks_do_not_stop_releases() {
    on_paused_time(|| async {
        let mut config = no_expiry();
        config.hooks.timeout_ms = 2_000;
        let f = start(config).await;
        // What a well-behaved hook saw: the session, and whether its memory was still there.
        let seen: Arc<Mutex<Vec<(SessionId, bool)>>> = Arc::default();
        let pool = f.pool.clone();
        let record = seen.clone();
        f.engine.on_before_release(
            "persist",
            Arc::new(move |ended: Arc<SessionEndEvent>| {
                let (pool, record) = (pool.clone(), record.clone());
                async move {
                    let (reply, holding) = tokio::sync::oneshot::channel();
                    pool.sessions_holding_memory(reply);
                    let holding = holding.await.unwrap_or_default();
                    record
                        .lock()
                        .unwrap()
                        .push((ended.id, holding.contains(&ended.id)));
                    Ok(())
                }
                .boxed()
            }),
        );
        f.engine.on_before_release(
            "fails",
            Arc::new(|_| async { Err("database unreachable".to_owned()) }.boxed()),
        );
        f.engine.on_before_release(
            "panics-in-future",
            Arc::new(|_| async { panic!("hook bug (injected)") }.boxed()),
        );
        f.engine.on_before_release(
            "panics-in-call",
            Arc::new(|_| panic!("hook bug before its future (injected)")),
        );
        f.engine
            .on_before_release("hangs", Arc::new(|_| futures::future::pending().boxed()));

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
        config.hooks.timeout_ms = 60_000;
        let f = start(config).await;
        let done: Arc<Mutex<u32>> = Arc::default();
        let count = done.clone();
        f.engine.on_before_release(
            "slow-persist",
            Arc::new(move |_| {
                let count = count.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    *count.lock().unwrap() += 1;
                    Ok(())
                }
                .boxed()
            }),
        );
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
