//! Shared by the engine's integration tests: an engine on the in-memory pool,
//! run on **paused time** (tokio's clock jumps straight to the next timer when
//! everything is idle), so deadlines of seconds or hours are tested without
//! sleeping and without timing thresholds.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sessionbus_actors::*;

pub mod stalling;
use tokio::sync::mpsc;

pub const MIB: u64 = 1 << 20;

/// Runs `test` inside an actix System whose tokio clock is paused.
pub fn on_paused_time<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let runner = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a paused tokio runtime")
    });
    runner.block_on(test());
}

pub struct Fixture {
    pub engine: EngineHandle,
    pub pool: Arc<InMemoryPool>,
    pub events: mpsc::Receiver<LifecycleEvent>,
}

pub async fn start(config: EngineConfig) -> Fixture {
    let pool = Arc::new(InMemoryPool::new(256 * MIB, 16 * MIB));
    let engine = Engine::start(config, pool.clone()).expect("valid config");
    let events = engine
        .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
        .await
        .expect("engine running");
    Fixture {
        engine,
        pool,
        events,
    }
}

/// A config whose sessions never expire unless a test says so.
pub fn no_expiry() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.expiry.idle_timeout = None;
    config.expiry.ttl = None;
    config
}

/// [`no_expiry`] with sessions spread over `shards` registry shards.
pub fn sharded(shards: usize) -> EngineConfig {
    let mut config = no_expiry();
    config.sessions.shards = shards;
    config
}

/// `shards` shards; release unpaced, at most `max_in_flight` unanswered; a
/// stuck release is declared after `step_timeout`.
pub fn release_limited(shards: usize, max_in_flight: u32, step_timeout: Duration) -> EngineConfig {
    let mut config = sharded(shards);
    config.release = ReleaseConfig::fixed(PaceUnit::Buffers, 1_000_000, 100_000, max_in_flight);
    config.supervision.step_timeout = step_timeout;
    config
}

/// A session of `owner` holding one buffer of `bytes`.
pub async fn open_holding(engine: &EngineHandle, owner: &str, bytes: u64) -> SessionHandle {
    let session = engine.open(owner).await.unwrap();
    session.allocate(bytes).await.unwrap();
    session
}

/// The shard of `shards` an id is placed on (the high word modulo the
/// count, as ARCHITECTURE.md documents it).
pub fn shard_of(id: SessionId, shards: usize) -> usize {
    ((id.as_u128() >> 64) as u64 % shards as u64) as usize
}

pub fn policy(idle: Option<Duration>, ttl: Option<Duration>) -> ExpiryPolicy {
    ExpiryPolicy {
        idle_timeout: idle,
        ttl,
    }
}

impl Fixture {
    /// The next event of `kinds` (on paused time a long timeout costs nothing).
    pub async fn next(&mut self, kinds: EventKinds) -> LifecycleEvent {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(24 * 3600), self.events.recv())
                .await
                .expect("an event within a (virtual) day")
                .expect("bus open");
            if kinds.contains(event.kind()) {
                return event;
            }
        }
    }

    pub async fn next_end(&mut self) -> Arc<SessionEndEvent> {
        match self.next(EventKinds::ENDED).await {
            LifecycleEvent::Ended(end) => end,
            _ => unreachable!(),
        }
    }

    pub async fn next_release(&mut self) -> Arc<ReleaseReceipt> {
        match self.next(EventKinds::RELEASED).await {
            LifecycleEvent::Released(receipt) => receipt,
            _ => unreachable!(),
        }
    }

    pub async fn stats(&self) -> RegistryStats {
        self.engine.stats().await.expect("engine running")
    }

    pub async fn passivation(&self) -> PassivationStats {
        self.stats().await.passivation
    }

    /// Shuts down and checks that nothing is left on the pool.
    pub async fn shutdown_clean(self) -> RegistryStats {
        let report = self.engine.shutdown().await.expect("engine running");
        assert_eq!(
            self.pool.stats().live_buffers,
            0,
            "buffers left after shutdown"
        );
        report.stats
    }
}

/// No expiry, and a small KV pool: blocks of 16 tokens × 64 bytes, 8 to a
/// slab, `device_blocks` of them on the device, no cache of released prefixes.
pub fn kv_engine(device_blocks: u64) -> EngineConfig {
    let mut config = no_expiry();
    config.kv = Some(KvPoolConfig {
        layout: KvLayout {
            tokens_per_block: 16,
            bytes_per_token: 64,
        },
        blocks_per_slab: 8,
        device_budget: BlockBudget::Blocks(device_blocks),
        cache_budget: BlockBudget::Blocks(0),
        owner_budget: None,
        table_cap_blocks: None,
        keep_alive: Duration::ZERO,
        slab_idle_trim: Duration::from_secs(3600),
    });
    config
}

/// A session of `owner` holding one 4 KiB buffer filled with known bytes.
pub async fn holding_bytes(f: &Fixture, owner: &str) -> (SessionHandle, AllocationId, Vec<u8>) {
    let session = f.engine.open(owner).await.unwrap();
    let buffer = session.allocate(4 << 10).await.unwrap();
    let data: Vec<u8> = (0..4u64 << 10).map(|i| (i * 7 % 251) as u8).collect();
    session
        .write_buffer(buffer.id, 0, data.clone())
        .await
        .unwrap();
    (session, buffer.id, data)
}

/// Lets every ready message be handled (virtual time moves by `by`).
pub async fn settle(by: Duration) {
    tokio::time::sleep(by).await;
}

/// Whether `error` is a KV append or restore refused for want of blocks.
pub fn is_out_of_blocks(error: &SessionError) -> bool {
    matches!(
        error,
        SessionError::Kv {
            source: KvStoreError::Blocks(KvError::OutOfBlocks { .. }),
            ..
        }
    )
}

/// Fills every KV block of `session` (`block_bytes` each) with bytes no
/// other block has (`seed` tells sessions apart); returns what it wrote.
pub async fn fill_kv_blocks(session: &SessionHandle, block_bytes: usize, seed: u8) -> Vec<Vec<u8>> {
    let n = session.kv_blocks().await.unwrap().len();
    let mut written = Vec::new();
    for i in 0..n {
        let data: Vec<u8> = (0..block_bytes)
            .map(|k| (k as u8).wrapping_mul(31) ^ seed ^ i as u8)
            .collect();
        session.write_kv(i, 0, data.clone()).await.unwrap();
        written.push(data);
    }
    written
}

/// Every KV block of `session`, read back.
pub async fn read_kv_blocks(session: &SessionHandle) -> Vec<Vec<u8>> {
    let n = session.kv_blocks().await.unwrap().len();
    let mut read = Vec::new();
    for i in 0..n {
        read.push(session.read_kv(i).await.unwrap());
    }
    read
}

/// A context policy an application could write: every third turn is a new
/// context.
pub struct EveryThird(pub u32);

impl ContextPolicy for EveryThird {
    fn assess(
        &mut self,
        _turn: &TurnSignal,
        _now: std::time::Instant,
    ) -> Result<ContextVerdict, ContextError> {
        self.0 += 1;
        Ok(match self.0 % 3 {
            0 => ContextVerdict::Stale(StaleReason::Negation),
            _ => ContextVerdict::Fresh { similarity: None },
        })
    }
}
