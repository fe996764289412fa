//! Batched release under attack: a pool that answers part of a batch, drops
//! replies, or panics while a batch is handed over; a dispatcher panic with
//! a mixed batch at hand; pacing whose burst is smaller than a batch; a
//! shutdown in the middle of a batch. On paused time.
//!
//! The pool is the tests' `StallingPool`, scripted per session (held,
//! dropped, or a panic in `release_session`). Batches are made
//! deterministic with "blockers": as many held releases as
//! the room in flight, so everything closed afterwards waits in the queue;
//! answering every blocker at once frees the whole room, and the dispatcher
//! takes the queue as one batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::stalling::{StallingPool, stalling_pool};
use crate::common::*;
use sessionbus_actors::*;

const KIB: u64 = 1 << 10;
const LONG: Duration = Duration::from_secs(3600);

async fn holding(engine: &EngineHandle, owner: &str) -> SessionHandle {
    open_holding(engine, owner, KIB).await
}

type Closing = tokio::task::JoinHandle<Result<ReleaseReceipt, SessionError>>;

fn close(session: &SessionHandle) -> Closing {
    let session = session.clone();
    actix::spawn(async move { session.close().await })
}

/// `n` blockers closed and held by the pool: they fill the room in flight.
async fn blockers(engine: &EngineHandle, pool: &StallingPool, n: usize) -> Vec<Closing> {
    pool.stall(true);
    let mut closing = Vec::new();
    for i in 0..n {
        closing.push(close(&holding(engine, &format!("blocker-{i}")).await));
    }
    settle(Duration::from_millis(10)).await;
    assert_eq!(pool.held(), n, "the blockers fill the room in flight");
    pool.stall(false);
    closing
}

/// Within a (virtual) minute, or `None`.
async fn within_a_minute(closing: Closing) -> Option<Result<ReleaseReceipt, SessionError>> {
    tokio::time::timeout(Duration::from_secs(60), closing)
        .await
        .ok()
        .map(|joined| joined.expect("close task"))
}

/// Documented ("Storms, step by step"): before the receipt task waits for an
/// answer not yet in, it sends what it has, "so no receipt waits behind an
/// unanswered release". The pool contract (gpu/mod.rs) orders execution,
/// not answers. Here the first release of a batch is unanswered and the
/// second is answered at once: its receipt (and the budget refund) must not
/// wait for the first one's `step_timeout`.
#[test]
fn an_answered_release_is_not_held_back_behind_an_unanswered_one_in_its_batch() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let step_timeout = Duration::from_secs(30);
        let engine = Engine::start(release_limited(3, 2, step_timeout), pool.clone()).unwrap();
        let slow = holding(&engine, "slow").await;
        let fast = holding(&engine, "fast").await;
        let held_back = blockers(&engine, &pool, 2).await;
        pool.hold(slow.id());
        let slow_close = close(&slow);
        settle(Duration::from_millis(1)).await;
        let fast_close = close(&fast);
        settle(Duration::from_millis(10)).await;
        assert_eq!(engine.stats().await.unwrap().release_queue.queued, 2);

        // The room comes back at once: [slow, fast] go as one batch.
        pool.answer_late();
        settle(Duration::from_millis(10)).await;
        let order = pool.order();
        assert_eq!(&order[2..], &[slow.id(), fast.id()], "one batch, in order");
        assert_eq!(inner.stats().live_buffers, 1, "fast's memory is back");

        // Fast's answer is in: its close resolves long before slow's timeout.
        let stats = engine.stats().await.unwrap();
        let receipt = tokio::time::timeout(step_timeout / 2, fast_close).await;
        let receipt = receipt
            .expect("fast's receipt waited behind slow's unanswered release")
            .unwrap()
            .unwrap();
        assert_eq!((receipt.buffers, receipt.error), (1, None));
        assert_eq!(
            stats.budget.device_used, KIB,
            "fast's bytes refunded as soon as the pool freed them"
        );
        drop((slow_close, held_back));
    });
}

