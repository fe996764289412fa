//! Passivation on real wgpu buffers, on shard threads: sessions idle past
//! `sessions.passivate_after` park (their actors stop, their buffers stay on
//! the device), come back with their bytes intact when a message, an
//! offload, a close, an expiry or a device-loss end reaches them, and every
//! end releases every buffer once, by wgpu's own counters.

use std::time::Duration;

use futures::future::join_all;
use sessionbus::config::Config;
use sessionbus::*;
use sessionbus_testkit::*;

const PASSIVATE_AFTER: Duration = Duration::from_millis(100);

fn passivating() -> Config {
    let mut config = Config::default();
    config.sessions.shards = 3;
    config.sessions.passivate_after = Some(PASSIVATE_AFTER);
    config.expiry.idle_timeout = None;
    config
}

/// Waits (polling the engine's counts, no timing assertion) until `parked` sessions are parked.
async fn until_parked(rt: &Runtime, parked: u64) -> PassivationStats {
    until_stats(rt, "sessions parked", |s| s.passivation.parked == parked)
        .await
        .passivation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sessions_come_back_intact_and_every_end_releases_every_buffer() {
    let mut h = start_with(passivating()).await;
    let rt = &h.rt;
    let sessions = join_all((0..120).map(|i| async move {
        let mut options = OpenOptions::new(format!("user-{i}"));
        if i >= 100 {
            // 100..120 expire on a TTL well after they parked.
            options = options.expiry(ExpiryPolicy {
                idle_timeout: None,
                ttl: Some(Duration::from_millis(1_500)),
            });
        }
        let session = rt.open_with(options).await.unwrap();
        let buffer = session.allocate(16 * KIB).await.unwrap();
        let data = pattern(i, 16 * KIB as usize);
        session
            .write_buffer(buffer.id, 0, data.clone())
            .await
            .unwrap();
        (session, buffer.id, data)
    }))
    .await;
    until_parked(rt, 120).await;
    let held = rt.gpu_counters().unwrap();
    assert!(
        held.buffers > h.baseline.buffers,
        "parked sessions keep their buffers"
    );

    // 0..40: a read brings each back, bytes intact, from many tasks at once.
    join_all(sessions[..40].iter().map(|(session, id, data)| async move {
        assert_eq!(session.read_buffer(*id).await.unwrap(), *data);
    }))
    .await;
    // 40..60: offloaded while parked (to host memory), then read back.
    for (session, id, data) in &sessions[40..60] {
        session.offload().await.unwrap();
        assert_eq!(session.read_buffer(*id).await.unwrap(), *data);
    }
    let (first, rest) = sessions.split_at(60);
    let (by_handle, rest) = rest.split_at(20); // 60..80: closed by handle once parked again
    let (dropped, expiring) = rest.split_at(20); // 80..100 dropped; 100..120 expire
    until_parked(rt, 120).await;
    for (session, _, _) in by_handle {
        assert_eq!(session.close().await.unwrap().buffers, 1);
    }
    let dropped_ids: Vec<_> = dropped.iter().map(|(s, _, _)| s.id()).collect();
    let expiring_ids: Vec<_> = expiring.iter().map(|(s, _, _)| s.id()).collect();
    let (first, dropped, expiring) = (first.to_vec(), dropped.to_vec(), expiring.to_vec());
    drop(sessions);
    drop(dropped);
    let events = h.until_released(60).await;
    let ends = ends_by_session(&events);
    for id in &dropped_ids {
        assert_eq!(ends[id], vec![EndReason::Disconnected]);
    }
    for id in &expiring_ids {
        assert_eq!(ends[id], vec![EndReason::TtlExpired]);
    }
    drop(expiring);

    // 0..60, parked or not, end at shutdown.
    let stats = h.rt.stats().await.unwrap();
    assert_eq!((stats.live, stats.ended, stats.incidents), (60, 60, 0));
    assert!(stats.passivation.revivals >= 120, "{:?}", stats.passivation);
    let report = h.shutdown_at_baseline().await;
    assert_eq!(report.sessions.sessions_ended, 60);
    assert_eq!(report.sessions.stats.passivation.parked, 0);
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_loss_ends_parked_sessions_and_gives_back_every_buffer() {
    let h = start_with(passivating()).await;
    let rt = &h.rt;
    let sessions = join_all((0..30).map(|i| async move {
        let session = rt.open(format!("user-{i}")).await.unwrap();
        session.allocate(8 * KIB).await.unwrap();
        session
    }))
    .await;
    until_parked(rt, 30).await;
    assert_eq!(rt.engine().end_sessions_on_device_loss().await, Ok(30));
    for session in &sessions {
        let receipt = session.close().await.unwrap();
        assert_eq!(
            (receipt.reason, receipt.buffers),
            (EndReason::DeviceLost, 1)
        );
    }
    h.assert_gpu_at_baseline();
    drop(sessions);
    h.shutdown_at_baseline().await;
}
