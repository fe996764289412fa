//! Ending a session waits for its leases up to the drain deadline; a remote
//! lease that stops heartbeating is revoked; lease mistakes are clear errors
//! that leave the session alone. All on paused time.

use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const SEC: Duration = Duration::from_secs(1);

fn leases(drain_secs: f64, heartbeat_secs: f64, missed: u32) -> EngineConfig {
    let mut config = no_expiry();
    config.leases.drain_timeout = Duration::from_secs_f64(drain_secs);
    config.leases.heartbeat_interval = Duration::from_secs_f64(heartbeat_secs);
    config.leases.missed_heartbeats = missed;
    config
}

#[test]
fn close_refuses_new_work_at_once_and_waits_for_the_lease() {
    on_paused_time(|| async {
        let mut f = start(leases(30.0, 5.0, 3)).await;
        let session = f.engine.open("alice").await.unwrap();
        session.allocate(MIB).await.unwrap();
        let stream = session.lease().await.unwrap();

        let closing = actix::spawn({
            let session = session.clone();
            async move { session.close().await }
        });
        settle(Duration::from_millis(1)).await;
        assert_eq!(session.state(), State::Closing);
        let refused = session.chat(Turn::new()).await.unwrap_err();
        assert!(refused.is_gone(), "{refused}");
        assert_eq!(
            f.pool.stats().live_buffers,
            1,
            "memory stays while the stream runs"
        );

        settle(10 * SEC).await; // the stream finishes well inside the drain deadline
        stream.release().await.unwrap();
        let receipt = closing.await.unwrap().unwrap();
        assert_eq!((receipt.reason, receipt.buffers), (EndReason::Closed, 1));
        let end = f.next_end().await;
        assert_eq!(end.drain.leases, 1);
        assert!(!end.drain.was_forced());
        assert!(end.drain.waited >= 10 * SEC);
        f.shutdown_clean().await;
    });
}

#[test]
fn the_drain_deadline_forces_the_end_and_says_so() {
    on_paused_time(|| async {
        let mut f = start(leases(30.0, 5.0, 3)).await;
        let session = f.engine.open("bob").await.unwrap();
        session.allocate(MIB).await.unwrap();
        let stuck_stream = session.lease().await.unwrap();
        let receipt = session.close().await.unwrap();
        assert_eq!(receipt.buffers, 1);
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::Closed);
        assert_eq!((end.drain.leases, end.drain.forced), (1, 1));
        assert!(end.drain.waited >= 30 * SEC);
        // The stream finds out late: returning the lease now is harmless.
        assert!(stuck_stream.release().await.is_ok());
        assert_eq!(f.pool.stats().live_buffers, 0);
        f.shutdown_clean().await;
    });
}

#[test]
fn a_lease_counts_as_activity_so_a_streaming_session_does_not_idle_out() {
    on_paused_time(|| async {
        let mut f = start(leases(30.0, 5.0, 3)).await;
        let options = OpenOptions::new("carol").expiry(policy(Some(10 * SEC), None));
        let session = f.engine.open_with(options).await.unwrap();
        let stream = session.lease().await.unwrap();
        settle(60 * SEC).await; // a long generation, no turns
        assert_eq!(session.info().await.unwrap().state, State::Established);
        stream.release().await.unwrap();
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::IdleTimeout);
        f.shutdown_clean().await;
    });
}

#[test]
fn heartbeats_keep_a_remote_lease_and_silence_revokes_it() {
    on_paused_time(|| async {
        let mut f = start(leases(30.0, 1.0, 3)).await;
        let session = f.engine.open("dave").await.unwrap();
        session.allocate(MIB).await.unwrap();
        let grant = session.lease_remote().await.unwrap();
        assert_eq!(grant.heartbeat_interval, SEC);
        assert_eq!(grant.revoked_after, 3 * SEC);
        for _ in 0..20 {
            settle(SEC).await;
            session.heartbeat(grant.id).await.unwrap();
        }
        assert_eq!(f.stats().await.leases_revoked, 0);
        // The holder dies: no more heartbeats.
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::LeaseLost);
        let receipt = f.next_release().await;
        assert_eq!(receipt.buffers, 1);
        let err = session.heartbeat(grant.id).await.unwrap_err();
        assert!(err.is_gone(), "{err}");
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.leases_revoked, 1);
        assert_eq!(stats.ended_by, vec![(EndReason::LeaseLost, 1)]);
    });
}

#[test]
fn revocation_can_spare_the_session_when_configured() {
    on_paused_time(|| async {
        let mut config = leases(30.0, 1.0, 2);
        config.leases.end_session_on_lease_lost = false;
        let f = start(config).await;
        let session = f.engine.open("erin").await.unwrap();
        let grant = session.lease_remote().await.unwrap();
        settle(10 * SEC).await;
        let err = session.heartbeat(grant.id).await.unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::Lease {
                    source: LeaseError::Revoked { missed: 2, .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(session.info().await.unwrap().state, State::Established);
        assert_eq!(f.stats().await.leases_revoked, 1);
        f.shutdown_clean().await;
    });
}

#[test]
fn lease_mistakes_are_clear_errors_and_leave_the_session_alone() {
    on_paused_time(|| async {
        let f = start(leases(30.0, 1.0, 3)).await;
        let session = f.engine.open("frank").await.unwrap();
        let grant = session.lease_remote().await.unwrap();
        session.release_lease(grant.id).await.unwrap();
        let twice = session.release_lease(grant.id).await.unwrap_err();
        assert!(
            matches!(
                twice,
                SessionError::Lease {
                    source: LeaseError::AlreadyReleased { .. },
                    ..
                }
            ),
            "{twice}"
        );
        assert!(twice.to_string().contains("already released"), "{twice}");
        let stranger = LeaseId(u64::MAX);
        let unknown = session.heartbeat(stranger).await.unwrap_err();
        assert!(
            matches!(
                unknown,
                SessionError::Lease {
                    source: LeaseError::Unknown { .. },
                    ..
                }
            ),
            "{unknown}"
        );
        // Someone else's handle cannot touch the lease either.
        let mallory = f.engine.attach(session.id(), Owner::new("mallory")).await;
        assert!(matches!(mallory, Err(SessionError::Unauthorized { .. })));
        assert_eq!(session.info().await.unwrap().state, State::Established);
        session.chat(Turn::new()).await.unwrap();
        let stats = f.shutdown_clean().await;
        assert_eq!((stats.ended, stats.incidents), (1, 0));
    });
}

#[test]
fn a_dropped_lease_guard_returns_the_lease() {
    on_paused_time(|| async {
        let mut f = start(leases(30.0, 5.0, 3)).await;
        let session = f.engine.open("grace").await.unwrap();
        let stream = session.lease().await.unwrap();
        let closing = actix::spawn({
            let session = session.clone();
            async move { session.close().await }
        });
        settle(SEC).await;
        drop(stream); // the streaming task ended without calling release
        closing.await.unwrap().unwrap();
        let end = f.next_end().await;
        assert!(!end.drain.was_forced());
        assert!(end.drain.waited < 30 * SEC);
        f.shutdown_clean().await;
    });
}
