//! Soft eviction: an idle session's buffers go to host memory and leave the
//! GPU; the session lives on, and its next message brings them back, bit for
//! bit, before it is handled. An offload never loses data: it is refused while
//! work is in flight, and a restore that cannot get memory keeps the data in
//! host memory. On paused time, on the in-memory pool.

use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const SEC: Duration = Duration::from_secs(1);
const KIB: u64 = 1 << 10;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8).rotate_left(3))
        .collect()
}

fn with_budget(device: Option<u64>, when: WhenExhausted) -> EngineConfig {
    let mut config = no_expiry();
    config.sessions.max_session_memory = 256 * KIB; // what `filled` allocates
    config.budget.device_memory = device;
    config.budget.when_exhausted = when;
    config.budget.evict_idle = std::time::Duration::from_millis(1_000);
    config.budget.offload = true;
    config
}

/// A session holding two buffers filled with known bytes.
async fn filled(
    f: &Fixture,
    owner: &str,
    seed: u8,
) -> (SessionHandle, Vec<(AllocationId, Vec<u8>)>) {
    let session = f.engine.open(owner).await.unwrap();
    let mut buffers = Vec::new();
    for (i, size) in [64 * KIB, 192 * KIB].into_iter().enumerate() {
        let buffer = session.allocate(size).await.unwrap();
        let data = pattern(seed + i as u8, size as usize);
        session
            .write_buffer(buffer.id, 0, data.clone())
            .await
            .unwrap();
        buffers.push((buffer.id, data));
    }
    (session, buffers)
}

async fn assert_intact(session: &SessionHandle, buffers: &[(AllocationId, Vec<u8>)]) {
    for (id, data) in buffers {
        let read = session.read_buffer(*id).await.unwrap();
        assert!(read == *data, "buffer {id} came back changed");
    }
}

#[test]
fn an_offloaded_session_lives_on_and_its_next_message_brings_the_data_back() {
    on_paused_time(|| async {
        let mut f = start(with_budget(None, WhenExhausted::Evict)).await;
        let (session, buffers) = filled(&f, "alice", 7).await;
        let report = session.offload().await.unwrap();
        assert_eq!(
            (report.buffers.buffers, report.buffers.bytes),
            (2, 256 * KIB)
        );
        assert_eq!(report.kv_blocks, 0, "no KV blocks configured");
        let pool = f.pool.stats();
        assert_eq!((pool.live_buffers, pool.offloaded_buffers), (0, 2));
        assert_eq!(
            f.stats().await.budget.device_used,
            0,
            "the GPU bytes are refunded"
        );
        assert_eq!(session.state(), State::Established);

        session.chat(Turn::new()).await.unwrap();
        let pool = f.pool.stats();
        assert_eq!(
            (pool.live_buffers, pool.offloaded_buffers),
            (2, 0),
            "back before the turn"
        );
        assert_intact(&session, &buffers).await;
        let stats = f.stats().await;
        assert_eq!((stats.pressure.offloaded, stats.pressure.restored), (1, 1));
        assert_eq!(stats.budget.device_used, 256 * KIB);

        let receipt = session.close().await.unwrap();
        assert_eq!(receipt.buffers, 2);
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::Closed, "the offload was not an end");
        f.shutdown_clean().await;
    });
}

#[test]
fn an_offload_is_refused_while_a_lease_is_held_and_nothing_moves() {
    on_paused_time(|| async {
        let f = start(with_budget(None, WhenExhausted::Evict)).await;
        let (session, buffers) = filled(&f, "bob", 3).await;
        let stream = session.lease().await.unwrap();
        let refused = session.offload().await.unwrap_err();
        assert!(
            matches!(&refused, SessionError::OffloadRefused { why, .. } if why.contains("lease")),
            "{refused}"
        );
        assert_eq!(f.pool.stats().offloaded_buffers, 0);
        stream.release().await.unwrap();
        session.offload().await.unwrap();
        let again = session.offload().await;
        assert!(again.is_err(), "offloading twice is refused");
        assert_intact(&session, &buffers).await;
        f.shutdown_clean().await;
    });
}

