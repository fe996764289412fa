//! Registry shards under attack: the guarantees one registry gave must hold
//! with several shards too, at the seams where shards meet. A session that
//! ends while the coordinator gathers candidates from the other shards is not
//! room it can make again; every refusal after an open was admitted gives
//! the one `max_sessions` count back, whichever shard refused (forks
//! included, which open on their parent's shard); shutdown and device loss
//! report every shard's sessions once. Four shards on one thread, on paused
//! time.

use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const SHARDS: usize = 4;
const SEC: Duration = Duration::from_secs(1);

fn sharded() -> EngineConfig {
    crate::common::sharded(SHARDS)
}

fn shard_of(id: SessionId) -> usize {
    crate::common::shard_of(id, SHARDS)
}

/// One session per shard, each holding a quarter of a 4 MiB device, all
/// idle for longer than `evict_idle`; `order` says which was active last
/// (the first in it is the least recently active).
async fn four_idle_quarters(f: &Fixture, order: [usize; SHARDS]) -> Vec<SessionHandle> {
    let mut sessions = Vec::new();
    for i in 0..SHARDS {
        let session = f.engine.open(format!("u{i}")).await.unwrap();
        assert_eq!(shard_of(session.id()), i, "opens go to the shards in turn");
        session.allocate(MIB).await.unwrap();
        sessions.push(session);
    }
    settle(2 * SEC).await;
    for i in order {
        sessions[i].touch().await.unwrap();
        settle(SEC / 10).await;
    }
    settle(2 * SEC).await;
    sessions
}

fn evicting() -> EngineConfig {
    let mut config = sharded();
    config.sessions.max_session_memory = 2 * MIB;
    config.budget.device_memory = Some(4 * MIB);
    config.budget.when_exhausted = WhenExhausted::Evict;
    config.budget.evict_idle = SEC;
    config.budget.offload = false;
    config
}

/// The newcomer needs two quarters. The coldest session (on shard 1) is
/// closed by its owner just as the newcomer asks, at every point of the
/// coordinator's gather in turn: its quarter comes back by the close, so
/// exactly one more idle session must go, whether the close lands before
/// the gather, between the gather and the pick, or after the pick.
#[test]
fn a_session_that_ends_while_the_coordinator_gathers_does_not_count_as_room_twice() {
    // The close starts `hops` round trips to a shard after the allocation
    // (one thread: each round trip lets every other actor take one step).
    for hops in 0..24 {
        on_paused_time(|| async move {
            let f = start(evicting()).await;
            let sessions = four_idle_quarters(&f, [1, 2, 3, 0]).await;
            let newcomer = f.engine.open("newcomer").await.unwrap();
            let asking = newcomer.clone();
            let allocated = actix::spawn(async move { asking.allocate(2 * MIB).await });
            let (engine, closing) = (f.engine.clone(), sessions[1].clone());
            let closed = actix::spawn(async move {
                for _ in 0..hops {
                    let nobody = SessionId::random();
                    let _ = engine.attach(nobody, Owner::new("u1")).await;
                }
                closing.close().await
            });
            closed.await.unwrap().unwrap();
            let allocated = allocated.await.unwrap();
            assert!(
                allocated.is_ok(),
                "close after {hops} hops: the newcomer got no room: {allocated:?}"
            );
            settle(SEC).await;
            // Only the coldest and the next coldest go; the two warmest stay.
            for i in [0, 3] {
                assert_eq!(
                    sessions[i].state(),
                    State::Established,
                    "close after {hops} hops: session {i} was evicted for nothing"
                );
            }
            let stats = f.stats().await;
            assert_eq!(stats.budget.device_used, 4 * MIB, "{hops}");
            f.shutdown_clean().await;
        });
    }
}

