//! The dispatcher hands every release that may go at one moment to the pool
//! as one batch, and the batch's receipts go back one message per shard. A
//! batch never takes more than the room in flight, keeps the queue's order
//! (closes before expiries), and every receipt reaches its own session's
//! shard, whichever shard the batch was made on. On paused time.

use std::time::Duration;

use crate::common::stalling::stalling_pool;
use crate::common::*;
use futures::future::join_all;
use sessionbus_actors::*;

const KIB: u64 = 1 << 10;

/// Three shards; release unpaced but at most `max_in_flight` unanswered.
fn limited(max_in_flight: u32) -> EngineConfig {
    let step_timeout = EngineConfig::default().supervision.step_timeout;
    release_limited(3, max_in_flight, step_timeout)
}

#[test]
fn a_storm_never_has_more_in_flight_than_allowed_and_every_receipt_reaches_its_shard() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let engine = Engine::start(limited(8), pool.clone()).unwrap();
        let mut sessions = Vec::new();
        for i in 0..30 {
            let session = open_holding(&engine, &format!("user-{i}"), KIB).await;
            sessions.push(session);
        }
        let shards: std::collections::HashSet<usize> =
            sessions.iter().map(|s| shard_of(s.id(), 3)).collect();
        assert_eq!(shards.len(), 3, "the storm spans every shard");

        pool.stall(true);
        let closing: Vec<_> = sessions
            .iter()
            .map(|s| {
                let s = s.clone();
                actix::spawn(async move { s.close().await })
            })
            .collect();
        settle(Duration::from_millis(50)).await;
        assert_eq!(pool.held(), 8, "exactly the room in flight was handed over");
        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.release_queue.in_flight, 8);
        assert_eq!(
            stats.release_queue.queued, 22,
            "the rest waits in the queue"
        );

        // The pool answers: the rest goes, every receipt to its session.
        pool.stall(false);
        pool.answer_late();
        let receipts = join_all(closing).await;
        for (session, receipt) in sessions.iter().zip(receipts) {
            let receipt = receipt.unwrap().unwrap();
            assert_eq!(receipt.id, session.id());
            assert_eq!((receipt.buffers, receipt.error.as_deref()), (1, None));
        }
        assert_eq!(inner.stats().released_total, 30, "each released once");
        assert_eq!(inner.stats().live_buffers, 0);
        let stats = engine.stats().await.unwrap();
        assert_eq!((stats.releasing, stats.released), (0, 30));
        assert_eq!(stats.release_queue.in_flight, 0);
        assert_eq!(stats.budget.device_used, 0, "every byte refunded");
        assert!(engine.shutdown().await.unwrap().completed);
    });
}

#[test]
fn closes_from_every_shard_go_to_the_pool_before_queued_expiries() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let engine = Engine::start(limited(1), pool.clone()).unwrap();
        let mut events = engine
            .subscribe_channel(EventKinds::RELEASED, Delivery::Reliable)
            .await
            .unwrap();
        // One release holds the only room in flight while the rest queue.
        let first = open_holding(&engine, "first", KIB).await;
        let mut expiring = Vec::new();
        for i in 0..6 {
            let options = OpenOptions::new(format!("expiring-{i}"))
                .expiry(policy(None, Some(Duration::from_secs(1))));
            let session = engine.open_with(options).await.unwrap();
            session.allocate(KIB).await.unwrap();
            expiring.push(session);
        }
        let mut closing = Vec::new();
        for i in 0..6 {
            let session = open_holding(&engine, &format!("closing-{i}"), KIB).await;
            closing.push(session);
        }
        pool.stall(true);
        let first_close = actix::spawn(async move { first.close().await });
        settle(Duration::from_millis(10)).await;
        assert_eq!(pool.held(), 1);
        // The expiries queue first, the closes after them.
        settle(Duration::from_secs(2)).await;
        for session in &closing {
            let session = session.clone();
            actix::spawn(async move { session.close().await });
        }
        settle(Duration::from_millis(10)).await;
        assert_eq!(engine.stats().await.unwrap().release_queue.queued, 12);

        // With room for one at a time, the queue's order is the pool's order.
        let mut answered = Vec::new();
        while answered.len() < 13 {
            pool.answer_late();
            settle(Duration::from_millis(1)).await;
            while let Ok(LifecycleEvent::Released(receipt)) = events.try_recv() {
                answered.push(receipt.reason);
            }
        }
        assert!(first_close.await.unwrap().is_ok());
        let closes_first = answered[1..7].iter().all(|r| *r == EndReason::Closed);
        let expiries_last = answered[7..].iter().all(|r| *r == EndReason::TtlExpired);
        assert!(closes_first && expiries_last, "{answered:?}");
        assert_eq!(inner.stats().released_total, 13);
        assert!(engine.shutdown().await.unwrap().completed);
    });
}