/// The same attack seen from a shutdown: only the release that is really
/// unanswered is unfinished at the deadline.
#[test]
fn a_shutdown_in_the_middle_of_a_batch_counts_only_the_really_unanswered_release() {
    on_paused_time(|| async {
        let (_inner, pool) = stalling_pool();
        let engine = Engine::start(release_limited(3, 4, LONG), pool.clone()).unwrap();
        let sessions = [
            holding(&engine, "slow").await,
            holding(&engine, "a").await,
            holding(&engine, "b").await,
            holding(&engine, "c").await,
        ];
        let _held_back = blockers(&engine, &pool, 4).await;
        pool.hold(sessions[0].id());
        let mut closing = Vec::new();
        for session in &sessions {
            closing.push(close(session));
            settle(Duration::from_millis(1)).await;
        }
        pool.answer_late(); // the blockers
        settle(Duration::from_millis(10)).await;
        assert_eq!(pool.held(), 1, "only slow is unanswered");

        let report = engine
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!report.completed);
        assert_eq!(
            report.releases_unfinished, 1,
            "answered releases are reported unfinished: {report:?}"
        );
        assert_eq!(report.bytes_unfinished, KIB);
    });
}

/// Control: with a stuck release at the head of a batch and many answered
/// behind it, only the stuck one is declared stuck at the deadline; every
/// other receipt is clean, each once, and every answered byte is refunded.
#[test]
fn a_stuck_head_of_batch_makes_only_itself_stuck() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let step_timeout = Duration::from_secs(30);
        let engine = Engine::start(release_limited(3, 200, step_timeout), pool.clone()).unwrap();
        let mut events = engine
            .subscribe_channel(EventKinds::RELEASED, Delivery::Reliable)
            .await
            .unwrap();
        let mut sessions = Vec::new();
        for i in 0..199 {
            sessions.push(holding(&engine, &format!("s{i}")).await);
        }
        let _held_back = blockers(&engine, &pool, 200).await;
        pool.hold(sessions[0].id());
        for session in &sessions {
            drop(close(session)); // detached: the task runs on
        }
        settle(Duration::from_millis(10)).await;
        pool.answer_late(); // the blockers
        // Past the deadline of the batch.
        settle(step_timeout * 2).await;
        let mut receipts: HashMap<SessionId, Vec<Arc<ReleaseReceipt>>> = HashMap::new();
        while let Ok(LifecycleEvent::Released(receipt)) = events.try_recv() {
            receipts.entry(receipt.id).or_default().push(receipt);
        }
        assert_eq!(receipts.len(), 399, "every release receipted");
        assert!(receipts.values().all(|r| r.len() == 1), "each once");
        let stuck: Vec<_> = receipts
            .values()
            .filter(|r| r[0].error.is_some())
            .map(|r| r[0].id)
            .collect();
        assert_eq!(stuck, vec![sessions[0].id()], "only the head is stuck");
        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.release_queue.in_flight, 0);
        assert_eq!(stats.budget.device_used, KIB, "only the stuck one's bytes");
        pool.answer_late(); // late: refunded once
        settle(Duration::from_millis(10)).await;
        assert_eq!(engine.stats().await.unwrap().budget.device_used, 0);
        assert_eq!(inner.stats().released_total, 399);
    });
}

/// A panic while the batch is handed to the pool (here: in the pool's
/// `release_session` for the batch's second release) is caught by the
/// supervisor, which restarts the dispatcher. Invariant 22: a restart loses
/// nothing. The batch's first release, already handed over, must still get
/// its receipt, and the dispatcher's books (releases in flight) must not keep
/// room that no release will ever give back.
#[test]
fn a_panic_while_a_batch_is_handed_over_loses_nothing_else_of_the_batch() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let engine = Engine::start(release_limited(1, 2, LONG), pool.clone()).unwrap();
        let first = holding(&engine, "first").await;
        let second = holding(&engine, "second").await;
        let _held_back = blockers(&engine, &pool, 2).await;
        pool.panic_on(second.id());
        let first_close = close(&first);
        settle(Duration::from_millis(1)).await;
        let _second_close = close(&second);
        settle(Duration::from_millis(10)).await;
        pool.answer_late(); // the blockers: [first, second] go as one batch
        settle(Duration::from_millis(10)).await;
        assert_eq!(
            engine.stats().await.unwrap().supervision.restarts,
            1,
            "the panic was caught and the dispatcher restarted"
        );
        assert_eq!(inner.stats().released_total, 3, "first was released");

        let receipt = within_a_minute(first_close)
            .await
            .expect("first was released but never receipted");
        assert_eq!(receipt.unwrap().buffers, 1);
    });
}