/// An open refused after it was admitted (invalid options) gives its count
/// back on whichever shard refused it; so does a fork refused at capacity.
#[test]
fn every_refusal_after_admission_gives_the_one_max_sessions_count_back() {
    on_paused_time(|| async {
        let mut config = sharded();
        config.sessions.max_sessions = 2;
        let f = start(config).await;
        // Every shard in turn refuses an invalid policy, twice over.
        for _ in 0..(2 * SHARDS) {
            let invalid = OpenOptions::new("u").expiry(policy(Some(Duration::ZERO), None));
            let refused = f.engine.open_with(invalid).await.unwrap_err();
            assert!(matches!(refused, OpenError::InvalidOptions(_)), "{refused}");
        }
        let first = f.engine.open("a").await.unwrap();
        let second = f.engine.open("b").await.unwrap();
        assert!(matches!(
            f.engine.open("c").await,
            Err(OpenError::AtCapacity { limit: 2 })
        ));
        assert_eq!(f.stats().await.live, 2);
        second.close().await.unwrap();
        let third = f.engine.open("c").await.unwrap();
        assert_eq!(f.stats().await.live, 2);
        first.close().await.unwrap();
        third.close().await.unwrap();
        // All gone: the limit is whole again, on every shard.
        let mut again = Vec::new();
        for i in 0..2 {
            again.push(f.engine.open(format!("d{i}")).await.unwrap());
        }
        assert!(matches!(
            f.engine.open("e").await,
            Err(OpenError::AtCapacity { limit: 2 })
        ));
        f.shutdown_clean().await;
    });
}

fn kv_sharded(max_sessions: usize) -> EngineConfig {
    let mut config = sharded();
    config.sessions.max_sessions = max_sessions;
    config.kv = Some(KvPoolConfig {
        layout: KvLayout {
            tokens_per_block: 16,
            bytes_per_token: 64,
        },
        blocks_per_slab: 8,
        device_budget: BlockBudget::Blocks(64),
        cache_budget: BlockBudget::Blocks(16),
        owner_budget: None,
        table_cap_blocks: Some(32),
        keep_alive: Duration::ZERO,
        slab_idle_trim: Duration::from_secs(5),
    });
    config
}

/// Forks open on their parent's shard; a fork refused at capacity hands its
/// table back and takes no count; closing a fork gives the count back.
#[test]
fn forks_open_on_their_parents_shard_and_refused_forks_leak_nothing() {
    on_paused_time(|| async {
        let f = start(kv_sharded(SHARDS + 2)).await;
        let mut parents = Vec::new();
        for i in 0..SHARDS {
            let parent = f.engine.open("alice").await.unwrap();
            parent
                .append_tokens(&(0..40).map(|t| t + i as u32).collect::<Vec<_>>())
                .await
                .unwrap();
            parents.push(parent);
        }
        let mut forks = Vec::new();
        for parent in &parents[..2] {
            let fork = parent.fork().await.unwrap();
            assert_eq!(shard_of(fork.id()), shard_of(parent.id()));
            forks.push(fork);
        }
        let books = |kv: KvStats| {
            (
                kv.blocks_referenced,
                kv.blocks_free,
                kv.blocks_cached,
                kv.tables,
            )
        };
        let kv_before = books(f.stats().await.kv.unwrap());
        for parent in &parents {
            let refused = parent.fork().await.unwrap_err();
            assert!(
                matches!(
                    refused,
                    SessionError::ForkRefused {
                        source: OpenError::AtCapacity { .. },
                        ..
                    }
                ),
                "{refused}"
            );
        }
        let kv_after = books(f.stats().await.kv.unwrap());
        assert_eq!(kv_before, kv_after, "refused forks hand their tables back");
        for fork in forks.drain(..) {
            fork.close().await.unwrap();
        }
        for parent in &parents[2..] {
            let fork = parent.fork().await.unwrap();
            assert_eq!(shard_of(fork.id()), shard_of(parent.id()));
            forks.push(fork);
        }
        assert_eq!(f.stats().await.live, SHARDS + 2);
        f.shutdown_clean().await;
    });
}

/// Shutdown with sessions on every shard: one report that counts each once.
#[test]
fn shutdown_reports_every_shards_sessions_once() {
    on_paused_time(|| async {
        let f = start(sharded()).await;
        let mut sessions = Vec::new();
        for i in 0..(3 * SHARDS) {
            let session = f.engine.open(format!("u{i}")).await.unwrap();
            session.allocate(4096).await.unwrap();
            session.allocate(4096).await.unwrap();
            sessions.push(session);
        }
        let report = f.engine.shutdown().await.unwrap();
        let n = 3 * SHARDS as u64;
        assert!(report.completed, "{report:?}");
        assert_eq!(report.sessions_ended, n);
        assert_eq!(
            (report.buffers_released, report.bytes_released),
            (2 * n, 2 * n * 4096)
        );
        assert_eq!(
            (
                report.sessions_unfinished,
                report.releases_unfinished,
                report.bytes_unfinished
            ),
            (0, 0, 0)
        );
        assert_eq!(
            (report.stats.live, report.stats.ended, report.stats.released),
            (0, n, n)
        );
        assert_eq!(report.stats.budget.device_used, 0);
        assert_eq!(f.pool.stats().live_buffers, 0);
        assert!(matches!(
            f.engine.open("late").await,
            Err(OpenError::ShuttingDown)
        ));
    });
}