/// A release whose pipeline is idle goes to the pool from its own shard's
/// thread, without the dispatcher; that shortcut must never put a second
/// release beside one in flight, or one queued behind it.
#[test]
fn an_end_on_an_idle_pipeline_goes_at_once_and_never_beside_a_release_in_flight() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let engine = Engine::start(limited(1), pool.clone()).unwrap();
        let mut by_shard: Vec<Vec<SessionHandle>> = vec![Vec::new(); 3];
        let mut i = 0;
        while by_shard.iter().any(|s| s.len() < 2) {
            let session = open_holding(&engine, &format!("user-{i}"), KIB).await;
            by_shard[shard_of(session.id(), 3)].push(session);
            i += 1;
        }
        pool.stall(true);
        // One end from each shard, one after the other.
        let mut closing = Vec::new();
        for (shard, sessions) in by_shard.iter().enumerate() {
            let session = sessions[0].clone();
            closing.push(actix::spawn(async move { session.close().await }));
            settle(Duration::from_millis(1)).await;
            assert_eq!(pool.held(), 1, "one in flight after shard {shard}'s end");
            let stats = engine.stats().await.unwrap();
            assert_eq!(stats.release_queue.in_flight, 1);
            assert_eq!(stats.release_queue.queued, shard as u64);
        }
        pool.stall(false);
        pool.answer_late();
        for receipt in join_all(closing).await {
            assert_eq!(receipt.unwrap().unwrap().buffers, 1);
        }
        // Idle again: each shard's next end goes at once, in turn.
        for sessions in &by_shard {
            let receipt = sessions[1].close().await.unwrap();
            assert_eq!(receipt.paced_for, Duration::ZERO);
            assert_eq!(receipt.buffers, 1);
        }
        assert_eq!(inner.stats().released_total, 6);
        assert_eq!(inner.stats().live_buffers, 0);
        assert!(engine.shutdown().await.unwrap().completed);
    });
}

/// The shortcut runs on the registry shard's thread, inside its publish: a
/// pool that panics there fails that one release (an error receipt, its
/// room in flight given back) and takes nothing else down.
#[test]
fn a_pool_that_panics_on_an_idle_pipeline_fails_only_that_release() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let engine = Engine::start(limited(4), pool.clone()).unwrap();
        let doomed = open_holding(&engine, "doomed", KIB).await;
        pool.panic_on(doomed.id());
        let receipt = doomed.close().await.unwrap();
        assert!(receipt.error.is_some(), "{receipt:?}");
        assert_eq!(receipt.buffers, 0, "nothing claimed released");

        // The registry and the pipeline go on.
        let next = open_holding(&engine, "next", KIB).await;
        let receipt = next.close().await.unwrap();
        assert_eq!((receipt.buffers, receipt.error.as_deref()), (1, None));
        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.release_queue.in_flight, 0);
        assert_eq!((stats.live, stats.releasing), (0, 0));
        assert_eq!(inner.stats().released_total, 1);
        assert!(engine.shutdown().await.unwrap().completed);
    });
}