/// After the same panic, release goes on: the lost batch must not keep the
/// room in flight (`max_in_flight` 2) that no answer will ever give back.
#[test]
fn a_panic_while_a_batch_is_handed_over_does_not_wedge_release() {
    on_paused_time(|| async {
        let (_inner, pool) = stalling_pool();
        let engine = Engine::start(release_limited(1, 2, LONG), pool.clone()).unwrap();
        let first = holding(&engine, "first").await;
        let second = holding(&engine, "second").await;
        let _held_back = blockers(&engine, &pool, 2).await;
        pool.panic_on(second.id());
        let _first_close = close(&first);
        settle(Duration::from_millis(1)).await;
        let _second_close = close(&second);
        settle(Duration::from_millis(10)).await;
        pool.answer_late();
        settle(Duration::from_millis(10)).await;
        assert_eq!(engine.stats().await.unwrap().supervision.restarts, 1);
        let later = holding(&engine, "later").await;
        let receipt = within_a_minute(close(&later))
            .await
            .expect("the dispatcher is wedged: in-flight room leaked by the lost batch");
        assert_eq!(receipt.unwrap().buffers, 1);
    });
}

/// A dispatcher panic with a whole mixed batch at hand (closes and expiries):
/// the batch goes back in front, in order; after the restart every release
/// happens exactly once, closes before expiries.
#[test]
fn a_dispatcher_panic_with_a_mixed_batch_at_hand_loses_and_repeats_nothing() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let engine = Engine::start(release_limited(3, 4, LONG), pool.clone()).unwrap();
        let mut expiring = Vec::new();
        for i in 0..3 {
            let options = OpenOptions::new(format!("expiring-{i}"))
                .expiry(policy(None, Some(Duration::from_secs(1))));
            let session = engine.open_with(options).await.unwrap();
            session.allocate(KIB).await.unwrap();
            expiring.push(session);
        }
        let mut closing_sessions = Vec::new();
        for i in 0..3 {
            closing_sessions.push(holding(&engine, &format!("closing-{i}")).await);
        }
        let _held_back = blockers(&engine, &pool, 4).await;
        settle(Duration::from_secs(2)).await; // the expiries queue first
        let mut closing = Vec::new();
        for session in &closing_sessions {
            closing.push(close(session));
            settle(Duration::from_millis(1)).await;
        }
        assert_eq!(engine.stats().await.unwrap().release_queue.queued, 6);
        engine.inject_cleanup_panics(1);
        pool.answer_late();
        for closing in closing {
            let receipt = within_a_minute(closing).await.expect("closed").unwrap();
            assert_eq!((receipt.buffers, receipt.error), (1, None));
        }
        settle(Duration::from_secs(1)).await;
        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.supervision.restarts, 1);
        let order = pool.order();
        let after: Vec<_> = order[4..].to_vec();
        let mut counts: HashMap<SessionId, usize> = HashMap::new();
        for id in &after {
            *counts.entry(*id).or_default() += 1;
        }
        assert_eq!(counts.len(), 6);
        assert!(counts.values().all(|n| *n == 1), "each handed over once");
        let closes: Vec<_> = closing_sessions.iter().map(|s| s.id()).collect();
        let expiries: Vec<_> = expiring.iter().map(|s| s.id()).collect();
        assert_eq!(&after[..3], &closes[..], "closes first, in order");
        assert_eq!(&after[3..], &expiries[..], "then expiries, in order");
        assert_eq!(inner.stats().released_total, 10);
        assert_eq!(inner.stats().live_buffers, 0);
        assert_eq!((stats.releasing, stats.release_queue.in_flight), (0, 0));
        assert_eq!(stats.budget.device_used, 0);
    });
}

