//! What every session of one engine shares, held once behind an `Arc` so a
//! session's own footprint stays small.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use crate::clock::Epoch;
use crate::context::ContextPolicyFactory;
use crate::gpu::GpuPool;
use crate::lease::LeasesConfig;
use crate::pseudonym::Pseudonymizer;
use crate::registry::RegistryActor;

pub(crate) struct SessionSettings {
    pub(crate) epoch: Epoch,
    /// GPU bytes one session may hold.
    pub(crate) max_bytes: u64,
    /// The device's largest buffer.
    pub(crate) max_buffer_size: u64,
    pub(crate) drain_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) revoke_after: Duration,
    pub(crate) missed_heartbeats: u32,
    pub(crate) end_session_on_lease_lost: bool,
    pub(crate) pool: Arc<dyn GpuPool>,
    pub(crate) registry: Addr<RegistryActor>,
    /// Builds a session's context policy on its first turn with a signal;
    /// `None` when context expiry is switched off.
    pub(crate) context: Option<ContextPolicyFactory>,
    /// Owner pseudonyms for log lines (owners never appear in clear).
    pub(crate) pseudonyms: Arc<Pseudonymizer>,
}

impl SessionSettings {
    pub(crate) fn new(
        epoch: Epoch,
        max_bytes: u64,
        leases: &LeasesConfig,
        pool: Arc<dyn GpuPool>,
        registry: Addr<RegistryActor>,
        context: Option<ContextPolicyFactory>,
        pseudonyms: Arc<Pseudonymizer>,
    ) -> Self {
        SessionSettings {
            epoch,
            max_bytes,
            max_buffer_size: pool.info().max_buffer_size,
            drain_timeout: leases.drain_timeout(),
            heartbeat_interval: leases.heartbeat_interval(),
            revoke_after: leases.revoke_after(),
            missed_heartbeats: leases.missed_heartbeats,
            end_session_on_lease_lost: leases.end_session_on_lease_lost,
            pool,
            registry,
            context,
            pseudonyms,
        }
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
