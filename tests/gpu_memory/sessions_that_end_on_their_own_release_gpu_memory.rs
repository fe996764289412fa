//! Expiry, context resets, lease drains and revocations, and the sweeper, on
//! a real wgpu adapter: whatever ends a session or its context, wgpu's own
//! counters come back to baseline. Short real timeouts; the tests wait for
//! events, never for a fixed time.

use std::time::Duration;

use sessionbus::config::*;
use sessionbus::*;
use sessionbus_testkit::*;

fn short_timeouts() -> Config {
    let mut config = Config::default();
    config.expiry.idle_timeout = Some(std::time::Duration::from_secs_f64(0.05));
    config.expiry.ttl = Some(std::time::Duration::from_secs_f64(0.2));
    config.leases.drain_timeout = std::time::Duration::from_secs_f64(0.1);
    config.leases.heartbeat_interval = std::time::Duration::from_secs_f64(0.02);
    config.leases.missed_heartbeats = 2;
    config.expiry.sweep_interval = std::time::Duration::from_secs_f64(0.05);
    config
}

#[tokio::test]
async fn idle_and_ttl_expiry_release_every_buffer_once() {
    let mut h = start_with(short_timeouts()).await;
    let mut sessions = Vec::new();
    for i in 0..40 {
        let ttl_only = i % 2 == 0;
        let options = if ttl_only {
            OpenOptions::new(format!("user-{i}")).expiry(ExpiryPolicy {
                idle_timeout: None,
                ttl: Some(Duration::from_millis(30 + i)),
            })
        } else {
            OpenOptions::new(format!("user-{i}"))
        };
        let session = h.rt.open_with(options).await.unwrap();
        session.allocate(64 * KIB).await.unwrap();
        session.allocate_for_context(16 * KIB).await.unwrap();
        sessions.push(session);
    }
    let events = h.until_released(40).await;
    let ends = ends_by_session(&events);
    assert_eq!(ends.len(), 40);
    for (i, session) in sessions.iter().enumerate() {
        let expected = if i % 2 == 0 {
            EndReason::TtlExpired
        } else {
            EndReason::IdleTimeout
        };
        assert_eq!(ends[&session.id()], vec![expected], "session {i}");
    }
    for event in &events {
        if let LifecycleEvent::Released(receipt) = event {
            let deadline = receipt.deadline.expect("an expiry carries its deadline");
            assert!(receipt.released_at >= deadline.at);
            assert_eq!(receipt.buffers, 2);
        }
    }
    h.assert_gpu_at_baseline();
    let stats = h.rt.stats().await.unwrap();
    assert_eq!((stats.incidents, stats.sweeper_incidents), (0, 0));
    drop(sessions);
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn a_context_reset_frees_exactly_the_context_buffers_on_the_gpu() {
    let mut h = start().await;
    let session = h.rt.open("alice").await.unwrap();
    session.allocate(MIB).await.unwrap();
    for _ in 0..3 {
        session.allocate_for_context(256 * KIB).await.unwrap();
    }
    let on_topic = vec![1.0, 0.1, 0.0, 0.0];
    let off_topic = vec![0.0, 0.0, 1.0, 0.1];
    session.chat(Turn::new().embedding(on_topic)).await.unwrap();
    let before = h.rt.gpu_counters().expect("the runtime's own wgpu pool");
    let ack = session
        .chat(Turn::new().embedding(off_topic))
        .await
        .unwrap();
    assert!(ack.context.is_stale());
    let reset = loop {
        match h.events.recv().await.expect("bus open") {
            LifecycleEvent::ContextReset(reset) => break reset,
            _ => continue,
        }
    };
    assert_eq!((reset.buffers, reset.bytes), (3, 768 * KIB));
    let after = h.rt.gpu_counters().expect("the runtime's own wgpu pool");
    assert_eq!(
        before.buffers - after.buffers,
        3,
        "wgpu freed the three context buffers"
    );
    assert_eq!(
        after.buffers - h.baseline.buffers,
        1,
        "the session's own buffer stays"
    );
    assert_eq!(session.info().await.unwrap().state, State::Established);
    let receipt = session.close().await.unwrap();
    assert_eq!((receipt.buffers, receipt.bytes), (1, MIB));
    h.assert_gpu_at_baseline();
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn drained_forced_and_revoked_leases_all_end_with_memory_back() {
    let mut config = short_timeouts();
    config.expiry.idle_timeout = None;
    config.expiry.ttl = None;
    let mut h = start_with(config).await;
    // Drained cleanly: the stream returns its lease during the close.
    let drained = h.rt.open("a").await.unwrap();
    drained.allocate(MIB).await.unwrap();
    let stream = drained.lease().await.unwrap();
    let closing = tokio::spawn({
        let drained = drained.clone();
        async move { drained.close().await }
    });
    stream.release().await.unwrap();
    let clean = closing.await.unwrap().unwrap();
    // Forced: the stream never returns its lease.
    let forced = h.rt.open("b").await.unwrap();
    forced.allocate(MIB).await.unwrap();
    let _stuck = forced.lease().await.unwrap();
    let forced_receipt = forced.close().await.unwrap();
    // Revoked: a remote holder that stops heartbeating.
    let remote = h.rt.open("c").await.unwrap();
    remote.allocate(MIB).await.unwrap();
    remote.lease_remote().await.unwrap();

    let events = h.until_released(3).await;
    assert_eq!((clean.buffers, forced_receipt.buffers), (1, 1));
    let ends = ends_by_session(&events);
    assert_eq!(ends[&remote.id()], vec![EndReason::LeaseLost]);
    for event in &events {
        if let LifecycleEvent::Ended(end) = event {
            let expect_forced = end.id == forced.id();
            assert_eq!(end.drain.was_forced(), expect_forced, "{}", end.id);
        }
    }
    h.assert_gpu_at_baseline();
    assert_eq!(h.rt.stats().await.unwrap().leases_revoked, 1);
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn the_sweeper_releases_gpu_memory_whose_session_is_gone() {
    let mut config = short_timeouts();
    config.expiry.idle_timeout = None;
    config.expiry.ttl = None;
    let h = start_with(config).await;
    let live = h.rt.open("bob").await.unwrap();
    live.allocate(MIB).await.unwrap();
    h.rt.engine()
        .inject_orphan_allocation(4 * MIB)
        .await
        .unwrap();
    assert_eq!(
        h.rt.gpu_counters()
            .expect("the runtime's own wgpu pool")
            .buffers
            - h.baseline.buffers,
        2
    );
    while h.rt.stats().await.unwrap().sweeper_incidents == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The release is logged when the pool answers; wait for wgpu to show it.
    while h
        .rt
        .gpu_counters()
        .expect("the runtime's own wgpu pool")
        .buffers
        - h.baseline.buffers
        > 1
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        live.info().await.unwrap().buffers,
        1,
        "the live session kept its buffer"
    );
    live.close().await.unwrap();
    h.assert_gpu_at_baseline();
    assert_eq!(h.rt.stats().await.unwrap().sweeper_incidents, 1);
    h.shutdown_at_baseline().await;
}
