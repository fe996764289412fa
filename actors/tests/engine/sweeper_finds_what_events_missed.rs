//! The sweeper is a safety net: in a healthy run it finds nothing; when an
//! end gets stuck in Closing or GPU memory outlives its session, it repairs
//! it and counts an incident.

use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const SEC: Duration = Duration::from_secs(1);

fn sweeping_every(secs: f64, drain_secs: f64) -> EngineConfig {
    let mut config = no_expiry();
    config.expiry.sweep_interval = Duration::from_secs_f64(secs);
    config.leases.drain_timeout = Duration::from_secs_f64(drain_secs);
    config
}

#[test]
fn a_healthy_run_reports_zero() {
    on_paused_time(|| async {
        let f = start(sweeping_every(1.0, 5.0)).await;
        let mut sessions = Vec::new();
        for i in 0..50 {
            let s = f.engine.open(format!("user-{i}")).await.unwrap();
            s.allocate(4096).await.unwrap();
            sessions.push(s);
        }
        for s in sessions.drain(..25) {
            s.close().await.unwrap();
        }
        settle(60 * SEC).await;
        let stats = f.stats().await;
        assert!(stats.sweeps >= 50, "the sweeper ran ({})", stats.sweeps);
        assert_eq!((stats.sweeper_incidents, stats.incidents), (0, 0));
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.sweeper_incidents, 0);
    });
}

#[test]
fn a_session_stuck_in_closing_is_forced_to_end() {
    on_paused_time(|| async {
        let mut f = start(sweeping_every(10.0, 5.0)).await;
        let session = f.engine.open("alice").await.unwrap();
        session.allocate(MIB).await.unwrap();
        session.inject_lost_drain_timer().await;
        let _stream = session.lease().await.unwrap();
        let receipt = session.close().await.unwrap(); // resolves only because the sweeper acts
        assert_eq!(receipt.buffers, 1);
        let end = f.next_end().await;
        assert_eq!((end.reason, end.drain.forced), (EndReason::Closed, 1));
        assert!(end.drain.waited > 5 * SEC, "past its drain deadline");
        let stats = f.stats().await;
        assert_eq!((stats.sweeper_incidents, stats.incidents), (1, 1));
        f.shutdown_clean().await;
    });
}

#[test]
fn memory_whose_session_is_gone_is_released() {
    on_paused_time(|| async {
        let f = start(sweeping_every(10.0, 5.0)).await;
        let live = f.engine.open("bob").await.unwrap();
        live.allocate(MIB).await.unwrap();
        // Memory the registry knows nothing about: a leak the events missed.
        let ghost = SessionId::random();
        let (reply, allocated) = tokio::sync::oneshot::channel();
        let request = AllocRequest {
            session: ghost,
            id: AllocationId::next(),
            bytes: 3 * MIB,
        };
        f.pool.allocate(request, reply);
        allocated.await.unwrap().unwrap();
        assert_eq!(f.pool.stats().live_buffers, 2);

        settle(35 * SEC).await; // two passes confirm it, the third is spare
        assert_eq!(
            f.pool.stats().live_buffers,
            1,
            "the orphan is gone, the live session's buffer is not"
        );
        assert_eq!(f.pool.stats().live_bytes, MIB);
        let stats = f.stats().await;
        assert_eq!(stats.sweeper_incidents, 1);
        assert_eq!(live.info().await.unwrap().buffers, 1);
        f.shutdown_clean().await;
    });
}
