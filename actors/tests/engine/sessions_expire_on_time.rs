//! Idle timeout and TTL end sessions on their own, on time, once — proved on
//! paused time, so the deadlines are exact and nothing sleeps.

use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const SEC: Duration = Duration::from_secs(1);

#[test]
fn an_idle_session_ends_with_idle_timeout_and_its_deadline() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let opened_at = tokio::time::Instant::now().into_std();
        let options = OpenOptions::new("alice").expiry(policy(Some(30 * SEC), None));
        let session = f.engine.open_with(options).await.unwrap();
        session.allocate(MIB).await.unwrap();

        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::IdleTimeout);
        let deadline = end.deadline.expect("an expiry carries its deadline");
        assert_eq!(deadline.kind, DeadlineKind::Idle);
        assert!(
            deadline.at >= opened_at + 30 * SEC,
            "due 30 s after the last activity"
        );
        assert!(deadline.fired_at >= deadline.at, "never fires early");
        let receipt = f.next_release().await;
        assert_eq!(
            (receipt.id, receipt.buffers, receipt.bytes),
            (session.id(), 1, MIB)
        );
        assert_eq!(receipt.deadline, Some(deadline));
        assert!(session.chat(Turn::new()).await.unwrap_err().is_gone());
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.ended_by, vec![(EndReason::IdleTimeout, 1)]);
    });
}

#[test]
fn activity_postpones_the_idle_deadline_and_the_ttl_ends_a_busy_session() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let options = OpenOptions::new("bob").expiry(policy(Some(10 * SEC), Some(60 * SEC)));
        let session = f.engine.open_with(options).await.unwrap();
        let opened = tokio::time::Instant::now();
        // Busy every 5 s: never idle for 10 s, so only the TTL can end it.
        let mut turns = 0;
        while session.chat(Turn::new()).await.is_ok() {
            turns += 1;
            tokio::time::sleep(5 * SEC).await;
        }
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::TtlExpired);
        let deadline = end.deadline.unwrap();
        assert_eq!(deadline.kind, DeadlineKind::Ttl);
        assert_eq!(deadline.at, opened.into_std() + 60 * SEC);
        assert!(turns >= 12, "it took turns for its whole life ({turns})");
        f.shutdown_clean().await;
    });
}

#[test]
fn touch_keeps_a_session_alive_and_costs_no_deadline_filing() {
    on_paused_time(|| async {
        let f = start(no_expiry()).await;
        let options = OpenOptions::new("carol").expiry(policy(Some(10 * SEC), None));
        let session = f.engine.open_with(options).await.unwrap();
        for _ in 0..100 {
            tokio::time::sleep(3 * SEC).await;
            session.touch().await.unwrap();
        }
        // 300 s of life on a 10 s idle timeout: still here, filed exactly once.
        assert_eq!(session.info().await.unwrap().state, State::Established);
        let stats = f.stats().await;
        assert_eq!(stats.scheduled_deadlines, 1);
        assert_eq!(stats.ended, 0);
        f.shutdown_clean().await;
    });
}

#[test]
fn the_configured_default_applies_and_never_means_never() {
    on_paused_time(|| async {
        let mut config = EngineConfig::default();
        config.expiry.idle_timeout = Some(std::time::Duration::from_secs(2));
        config.expiry.ttl = None;
        let mut f = start(config).await;
        let by_default = f.engine.open("dave").await.unwrap();
        let forever = f
            .engine
            .open_with(OpenOptions::new("dave").expiry(ExpiryPolicy::NEVER))
            .await
            .unwrap();
        let end = f.next_end().await;
        assert_eq!(
            (end.id, end.reason),
            (by_default.id(), EndReason::IdleTimeout)
        );
        tokio::time::sleep(Duration::from_secs(7 * 24 * 3600)).await;
        assert_eq!(forever.info().await.unwrap().state, State::Established);
        f.shutdown_clean().await;
    });
}

#[test]
fn a_zero_timeout_is_refused_at_open_and_nothing_opens() {
    on_paused_time(|| async {
        let f = start(no_expiry()).await;
        let err = f
            .engine
            .open_with(OpenOptions::new("eve").expiry(policy(Some(Duration::ZERO), None)))
            .await
            .unwrap_err();
        assert!(matches!(err, OpenError::InvalidOptions(_)), "{err}");
        assert!(err.to_string().contains("idle_timeout"), "{err}");
        assert_eq!(f.stats().await.opened, 0);
        f.shutdown_clean().await;
    });
}

#[test]
fn many_sessions_expire_in_deadline_order_each_exactly_once() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let mut ids = Vec::new();
        for i in 0..200u64 {
            let ttl = Duration::from_millis(1_000 + (i * 7919) % 2_000);
            let options = OpenOptions::new("frank").expiry(policy(None, Some(ttl)));
            let session = f.engine.open_with(options).await.unwrap();
            session.allocate(4096).await.unwrap();
            ids.push(session.id());
            std::mem::forget(session); // keep it from ending as disconnected
        }
        let (mut last, mut ended, mut released) = (None, Vec::new(), 0);
        while released < 200 {
            match f.next(EventKinds::ENDED | EventKinds::RELEASED).await {
                LifecycleEvent::Ended(end) => {
                    assert_eq!(end.reason, EndReason::TtlExpired);
                    let at = end.deadline.unwrap().at;
                    assert!(last.is_none_or(|l| l <= at), "ends come in deadline order");
                    last = Some(at);
                    ended.push(end.id);
                }
                _ => released += 1,
            }
        }
        ended.sort();
        ids.sort();
        assert_eq!(ended, ids, "each session ended exactly once");
        assert_eq!(f.pool.stats().live_buffers, 0);
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.ended, 200);
        assert_eq!(stats.scheduled_deadlines, 0);
    });
}
