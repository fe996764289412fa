//! `shutdown_within(deadline)`: releases go out unpaced, leases are forced at
//! three quarters of the deadline, and what is not released at the deadline
//! is reported, never skipped silently. On paused time.

use std::sync::Arc;
use std::time::Duration;

use crate::common::stalling::StallingPool;
use crate::common::*;
use sessionbus_actors::*;

fn slow_release() -> EngineConfig {
    let mut config = no_expiry();
    config.release.tiers = vec![ReleaseTier {
        name: "crawl".into(),
        from_queue: 0,
        rate: 1,
        burst: 1,
        max_in_flight: 1,
    }];
    config.leases.drain_timeout = std::time::Duration::from_secs(3_600);
    config
}

#[test]
fn shutdown_lifts_pacing_so_a_queued_storm_fits_the_deadline() {
    on_paused_time(|| async {
        let f = start(slow_release()).await;
        let mut ids = Vec::new();
        for i in 0..50 {
            let session = f.engine.open(format!("u{i}")).await.unwrap();
            session.allocate(MIB).await.unwrap();
            ids.push((format!("u{i}"), session.id()));
            std::mem::forget(session); // ends only by close or shutdown
        }
        for (owner, id) in ids {
            let engine = f.engine.clone();
            actix::spawn(async move {
                let _ = engine.close(id, Owner::new(owner)).await;
            });
        }
        settle(Duration::from_millis(1)).await;
        let queued = f.stats().await.release_queue.queued;
        assert!(
            queued > 40,
            "the storm waits for the pacer ({queued} queued)"
        );
        // Paced at 1 per second these would take ~50 s; the deadline is 10 s.
        let report = f
            .engine
            .shutdown_within(Duration::from_secs(10))
            .await
            .unwrap();
        assert!(report.completed, "{report:?}");
        assert_eq!(report.releases_unfinished, 0);
        assert_eq!(report.stats.released, 50);
        assert_eq!(f.pool.stats().live_buffers, 0);
    });
}

#[test]
fn leases_still_held_are_forced_before_the_deadline() {
    on_paused_time(|| async {
        let f = start(slow_release()).await;
        let mut keep = Vec::new();
        for i in 0..5 {
            let session = f.engine.open(format!("u{i}")).await.unwrap();
            session.allocate(MIB).await.unwrap();
            if i < 2 {
                keep.push(session.lease().await.unwrap());
            }
            std::mem::forget(session);
        }
        let deadline = Duration::from_secs(8);
        let report = f.engine.shutdown_within(deadline).await.unwrap();
        assert!(report.completed, "{report:?}");
        assert_eq!(report.sessions_ended, 5);
        assert_eq!(report.sessions_forced, 2, "the two leased sessions");
        assert_eq!(report.drains_forced, 2);
        assert_eq!(report.buffers_released, 5);
        assert_eq!(report.deadline, deadline);
        assert_eq!(f.pool.stats().live_buffers, 0);
        drop(keep);
    });
}

#[test]
fn what_is_not_released_at_the_deadline_is_reported() {
    on_paused_time(|| async {
        let inner = Arc::new(InMemoryPool::new(256 * MIB, 16 * MIB));
        let pool = Arc::new(StallingPool::new(inner.clone()));
        let engine = Engine::start(no_expiry(), pool.clone()).unwrap();
        for i in 0..3 {
            let session = engine.open(format!("u{i}")).await.unwrap();
            session.allocate(MIB).await.unwrap();
            std::mem::forget(session);
        }
        pool.stall(true);
        let report = engine
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!report.completed);
        assert_eq!(report.sessions_ended, 3);
        assert_eq!(report.sessions_unfinished, 0);
        assert_eq!(report.releases_unfinished, 3);
        assert_eq!(report.bytes_unfinished, 3 * MIB);
        assert_eq!(pool.held(), 3);
        // A late answer still releases each buffer once.
        pool.answer_late();
        settle(Duration::from_millis(10)).await;
        assert_eq!(inner.stats().live_buffers, 0);
        assert_eq!(engine.stats().await.unwrap().released, 3);
    });
}
