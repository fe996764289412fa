//! What every session of one engine shares, held once behind an `Arc` so a
//! session's own footprint stays small.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use crate::budget::{Budget, WaitRules};
use crate::clock::Epoch;
use crate::config::EngineConfig;
use crate::context::ContextPolicyFactory;
use crate::gpu::GpuPool;
use crate::pseudonym::Pseudonymizer;
use crate::registry::RegistryActor;

pub(crate) struct SessionSettings {
    pub(crate) epoch: Epoch,
    /// GPU bytes one session may hold.
    pub(crate) max_bytes: u64,
    /// The device's largest buffer.
    pub(crate) max_buffer_size: u64,
    pub(crate) drain_timeout: Duration,
    /// How long an offload or restore may go unanswered by the pool
    /// (`[supervision] step_timeout`): the session handles nothing else
    /// meanwhile, so a hung device must not hold it for longer.
    pub(crate) step_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) revoke_after: Duration,
    pub(crate) missed_heartbeats: u32,
    pub(crate) end_session_on_lease_lost: bool,
    pub(crate) pool: Arc<dyn GpuPool>,
    pub(crate) registry: Addr<RegistryActor>,
    /// Builds a session's context policy on its first turn with a signal;
    /// `None` when context expiry is switched off.
    pub(crate) context: Option<ContextPolicyFactory>,
    /// The device and owner budgets all sessions charge.
    pub(crate) budget: Arc<Budget>,
    /// What an allocation past a budget does.
    pub(crate) wait_rules: WaitRules,
    /// Owner pseudonyms for log lines (owners never appear in clear).
    pub(crate) pseudonyms: Arc<Pseudonymizer>,
    /// The KV block store (`None` without `[kv]`).
    pub(crate) kv: Option<Arc<crate::kv_store::KvStore>>,
    /// The release queue, told of every live message (its back-off gives
    /// way only to live traffic there is).
    pub(crate) release_queue: Option<Arc<crate::cleanup::ReleaseQueue>>,
    /// Every registry shard: a session asks the coordinator for room, and
    /// another session's shard for its receipt.
    pub(crate) shards: crate::registry::Shards,
    /// The shard's engine thread: a parked session starts again there.
    pub(crate) arbiter: actix::ArbiterHandle,
    /// That thread (a session started again from it starts at once, in order).
    pub(crate) thread: std::thread::ThreadId,
    /// `sessions.mailbox_capacity`, for a session started again.
    pub(crate) mailbox_capacity: usize,
    /// Parks and revivals, counted for every shard.
    pub(crate) passivations: Arc<super::slot::Passivations>,
}

impl SessionSettings {
    pub(crate) fn new(
        epoch: Epoch,
        config: &EngineConfig,
        pool: Arc<dyn GpuPool>,
        registry: Addr<RegistryActor>,
        context: Option<ContextPolicyFactory>,
        budget: Arc<Budget>,
        pseudonyms: Arc<Pseudonymizer>,
    ) -> Self {
        let leases = &config.leases;
        SessionSettings {
            epoch,
            max_bytes: config.sessions.max_session_memory,
            max_buffer_size: pool.info().max_buffer_size,
            drain_timeout: leases.drain_timeout,
            step_timeout: config.supervision.step_timeout,
            heartbeat_interval: leases.heartbeat_interval,
            revoke_after: leases.revoke_after(),
            missed_heartbeats: leases.missed_heartbeats,
            end_session_on_lease_lost: leases.end_session_on_lease_lost,
            pool,
            registry,
            context,
            budget,
            wait_rules: WaitRules {
                when_exhausted: config.budget.when_exhausted,
                timeout: config.budget.wait_timeout,
            },
            pseudonyms,
            kv: None,
            release_queue: None,
            shards: Default::default(),
            arbiter: actix::Arbiter::current(),
            thread: std::thread::current().id(),
            mailbox_capacity: config.sessions.mailbox_capacity,
            passivations: Default::default(),
        }
    }

    /// What a buffer of `bytes` really holds (the pool's size alignment).
    pub(crate) fn rounded(&self, bytes: u64) -> u64 {
        self.pool.info().rounded(bytes)
    }
}

impl std::fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSettings")
            .field("max_bytes", &self.max_bytes)
            .field("drain_timeout", &self.drain_timeout)
            .field("pool", self.pool.info())
            .finish_non_exhaustive()
    }
}
