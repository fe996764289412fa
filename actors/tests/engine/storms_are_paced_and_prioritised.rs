//! A mass end becomes a steady stream: release is paced at the configured
//! rate, explicit closes overtake idle expiries in the queue, and allocations
//! waiting for memory are never held back by the pacer. On paused time, so
//! rates are checked exactly and nothing sleeps.

use std::time::Duration;

use crate::common::*;
use futures::future::join_all;
use sessionbus_actors::*;
use tokio::time::Instant;

const KIB: u64 = 1 << 10;

fn paced(rate: u32, burst: u32) -> EngineConfig {
    let mut config = no_expiry();
    config.release = ReleaseConfig::fixed(PaceUnit::Buffers, rate, burst, 1_000);
    config
}

async fn sessions_holding_one_buffer(f: &Fixture, n: usize) -> Vec<SessionHandle> {
    let mut sessions = Vec::new();
    for i in 0..n {
        let session = f.engine.open(format!("user-{i}")).await.unwrap();
        session.allocate(KIB).await.unwrap();
        sessions.push(session);
    }
    sessions
}

#[test]
fn a_storm_past_the_burst_is_released_at_the_configured_rate() {
    on_paused_time(|| async {
        // 100 buffers/s with a burst of 5: 50 closes = 5 at once, 45 paced.
        let f = start(paced(100, 5)).await;
        let sessions = sessions_holding_one_buffer(&f, 50).await;
        let storm = Instant::now();
        let receipts = join_all(sessions.iter().map(|s| async {
            let receipt = s.close().await.unwrap();
            (receipt, Instant::now())
        }))
        .await;
        assert!(
            receipts
                .iter()
                .all(|(r, _)| r.buffers == 1 && r.error.is_none())
        );
        let last = receipts.iter().map(|(_, at)| *at).max().unwrap();
        let paced_for = last - storm;
        // 45 paced buffers at 100/s: 450 ms; the achieved rate within ±5 %.
        let achieved = 45.0 / paced_for.as_secs_f64();
        assert!(
            (95.0..=105.0).contains(&achieved),
            "achieved {achieved:.1} buffers/s over {paced_for:?}"
        );
        let immediate = receipts
            .iter()
            .filter(|(r, _)| r.paced_for == Duration::ZERO)
            .count();
        assert_eq!(immediate, 5, "exactly the burst goes at once");
        assert_eq!(f.pool.stats().live_buffers, 0);
        f.shutdown_clean().await;
    });
}

#[test]
fn closes_overtake_idle_expiries_waiting_in_the_queue() {
    on_paused_time(|| async {
        // 10 buffers/s, burst 1: every release after the first waits 100 ms.
        let mut f = start(paced(10, 1)).await;
        let blockers = sessions_holding_one_buffer(&f, 2).await;
        let mut expiring = Vec::new();
        for i in 0..2 {
            // 40 and 50 ms: distinct deadlines, so their end order is known.
            let idle = Some(Duration::from_millis(40 + 10 * i));
            let options = OpenOptions::new(format!("idle-{i}")).expiry(policy(idle, None));
            let session = f.engine.open_with(options).await.unwrap();
            session.allocate(KIB).await.unwrap();
            expiring.push(session);
        }
        let closing = sessions_holding_one_buffer(&f, 2).await;

        // t = 0: both blockers end; the second waits for the pacer until 100 ms.
        for blocker in &blockers {
            let blocker = blocker.clone();
            actix::spawn(async move { blocker.close().await });
        }
        // t = 40 and 50 ms: the idle sessions expire; t = 60 ms: two closes.
        settle(Duration::from_millis(60)).await;
        for session in &closing {
            let session = session.clone();
            actix::spawn(async move { session.close().await });
        }

        let mut ended = Vec::new();
        let mut released = Vec::new();
        while released.len() < 6 {
            match f.next(EventKinds::ENDED | EventKinds::RELEASED).await {
                LifecycleEvent::Ended(end) => ended.push((end.id, end.reason)),
                LifecycleEvent::Released(receipt) => released.push(receipt.id),
                _ => {}
            }
        }
        let id = |s: &SessionHandle| s.id();
        let ended_ids: Vec<_> = ended.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ended_ids,
            vec![
                id(&blockers[0]),
                id(&blockers[1]),
                id(&expiring[0]),
                id(&expiring[1]),
                id(&closing[0]),
                id(&closing[1]),
            ],
            "ended in this order"
        );
        assert_eq!(ended[2].1, EndReason::IdleTimeout);
        assert_eq!(
            released,
            vec![
                id(&blockers[0]),
                id(&blockers[1]),
                id(&closing[0]),
                id(&closing[1]),
                id(&expiring[0]),
                id(&expiring[1]),
            ],
            "the closes were released before the expiries that ended first"
        );
        f.shutdown_clean().await;
    });
}

#[test]
fn waiting_allocations_lift_the_pacer_so_release_keeps_up_with_demand() {
    on_paused_time(|| async {
        let mut config = paced(1, 1); // one buffer a second: a storm would take seconds
        config.sessions.max_session_memory = KIB;
        config.budget.device_memory = Some(4 * KIB);
        config.budget.when_exhausted = WhenExhausted::Wait;
        config.budget.wait_timeout = std::time::Duration::from_millis(60_000);
        let f = start(config).await;

        // Without demand: four releases past a burst of one take three seconds.
        let sessions = sessions_holding_one_buffer(&f, 4).await;
        let storm = Instant::now();
        join_all(sessions.iter().map(|s| s.close())).await;
        assert!(Instant::now() - storm >= Duration::from_secs(3));

        // With allocations waiting for all that memory, the same storm is not paced.
        let sessions = sessions_holding_one_buffer(&f, 4).await;
        let mut allocations = Vec::new();
        for i in 0..4 {
            let waiting = f.engine.open(format!("waiting-{i}")).await.unwrap();
            allocations.push(actix::spawn(async move { waiting.allocate(KIB).await }));
        }
        settle(Duration::from_millis(1)).await;
        assert_eq!(f.stats().await.budget.waiting, 4, "the allocations wait");
        let storm = Instant::now();
        join_all(sessions.iter().map(|s| s.close())).await;
        for allocation in allocations {
            allocation.await.unwrap().unwrap();
        }
        assert!(
            Instant::now() - storm < Duration::from_secs(1),
            "released in {:?} with demand waiting",
            Instant::now() - storm
        );
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.budget.device_used, 0, "every charge was refunded");
    });
}