#[test]
fn pressure_offloads_the_idle_session_instead_of_ending_it() {
    on_paused_time(|| async {
        // Room for one session's 256 KiB and a little more.
        let f = start(with_budget(Some(384 * KIB), WhenExhausted::Evict)).await;
        let (idle, idle_buffers) = filled(&f, "idle", 11).await;
        settle(2 * SEC).await;
        let (busy, busy_buffers) = filled(&f, "busy", 23).await;
        let pool = f.pool.stats();
        assert_eq!(pool.offloaded_buffers, 2, "the idle session was offloaded");
        assert_eq!(idle.state(), State::Established, "and not ended");
        assert_eq!(f.stats().await.pressure.offloaded, 1);

        // Each read needs its session's memory back, and makes room by
        // offloading the other once that one has been idle long enough.
        settle(2 * SEC).await;
        assert_intact(&idle, &idle_buffers).await;
        assert_intact(&busy, &busy_buffers).await;
        let stats = f.stats().await;
        assert_eq!((stats.pressure.offloaded, stats.pressure.restored), (3, 2));
        assert!(
            stats.ended_by.is_empty(),
            "nobody was ended: {:?}",
            stats.ended_by
        );
        f.shutdown_clean().await;
    });
}

#[test]
fn a_restore_that_cannot_get_memory_keeps_the_data_in_host_memory() {
    on_paused_time(|| async {
        let f = start(with_budget(Some(256 * KIB), WhenExhausted::Fail)).await;
        let (session, buffers) = filled(&f, "carol", 5).await;
        session.offload().await.unwrap();
        let other = f.engine.open("dave").await.unwrap();
        other.allocate(256 * KIB).await.unwrap();

        let refused = session.chat(Turn::new()).await.unwrap_err();
        assert!(
            matches!(
                &refused,
                SessionError::Allocation { source: AllocError::RestoreFailed(cause), .. }
                    if matches!(**cause, AllocError::OverBudget { .. })
            ),
            "{refused}"
        );
        assert_eq!(session.state(), State::Established);
        assert_eq!(
            f.pool.stats().offloaded_buffers,
            2,
            "the data stays in host memory"
        );

        other.close().await.unwrap();
        assert_intact(&session, &buffers).await;
        f.shutdown_clean().await;
    });
}

#[test]
fn ending_an_offloaded_session_frees_its_host_copies() {
    on_paused_time(|| async {
        let f = start(with_budget(None, WhenExhausted::Evict)).await;
        let (session, _) = filled(&f, "erin", 9).await;
        session.offload().await.unwrap();
        let receipt = session.close().await.unwrap();
        assert_eq!(receipt.buffers, 2);
        let pool = f.pool.stats();
        assert_eq!(
            (
                pool.live_buffers,
                pool.offloaded_buffers,
                pool.offloaded_bytes
            ),
            (0, 0, 0)
        );
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.pressure.offloaded_now, 0);
        assert_eq!(stats.budget.device_used, 0);
    });
}

#[test]
fn a_session_waiting_for_room_refuses_an_offload() {
    on_paused_time(|| async {
        let mut config = with_budget(Some(256 * KIB), WhenExhausted::Wait);
        config.sessions.max_session_memory = 256 * KIB;
        let f = start(config).await;
        let holder = f.engine.open("holder").await.unwrap();
        holder.allocate(192 * KIB).await.unwrap();
        let asker = f.engine.open("asker").await.unwrap();
        asker.allocate(64 * KIB).await.unwrap();
        settle(5 * SEC).await; // both idle for long
        let waiting = actix::spawn({
            let asker = asker.clone();
            async move { asker.allocate(64 * KIB).await }
        });
        settle(SEC / 10).await;
        let refused = asker.offload().await.unwrap_err();
        assert!(
            matches!(&refused, SessionError::OffloadRefused { why, .. } if why.contains("waiting")),
            "{refused}"
        );
        holder.close().await.unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(f.pool.stats().offloaded_buffers, 0);
        f.shutdown_clean().await;
    });
}

/// Found by the product attack review of passivation: a request that waits
/// for an offloaded session's restore runs after it as a future of its own,
/// and actix may handle the next queued message (an offload) between the
/// two; that offload took the buffers again from under the request, which
/// then read a buffer the pool had just moved to host memory. An offload is
/// now refused while a request waits for its buffers.
#[test]
fn an_offload_queued_behind_a_read_that_restores_never_takes_the_buffers_from_it() {
    on_paused_time(|| async {
        let f = start(with_budget(None, WhenExhausted::Evict)).await;
        let (session, buffers) = filled(&f, "bob", 3).await;
        session.offload().await.unwrap();
        let (id, data) = &buffers[0];
        // Both queued before the session runs: the read restores, then the offload comes.
        let (read, offload) = futures::join!(session.read_buffer(*id), session.offload());
        assert!(
            read.as_ref() == Ok(data),
            "the read got its bytes: {read:?}"
        );
        assert!(
            matches!(offload, Err(SessionError::OffloadRefused { .. })),
            "the offload waits its turn: {offload:?}"
        );
        assert_intact(&session, &buffers).await;
        drop(session);
        f.shutdown_clean().await;
    });
}
