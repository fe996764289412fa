//! The idle-pipeline shortcut (an end handed to the pool from its shard's
//! thread when nothing is queued or in flight) under attack: live traffic
//! running late, a stuck or dropped release on the shortcut, a pacer that
//! refuses the claim, a shutdown with a shortcut release in flight. On
//! paused time.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::common::stalling::{StallingPool, stalling_pool};
use crate::common::*;
use sessionbus_actors::*;

const KIB: u64 = 1 << 10;

fn limited(max_in_flight: u32, step_timeout: Duration) -> EngineConfig {
    release_limited(3, max_in_flight, step_timeout)
}

async fn holding(engine: &EngineHandle, owner: &str) -> SessionHandle {
    open_holding(engine, owner, KIB).await
}

/// Documented: release gives way while live sessions talk and the engine
/// thread runs late. Ends that arrive one at a time find the pipeline idle
/// each time; the shortcut must not let them past the live-traffic check
/// (`backoff_level` is reset to 0 whenever the queue is empty, so checking
/// it is no check at all).
#[test]
fn ends_one_at_a_time_still_give_way_while_live_traffic_runs_late() {
    on_paused_time(|| async {
        let f = start(no_expiry()).await;
        let live = f.engine.open("live").await.unwrap();
        let mut sessions = Vec::new();
        for i in 0..10 {
            let session = f.engine.open(format!("one-{i}")).await.unwrap();
            session.allocate(KIB).await.unwrap();
            sessions.push(session);
        }
        let (busy, turns) = (Rc::new(Cell::new(true)), Rc::new(Cell::new(0u64)));
        {
            let (busy, turns) = (busy.clone(), turns.clone());
            actix::spawn(async move {
                while busy.get() {
                    tokio::time::advance(Duration::from_millis(1)).await;
                    turns.set(turns.get() + 1);
                }
            });
        }
        {
            let (busy, live) = (busy.clone(), live.clone());
            actix::spawn(async move {
                while busy.get() {
                    let _ = live.touch().await;
                    tokio::task::yield_now().await;
                }
            });
        }
        // One after the other, each waiting for the last one's receipt.
        let done = Rc::new(Cell::new(0usize));
        {
            let done = done.clone();
            let sessions = sessions.clone();
            actix::spawn(async move {
                for session in sessions {
                    session.close().await.unwrap();
                    done.set(done.get() + 1);
                }
            });
        }
        while turns.get() < 300 {
            tokio::task::yield_now().await;
        }
        assert!(
            done.get() <= 1,
            "{} of 10 releases went while live traffic ran late (300 late turns)",
            done.get()
        );
        busy.set(false);
        while done.get() < 10 {
            settle(Duration::from_millis(10)).await;
        }
        f.shutdown_clean().await;
    });
}

/// A release handed over by the shortcut that the pool never answers is
/// declared stuck after `step_timeout`, its room in flight given back; its
/// late answer refunds the budget.
#[test]
fn a_stuck_release_on_the_shortcut_is_declared_stuck_and_gives_its_room_back() {
    on_paused_time(|| async {
        let (inner, pool) = stalling_pool();
        let engine = Engine::start(limited(1, Duration::from_secs(30)), pool.clone()).unwrap();
        let stuck = holding(&engine, "stuck").await;
        pool.hold(stuck.id());
        let receipt = stuck.close().await.unwrap();
        assert!(
            receipt
                .error
                .as_deref()
                .is_some_and(|e| e.contains("stuck")),
            "{receipt:?}"
        );
        let stats = engine.stats().await.unwrap();
        assert_eq!(
            (
                stats.release_queue.in_flight,
                stats.release_queue.in_flight_bytes
            ),
            (0, 0)
        );
        // The next end goes at once, by the shortcut again.
        let next = holding(&engine, "next").await;
        let receipt = next.close().await.unwrap();
        assert_eq!((receipt.buffers, receipt.error.as_deref()), (1, None));
        pool.answer_late();
        settle(Duration::from_millis(10)).await;
        assert_eq!(inner.stats().live_buffers, 0);
        assert!(engine.shutdown().await.unwrap().completed);
    });
}

/// A dropped reply on the shortcut: an error receipt, and the pipeline is
/// idle again (not one release counted in flight forever).
#[test]
fn a_dropped_reply_on_the_shortcut_fails_that_release_and_frees_its_room() {
    on_paused_time(|| async {
        let (_inner, pool) = stalling_pool();
        let engine = Engine::start(limited(1, Duration::from_secs(30)), pool.clone()).unwrap();
        let lost = holding(&engine, "lost").await;
        pool.drop_reply(lost.id());
        let receipt = lost.close().await.unwrap();
        assert!(receipt.error.is_some(), "{receipt:?}");
        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.release_queue, ReleaseQueueStats::default());
        let next = holding(&engine, "next").await;
        let receipt = next.close().await.unwrap();
        assert_eq!((receipt.buffers, receipt.error.as_deref()), (1, None));
        assert_eq!(receipt.paced_for, Duration::ZERO);
    });
}

