//! The cleanup dispatcher is supervised: after a panic with releases pending
//! it restarts with its queue intact and every release still happens exactly
//! once; past `supervision.max_restarts` within `supervision.within` it escalates:
//! the runtime is marked failed and admits no new sessions. On paused time.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

fn slow_release() -> EngineConfig {
    let mut config = no_expiry();
    config.release.tiers = vec![ReleaseTier {
        name: "crawl".into(),
        from_queue: 0,
        rate: 2,
        burst: 1,
        max_in_flight: 1,
    }];
    config
}

async fn close_all_at_once(f: &Fixture, n: usize) {
    for i in 0..n {
        let session = f.engine.open(format!("u{i}")).await.unwrap();
        session.allocate(MIB).await.unwrap();
        let id = session.id();
        std::mem::forget(session);
        let engine = f.engine.clone();
        actix::spawn(async move {
            let _ = engine.close(id, Owner::new(format!("u{i}"))).await;
        });
    }
    settle(Duration::from_millis(1)).await;
}

#[test]
fn a_dispatcher_panic_with_releases_pending_loses_and_repeats_nothing() {
    on_paused_time(|| async {
        let mut f = start(slow_release()).await;
        close_all_at_once(&f, 10).await;
        assert!(
            f.stats().await.release_queue.queued >= 8,
            "releases pending"
        );
        f.engine.inject_cleanup_panics(2);
        let mut released: HashMap<SessionId, u32> = HashMap::new();
        for _ in 0..10 {
            let receipt = f.next_release().await;
            assert!(receipt.error.is_none());
            assert_eq!(receipt.buffers, 1);
            *released.entry(receipt.id).or_default() += 1;
        }
        assert_eq!(released.len(), 10);
        assert!(released.values().all(|n| *n == 1), "each released once");
        let stats = f.stats().await;
        assert_eq!(stats.supervision.restarts, 2);
        assert_eq!(stats.supervision.failed, None);
        assert_eq!(f.pool.stats().released_total, 10);
        assert_eq!(f.pool.stats().live_buffers, 0);
        // Still admitting and releasing after the restarts.
        let session = f.engine.open("after").await.unwrap();
        session.allocate(MIB).await.unwrap();
        assert_eq!(session.close().await.unwrap().buffers, 1);
        f.shutdown_clean().await;
    });
}

#[test]
fn past_the_restart_limit_the_runtime_fails_loudly() {
    on_paused_time(|| async {
        let mut config = slow_release();
        config.supervision.max_restarts = 2;
        config.supervision.within = std::time::Duration::from_secs(60);
        let f = start(config).await;
        close_all_at_once(&f, 10).await;
        f.engine.inject_cleanup_panics(3);
        settle(Duration::from_secs(3)).await;
        let stats = f.stats().await;
        assert_eq!(stats.supervision.restarts, 2);
        let failed = stats.supervision.failed.expect("escalated");
        assert!(failed.contains("more than 2 times"), "{failed}");
        let refused = f.engine.open("late").await.unwrap_err();
        assert!(matches!(refused, OpenError::RuntimeFailed(_)), "{refused}");
        // Nothing is dispatched any more, and shutdown says so instead of hanging.
        let report = f
            .engine
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!report.completed);
        assert!(report.releases_unfinished > 0);
        assert_eq!(
            report.releases_unfinished,
            f.pool.stats().live_buffers,
            "what is reported unfinished is what the pool still holds"
        );
    });
}
