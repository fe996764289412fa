//! Registry shards: the registry split by session id over several actors,
//! each on its own engine thread, so that opens, ends and expiries of
//! different sessions run in parallel.
//!
//! Ground rules: a session lives on exactly one shard, chosen by its id
//! (`SessionId::shard_of`), and that shard is the only place its end is
//! accepted and published, so "exactly one end" is still enforced in one
//! place per session. What must be one thing for the whole engine is shared,
//! not sharded: the budgets, the release queue and its pacer (urgent ends go
//! before expiries across all shards; one cleanup dispatcher), the KV store,
//! the hooks, the health of the runtime's tasks, the live-session count that
//! `max_sessions` is checked against, and subscription ids. Memory pressure
//! is decided by one shard, the coordinator (shard 0), which looks at every
//! shard's idle sessions before it picks, so "least recently active first"
//! holds across shards.

use std::sync::{Arc, OnceLock};

use actix::Addr;

use super::actor::RegistryActor;
use super::stats::{DeviceLossReport, RegistryStats, ShutdownReport};
use crate::ids::SessionId;
use crate::lifecycle::EndReason;

/// Every shard's address, indexed by shard. Set once, right after the
/// shards are created and before the engine handle exists, so anything a
/// session or the cleanup does can rely on it.
#[derive(Clone, Default)]
pub(crate) struct Shards(Arc<OnceLock<Box<[Addr<RegistryActor>]>>>);

impl Shards {
    pub(crate) fn set(&self, shards: Vec<Addr<RegistryActor>>) {
        assert!(!shards.is_empty(), "an engine has at least one shard");
        if self.0.set(shards.into_boxed_slice()).is_err() {
            unreachable!("the shards are set once, at start");
        }
    }

    pub(crate) fn all(&self) -> &[Addr<RegistryActor>] {
        self.0
            .get()
            .expect("the shards are known before any session exists")
    }

    pub(crate) fn count(&self) -> usize {
        self.all().len()
    }

    /// The shard holding session `id`.
    pub(crate) fn for_id(&self, id: SessionId) -> &Addr<RegistryActor> {
        &self.all()[self.index_of(id)]
    }

    /// The index of the shard holding session `id`.
    pub(crate) fn index_of(&self, id: SessionId) -> usize {
        id.shard_of(self.count())
    }

    /// The shard that decides memory pressure for all of them.
    pub(crate) fn coordinator(&self) -> &Addr<RegistryActor> {
        &self.all()[0]
    }
}

/// One view of the whole engine from each shard's stats. Counters add up;
/// what is shared (budgets, release queue, hooks, KV, supervision) is the
/// same in every shard's answer and is taken once.
pub(crate) fn merge_stats(shards: Vec<RegistryStats>) -> RegistryStats {
    let mut shards = shards.into_iter();
    let Some(mut all) = shards.next() else {
        return RegistryStats::default();
    };
    for one in shards {
        all.live += one.live;
        all.releasing += one.releasing;
        all.opened += one.opened;
        all.ended += one.ended;
        for (reason, n) in one.ended_by {
            match all.ended_by.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, total)) => *total += n,
                None => all.ended_by.push((reason, n)),
            }
        }
        all.released += one.released;
        all.released_buffers += one.released_buffers;
        all.released_bytes += one.released_bytes;
        all.incidents += one.incidents;
        all.sweeper_incidents += one.sweeper_incidents;
        all.sweeps += one.sweeps;
        all.leases_revoked += one.leases_revoked;
        all.context_resets += one.context_resets;
        all.drains_forced += one.drains_forced;
        all.scheduled_deadlines += one.scheduled_deadlines;
        all.bus_dropped += one.bus_dropped;
        all.bus_backlog += one.bus_backlog;
        let (p, q) = (&mut all.pressure, one.pressure);
        p.make_room += q.make_room;
        p.evicted += q.evicted;
        p.offloaded += q.offloaded;
        p.restored += q.restored;
        p.refused += q.refused;
        p.offloaded_now += q.offloaded_now;
        p.offloaded_bytes += q.offloaded_bytes;
        all.steps.merge(&one.steps);
    }
    // Listed in `EndReason::ALL` order, as one registry lists them.
    all.ended_by
        .sort_by_key(|(reason, _)| EndReason::ALL.iter().position(|r| r == reason));
    all
}

/// The shutdown of every shard as one report. What every shard read off
/// the shared books (`bytes_unfinished`, the budget and the release queue in
/// `stats`) is the first shard's here: the engine reads them again once
/// every shard has reported.
pub(crate) fn merge_shutdown(shards: Vec<ShutdownReport>) -> ShutdownReport {
    let stats = merge_stats(shards.iter().map(|r| r.stats.clone()).collect());
    let mut shards = shards.into_iter();
    let Some(mut all) = shards.next() else {
        return ShutdownReport::default();
    };
    for one in shards {
        all.sessions_ended += one.sessions_ended;
        all.sessions_forced += one.sessions_forced;
        all.drains_forced += one.drains_forced;
        all.sessions_unfinished += one.sessions_unfinished;
        all.releases_unfinished += one.releases_unfinished;
        all.completed &= one.completed;
        all.buffers_released += one.buffers_released;
        all.bytes_released += one.bytes_released;
        all.took = all.took.max(one.took);
    }
    all.stats = stats;
    all
}

/// A device loss on every shard as one report.
pub(crate) fn merge_device_loss(shards: Vec<DeviceLossReport>) -> DeviceLossReport {
    let mut shards = shards.into_iter();
    let Some(mut all) = shards.next() else {
        return DeviceLossReport::default();
    };
    for one in shards {
        all.ended += one.ended;
        all.already_ending += one.already_ending;
        all.unreleased += one.unreleased;
        all.completed &= one.completed;
        all.took = all.took.max(one.took);
    }
    all
}

/// What every shard of one engine shares, handed to each at its start.
#[derive(Clone)]
pub(crate) struct EngineParts {
    pub(crate) pool: Arc<dyn crate::gpu::GpuPool>,
    pub(crate) budget: Arc<crate::budget::Budget>,
    pub(crate) queue: Arc<crate::cleanup::ReleaseQueue>,
    pub(crate) pseudonyms: Arc<crate::pseudonym::Pseudonymizer>,
    pub(crate) kv: Option<Arc<crate::kv_store::KvStore>>,
    pub(crate) hooks: Arc<crate::hooks::Hooks>,
    pub(crate) health: Arc<crate::supervision::Health>,
    /// One epoch for all, so activity times compare across shards.
    pub(crate) epoch: crate::clock::Epoch,
    pub(crate) shards: Shards,
    pub(crate) subscription_ids: Arc<std::sync::atomic::AtomicU64>,
    /// Device recoveries under way ([`OpensPaused`] guards alive): while
    /// above zero, every shard refuses opens with `DeviceRecovering`.
    pub(crate) opens_paused: Arc<std::sync::atomic::AtomicUsize>,
    /// Parks and revivals of idle sessions, on every shard.
    pub(crate) passivations: Arc<crate::session::Passivations>,
}

/// While alive, every shard refuses opens with
/// [`OpenError::DeviceRecovering`](super::OpenError::DeviceRecovering):
/// from [`EngineHandle::pause_opens_for_device_recovery`](crate::EngineHandle::pause_opens_for_device_recovery).
/// Dropping it admits sessions again.
#[derive(Debug)]
pub struct OpensPaused(Arc<std::sync::atomic::AtomicUsize>);

impl OpensPaused {
    pub(crate) fn new(paused: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        paused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpensPaused(paused)
    }
}

impl Drop for OpensPaused {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