/// A device loss ends every shard's sessions once, and the count comes back.
#[test]
fn device_loss_ends_every_shards_sessions_once() {
    on_paused_time(|| async {
        let mut config = sharded();
        config.sessions.max_sessions = 2 * SHARDS;
        let f = start(config).await;
        let mut sessions = Vec::new();
        for i in 0..(2 * SHARDS) {
            let session = f.engine.open(format!("u{i}")).await.unwrap();
            session.allocate(4096).await.unwrap();
            sessions.push(session);
        }
        let report = f
            .engine
            .end_sessions_on_device_loss_within(10 * SEC)
            .await
            .unwrap();
        assert_eq!(
            (report.ended, report.already_ending, report.unreleased),
            (2 * SHARDS, 0, 0)
        );
        assert!(report.completed);
        let stats = f.stats().await;
        assert_eq!((stats.live, stats.ended, stats.released), (0, 8, 8));
        assert_eq!(stats.budget.device_used, 0);
        // Every count came back: the engine takes a full house again.
        for i in 0..(2 * SHARDS) {
            sessions.push(f.engine.open(format!("v{i}")).await.unwrap());
        }
        f.shutdown_clean().await;
    });
}

/// The coordinator offloads a session of another shard: the offload's
/// answer comes back to the coordinator, the session's own shard counts it,
/// and its end takes it off that shard's books again.
#[test]
fn an_offload_the_coordinator_asks_of_another_shard_is_counted_once_and_undone_by_the_end() {
    on_paused_time(|| async {
        let mut config = evicting();
        config.budget.offload = true;
        config.budget.offload_host_memory = 4 * MIB;
        let f = start(config).await;
        let sessions = four_idle_quarters(&f, [2, 1, 3, 0]).await;
        let newcomer = f.engine.open("newcomer").await.unwrap();
        assert_eq!(
            shard_of(newcomer.id()),
            0,
            "asked on the coordinator's shard"
        );
        newcomer.allocate(MIB).await.unwrap();
        settle(SEC).await;
        let stats = f.stats().await;
        let p = stats.pressure;
        assert_eq!(
            (p.make_room, p.offloaded, p.evicted, p.offloaded_now),
            (1, 1, 0, 1),
            "{p:?}"
        );
        assert_eq!(p.offloaded_bytes, MIB);
        assert_eq!(stats.budget.device_used, 4 * MIB);
        assert_eq!(f.pool.stats().offloaded_bytes, MIB);
        for session in &sessions {
            assert_eq!(session.state(), State::Established);
        }
        // The offloaded one (on shard 2) ends without coming back.
        sessions[2].close().await.unwrap();
        settle(SEC).await;
        let p = f.stats().await.pressure;
        assert_eq!((p.offloaded_now, p.offloaded_bytes), (0, 0), "{p:?}");
        assert_eq!(f.pool.stats().offloaded_bytes, 0);
        f.shutdown_clean().await;
    });
}

/// Two allocations ask for room at once, from two shards: the second
/// request reaches the coordinator while it still waits for the other
/// shards' candidates. Between them they need two quarters, and exactly
/// the two least recently active sessions go.
#[test]
fn room_asked_while_the_coordinator_gathers_evicts_no_more_than_both_need() {
    on_paused_time(|| async {
        let f = start(evicting()).await;
        let sessions = four_idle_quarters(&f, [3, 1, 2, 0]).await;
        let first = f.engine.open("first").await.unwrap();
        let second = f.engine.open("second").await.unwrap();
        assert_ne!(shard_of(first.id()), shard_of(second.id()));
        let (a, b) = futures::join!(first.allocate(MIB), second.allocate(MIB));
        a.unwrap();
        b.unwrap();
        settle(SEC).await;
        let stats = f.stats().await;
        assert_eq!(stats.pressure.evicted, 2, "{:?}", stats.pressure);
        for (i, state) in [
            (3, State::Closed),
            (1, State::Closed),
            (2, State::Established),
            (0, State::Established),
        ] {
            assert_eq!(sessions[i].state(), state, "session {i}");
        }
        assert_eq!(stats.budget.device_used, 4 * MIB);
        f.shutdown_clean().await;
    });
}
