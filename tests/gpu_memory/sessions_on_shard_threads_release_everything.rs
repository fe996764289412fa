//! Three registry shards, each on its own engine thread, with real wgpu
//! buffers: sessions opened from many tasks at once land on every shard, and
//! ends of every kind, racing from several threads (a close by handle, a
//! close by id from another task, a dropped handle, a TTL), each end every
//! session exactly once and give every buffer back, by wgpu's own counters.
//! Whatever this machine's core count, the default being one shard per core.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use sessionbus::config::Config;
use sessionbus::*;
use sessionbus_testkit::*;

const SHARDS: usize = 3;

fn shard_of(id: SessionId) -> usize {
    ((id.as_u128() >> 64) as u64 % SHARDS as u64) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_racing_from_many_threads_release_every_buffer_once() {
    let mut config = Config::default();
    config.sessions.shards = SHARDS;
    config.expiry.idle_timeout = None;
    let mut h = start_with(config).await;
    let rt = &h.rt;
    // 0..100 closed by handle, 100..200 closed by id, 200..250 dropped,
    // 250..300 expire on a TTL.
    let sessions = join_all((0..300).map(|i| async move {
        let mut options = OpenOptions::new(format!("user-{i}"));
        if i >= 250 {
            options = options.expiry(ExpiryPolicy {
                idle_timeout: None,
                ttl: Some(Duration::from_millis(2_000 + (i as u64 % 30))),
            });
        }
        let session = rt.open_with(options).await.unwrap();
        session.allocate(64 * KIB).await.unwrap();
        session.allocate_for_context(16 * KIB).await.unwrap();
        session
    }))
    .await;
    let shards: HashSet<_> = sessions.iter().map(|s| shard_of(s.id())).collect();
    assert_eq!(shards.len(), SHARDS, "sessions on every shard");

    let mut sessions = sessions.into_iter();
    let by_handle: Vec<_> = sessions.by_ref().take(100).collect();
    let by_id: Vec<_> = sessions.by_ref().take(100).collect();
    let dropped: Vec<_> = sessions.by_ref().take(50).collect();
    let expiring: Vec<_> = sessions.collect();
    let ids = |list: &[SessionHandle]| list.iter().map(|s| s.id()).collect::<Vec<_>>();
    let (handle_ids, id_ids, dropped_ids, ttl_ids) =
        (ids(&by_handle), ids(&by_id), ids(&dropped), ids(&expiring));
    let engine = h.rt.engine();
    let closing_by_id = tokio::spawn({
        let engine = engine.clone();
        let targets: Vec<_> = id_ids.clone();
        async move {
            let operator = Caller::Operator("ops".into());
            join_all(
                targets
                    .into_iter()
                    .map(|id| engine.close(id, operator.clone())),
            )
            .await
        }
    });
    let closing_by_handle =
        tokio::spawn(async move { join_all(by_handle.iter().map(|s| s.close())).await });
    drop(dropped);
    for receipt in closing_by_handle.await.unwrap() {
        assert_eq!(receipt.unwrap().buffers, 2);
    }
    for receipt in closing_by_id.await.unwrap() {
        assert_eq!(receipt.unwrap().buffers, 2);
    }
    drop(by_id);

    let events = h.until_released(300).await;
    let ends = ends_by_session(&events);
    assert_eq!(ends.len(), 300, "every session ended");
    for id in &handle_ids {
        assert_eq!(ends[id], vec![EndReason::Closed]);
    }
    for id in &id_ids {
        assert_eq!(ends[id], vec![EndReason::Closed]);
    }
    for id in &dropped_ids {
        assert_eq!(ends[id], vec![EndReason::Disconnected]);
    }
    for id in &ttl_ids {
        assert_eq!(ends[id], vec![EndReason::TtlExpired]);
    }
    drop(expiring);
    h.assert_gpu_at_baseline();
    let stats = h.rt.stats().await.unwrap();
    assert_eq!((stats.live, stats.ended, stats.released), (0, 300, 300));
    assert_eq!((stats.released_buffers, stats.budget.device_used), (600, 0));
    h.shutdown_at_baseline().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_shutdown_of_every_shard_reports_nothing_unfinished() {
    let mut config = Config::default();
    config.sessions.shards = SHARDS;
    let h = start_with(config).await;
    let rt = &h.rt;
    let sessions = join_all((0..300).map(|i| async move {
        let session = rt.open(format!("user-{i}")).await.unwrap();
        for _ in 0..4 {
            session.allocate(64 * KIB).await.unwrap();
        }
        session
    }))
    .await;
    // Every shard ends its sessions at once; they finish at different times,
    // and one report says how the whole engine finished.
    let report = h.shutdown_at_baseline().await;
    let sessions_report = report.sessions;
    assert!(sessions_report.completed, "{sessions_report:?}");
    assert_eq!(
        (
            sessions_report.sessions_unfinished,
            sessions_report.releases_unfinished,
            sessions_report.bytes_unfinished
        ),
        (0, 0, 0),
        "complete, so nothing is unfinished: {sessions_report:?}"
    );
    assert_eq!(sessions_report.sessions_ended, 300);
    assert_eq!(sessions_report.buffers_released, 1200);
    drop(sessions);
}