/// A pacer that refuses the claim: the release is queued and paced; the
/// claim is given back (never two in flight with `max_in_flight` 1), and an
/// urgent close that arrives meanwhile still goes before a queued expiry.
#[test]
fn a_refused_claim_is_paced_and_never_overtaken_nor_beside_another() {
    on_paused_time(|| async {
        let (_inner, pool) = stalling_pool();
        let mut config = sharded(3);
        config.release = ReleaseConfig::fixed(PaceUnit::Buffers, 10, 1, 1);
        let engine = Engine::start(config, pool.clone()).unwrap();
        let first = holding(&engine, "first").await;
        let second = holding(&engine, "second").await;
        let third = holding(&engine, "third").await;
        let r = first.close().await.unwrap();
        assert_eq!(
            r.paced_for,
            Duration::ZERO,
            "the burst admits the first at once"
        );
        let c2 = {
            let s = second.clone();
            actix::spawn(async move { s.close().await.unwrap() })
        };
        settle(Duration::from_micros(1)).await;
        let stats = engine.stats().await.unwrap();
        assert!(stats.release_queue.in_flight <= 1, "{stats:?}");
        let c3 = {
            let s = third.clone();
            actix::spawn(async move { s.close().await.unwrap() })
        };
        let (r2, r3) = (c2.await.unwrap(), c3.await.unwrap());
        assert!(
            r2.paced_for > Duration::ZERO,
            "the refused claim was paced: {r2:?}"
        );
        assert_eq!((r2.buffers, r3.buffers), (1, 1));
        let order = pool.order();
        assert_eq!(order, vec![first.id(), second.id(), third.id()]);
    });
}

/// A shutdown whose deadline passes with a shortcut release unanswered
/// counts it in the report: one release unfinished, its bytes unfinished.
#[test]
fn a_shutdown_counts_a_shortcut_release_left_unanswered() {
    on_paused_time(|| async {
        let (_inner, pool) = stalling_pool();
        let engine = Engine::start(limited(4, Duration::from_secs(3600)), pool.clone()).unwrap();
        let held = holding(&engine, "held").await;
        pool.hold(held.id());
        let closing = {
            let s = held.clone();
            actix::spawn(async move { s.close().await })
        };
        settle(Duration::from_millis(1)).await;
        assert_eq!(pool.held(), 1, "handed by the shortcut");
        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.release_queue.in_flight, 1);
        assert_eq!(stats.release_queue.in_flight_bytes, KIB);
        let report = engine
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!report.completed);
        assert_eq!(report.releases_unfinished, 1, "{report:?}");
        assert_eq!(report.bytes_unfinished, KIB, "{report:?}");
        pool.answer_late();
        drop(closing);
    });
}

/// An engine on a scripted pool that escalates at the third panic in
/// 30 s (`supervision.max_restarts` 2).
fn escalating_engine() -> (EngineHandle, std::sync::Arc<StallingPool>) {
    let (_inner, pool) = stalling_pool();
    let mut config = limited(4, Duration::from_secs(30));
    config.supervision.max_restarts = 2;
    (Engine::start(config, pool.clone()).unwrap(), pool)
}

/// Three sessions, each holding memory, closed one at a time; the pool
/// panics on each release (each finds the pipeline idle).
async fn close_three_on_a_panicking_pool(engine: &EngineHandle, pool: &StallingPool) {
    for i in 0..3 {
        let doomed = holding(engine, &format!("doomed-{i}")).await;
        pool.panic_on(doomed.id());
        let closing = {
            let s = doomed.clone();
            actix::spawn(async move { s.close().await })
        };
        let _ = tokio::time::timeout(Duration::from_millis(100), closing).await;
    }
}

/// Documented: past `supervision.max_restarts` within `supervision.within`
/// the release path escalates (the runtime is marked failed, admits no new
/// sessions). A pool that panics on every release, with ends coming one at
/// a time (each finding the pipeline idle), must still escalate: the
/// shortcut's `catch_unwind` must not hide the panics from supervision.
#[test]
fn a_pool_that_panics_on_every_release_still_escalates_when_ends_come_one_at_a_time() {
    on_paused_time(|| async {
        let (engine, pool) = escalating_engine();
        close_three_on_a_panicking_pool(&engine, &pool).await;
        let stats = engine.stats().await.unwrap();
        assert!(
            stats.supervision.restarts >= 2 && stats.supervision.failed.is_some(),
            "three pool panics within the window, not escalated: {:?}",
            stats.supervision
        );
    });
}

/// Documented: past the restart limit release work stops (the runtime is
/// failed; what is queued stays queued and a shutdown counts it
/// unfinished). The shortcut must stop with it: an end that finds the
/// pipeline idle after the escalation is queued, not handed to the pool
/// that kept panicking, as it would be queued behind a dead dispatcher.
#[test]
fn after_an_escalation_the_shortcut_hands_nothing_to_the_pool() {
    on_paused_time(|| async {
        let (engine, pool) = escalating_engine();
        let late = holding(&engine, "late").await;
        close_three_on_a_panicking_pool(&engine, &pool).await;
        let stats = engine.stats().await.unwrap();
        assert!(
            stats.supervision.failed.is_some(),
            "{:?}",
            stats.supervision
        );
        let asked = pool.order().len();
        let closing = {
            let s = late.clone();
            actix::spawn(async move { s.close().await })
        };
        settle(Duration::from_millis(10)).await;
        assert_eq!(
            pool.order().len(),
            asked,
            "a release went to the pool after release work escalated"
        );
        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.release_queue.queued, 1, "{:?}", stats.release_queue);
        assert_eq!(stats.release_queue.queued_bytes, KIB);
        let report = engine
            .shutdown_within(Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!report.completed);
        assert_eq!(report.releases_unfinished, 1, "{report:?}");
        drop(closing);
    });
}