/// A pool that drops the replies of part of a batch: those get error
/// receipts and no refund; the others of the same batch are clean; the room
/// in flight comes back.
#[test]
fn a_pool_that_drops_part_of_a_batch_fails_only_those_releases() {
    on_paused_time(|| async {
        let (_inner, pool) = stalling_pool();
        let engine = Engine::start(release_limited(3, 4, LONG), pool.clone()).unwrap();
        let sessions = [
            holding(&engine, "a").await,
            holding(&engine, "dropped").await,
            holding(&engine, "c").await,
            holding(&engine, "d").await,
        ];
        let _held_back = blockers(&engine, &pool, 4).await;
        pool.drop_reply(sessions[1].id());
        let mut closing = Vec::new();
        for session in &sessions {
            closing.push(close(session));
            settle(Duration::from_millis(1)).await;
        }
        pool.answer_late();
        for (i, closing) in closing.into_iter().enumerate() {
            let receipt = within_a_minute(closing).await.expect("closed").unwrap();
            if i == 1 {
                assert!(receipt.error.is_some(), "{receipt:?}");
                assert_eq!(receipt.buffers, 0);
            } else {
                assert_eq!((receipt.buffers, receipt.error), (1, None));
            }
        }
        let stats = engine.stats().await.unwrap();
        assert_eq!((stats.releasing, stats.release_queue.in_flight), (0, 0));
        assert_eq!(stats.budget.device_used, KIB, "no refund without an answer");
    });
}

/// Pacing whose burst (3) is smaller than the queue: a batch never takes
/// more than the limiter admits, and the rate holds exactly (10/s).
#[test]
fn a_burst_smaller_than_a_batch_keeps_the_rate_exact() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let mut config = release_limited(3, 64, LONG);
        config.release = ReleaseConfig::fixed(PaceUnit::Buffers, 10, 3, 64);
        let engine = Engine::start(config, pool.clone()).unwrap();
        let mut sessions = Vec::new();
        for i in 0..12 {
            sessions.push(holding(&engine, &format!("s{i}")).await);
        }
        let start = tokio::time::Instant::now();
        for session in &sessions {
            drop(close(session)); // detached: the task runs on
        }
        let released_at = |ms: u64| {
            let inner = inner.clone();
            async move {
                tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                inner.stats().released_total
            }
        };
        // 3 at once (the burst), then one every 100 ms.
        assert_eq!(released_at(50).await, 3);
        assert_eq!(released_at(150).await, 4);
        assert_eq!(released_at(550).await, 8);
        assert_eq!(released_at(850).await, 11);
        assert_eq!(released_at(1050).await, 12);
        assert!(engine.shutdown().await.unwrap().completed);
    });
}

/// Allocations waiting for memory lift pacing for the whole batch: a slow
/// tier (1/s, burst 1) does not hold back the releases they wait for.
#[test]
fn an_allocation_waiting_for_memory_is_not_held_back_by_pacing() {
    on_paused_time(|| async {
        let (_inner, pool) = stalling_pool();
        let mut config = release_limited(3, 64, LONG);
        config.release = ReleaseConfig::fixed(PaceUnit::Buffers, 1, 1, 64);
        config.budget.device_memory = Some(8 * MIB);
        config.sessions.max_session_memory = 8 * MIB;
        config.budget.when_exhausted = WhenExhausted::Wait;
        config.budget.wait_timeout = Duration::from_secs(60);
        let engine = Engine::start(config, pool.clone()).unwrap();
        let mut sessions = Vec::new();
        for i in 0..8 {
            let session = engine.open(format!("s{i}")).await.unwrap();
            session.allocate(MIB).await.unwrap();
            sessions.push(session);
        }
        let big = engine.open("big").await.unwrap();
        let start = tokio::time::Instant::now();
        let waiting = {
            let big = big.clone();
            actix::spawn(async move { big.allocate(8 * MIB).await })
        };
        settle(Duration::from_millis(1)).await;
        assert!(engine.stats().await.unwrap().budget.waiting_bytes > 0);
        for session in &sessions {
            drop(close(session)); // detached: the task runs on
        }
        let allocated = tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("the allocation got its memory")
            .unwrap();
        assert!(allocated.is_ok(), "{allocated:?}");
        assert!(
            tokio::time::Instant::now() - start < Duration::from_secs(2),
            "paced at 1/s the 8 releases would take 7 s: {:?}",
            tokio::time::Instant::now() - start
        );
    });
}
