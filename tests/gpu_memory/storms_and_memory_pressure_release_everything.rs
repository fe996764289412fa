//! Storms and memory pressure on a real wgpu adapter: a mass disconnect,
//! paced or not, ends every session once with zero errors; budgets evict and
//! offload idle sessions; offloaded data comes back bit for bit; and after
//! each of them wgpu's own counters are back at baseline.

use std::time::Duration;

use futures::future::join_all;
use sessionbus::config::*;
use sessionbus::*;
use sessionbus_testkit::*;

/// `n` sessions holding `buffers` buffers of 64 KiB each.
async fn population(h: &Harness, n: usize, buffers: usize) -> Vec<SessionHandle> {
    let opened = join_all((0..n).map(|i| async move {
        let session = h.rt.open(format!("user-{i}")).await.unwrap();
        for _ in 0..buffers {
            session.allocate(64 * KIB).await.unwrap();
        }
        session
    }));
    opened.await
}

#[tokio::test]
async fn a_mass_disconnect_ends_every_session_once_with_zero_errors() {
    let mut h = start().await;
    let sessions = population(&h, 500, 4).await;
    let ids: Vec<_> = sessions.iter().map(|s| s.id()).collect();
    drop(sessions); // every client goes away at once
    let events = h.until_released(500).await;
    let ends = ends_by_session(&events);
    assert_eq!(ends.len(), 500);
    for id in &ids {
        assert_eq!(ends[id], vec![EndReason::Disconnected]);
    }
    for event in &events {
        if let LifecycleEvent::Released(receipt) = event {
            assert_eq!((receipt.buffers, receipt.error.as_deref()), (4, None));
        }
    }
    h.assert_gpu_at_baseline();
    let stats = h.rt.stats().await.unwrap();
    assert_eq!(
        stats.release_queue,
        ReleaseQueueStats::default(),
        "nothing left queued"
    );
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn a_paced_storm_gives_every_buffer_back() {
    let config = Config {
        release: ReleaseConfig::fixed(PaceUnit::Buffers, 20_000, 64, 16),
        ..Config::default()
    };
    let h = start_with(config).await;
    let sessions = population(&h, 300, 4).await;
    let receipts = join_all(sessions.iter().map(|s| s.close())).await;
    let paced = receipts
        .iter()
        .map(|r| r.as_ref().expect("no close fails"))
        .filter(|r| r.paced_for > Duration::ZERO)
        .count();
    assert!(paced > 0, "1 200 buffers past a burst of 64 were paced");
    h.assert_gpu_at_baseline();
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn a_full_device_budget_evicts_the_least_recently_active_idle_session() {
    let mut config = Config::default();
    config.sessions.max_session_memory = 256 * KIB;
    config.budget.device_memory = Some(512 * KIB);
    config.budget.when_exhausted = WhenExhausted::Evict;
    config.budget.evict_idle = std::time::Duration::from_millis(50);
    config.budget.offload = false;
    let mut h = start_with(config).await;
    let old = h.rt.open("old").await.unwrap();
    old.allocate(256 * KIB).await.unwrap();
    let recent = h.rt.open("recent").await.unwrap();
    recent.allocate(256 * KIB).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    recent.touch().await.unwrap();

    let newcomer = h.rt.open("newcomer").await.unwrap();
    newcomer.allocate(256 * KIB).await.unwrap();
    let events = h.until_released(1).await;
    let ends = ends_by_session(&events);
    assert_eq!(ends[&old.id()], vec![EndReason::Evicted]);
    assert_eq!(recent.state(), State::Established);
    drop((old, recent, newcomer));
    h.until_released(2).await;
    h.assert_gpu_at_baseline();
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn an_offloaded_session_gets_its_buffers_back_bit_for_bit() {
    let h = start().await;
    let session = h.rt.open("alice").await.unwrap();
    let mut written = Vec::new();
    for (i, size) in [4 * KIB, 64 * KIB, 300 * KIB].into_iter().enumerate() {
        let buffer = session.allocate(size).await.unwrap();
        let data: Vec<u8> = (0..size as usize)
            .map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8 * 13))
            .collect();
        session
            .write_buffer(buffer.id, 0, data.clone())
            .await
            .unwrap();
        written.push((buffer.id, data));
    }
    // A read waits for the device, so the writes' staging memory is gone
    // before the counters are read.
    for (id, data) in &written {
        assert!(
            session.read_buffer(*id).await.unwrap() == *data,
            "buffer {id} as written"
        );
    }
    let with_buffers = h.rt.gpu_counters().expect("the runtime's own wgpu pool");
    assert_eq!(with_buffers.buffers, h.baseline.buffers + 3);
    let report = session.offload().await.unwrap();
    assert_eq!(report.buffers.buffers, 3);
    assert_eq!(
        h.rt.gpu_counters().expect("the runtime's own wgpu pool"),
        h.baseline,
        "offloaded buffers are gone from the GPU (wgpu's counters)"
    );

    session.chat(Turn::new()).await.unwrap();
    assert_eq!(
        h.rt.gpu_counters().expect("the runtime's own wgpu pool"),
        with_buffers,
        "restored before the turn"
    );
    for (id, data) in &written {
        assert!(
            session.read_buffer(*id).await.unwrap() == *data,
            "buffer {id} changed"
        );
    }
    session.close().await.unwrap();
    h.assert_gpu_at_baseline();
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn budgets_that_cannot_hold_one_buffer_are_refused_at_start() {
    let mut config = Config::default();
    config.sessions.max_session_memory = 1;
    config.budget.device_memory = Some(1);
    let err = Runtime::start(config).await.unwrap_err();
    // wgpu rounds every buffer to 4 bytes at least, so a 1-byte budget holds none.
    assert!(err.to_string().contains("budget.device_memory"), "{err}");
    assert!(err.to_string().contains("single buffer"), "{err}");
}
