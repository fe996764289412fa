use std::time::Duration;

use super::pressure::PressureCounters;
use crate::budget::BudgetStats;
use crate::cleanup::ReleaseQueueStats;
use crate::hooks::HookStats;
use crate::lifecycle::EndReason;
use crate::supervision::{StepTimings, SupervisionStats};

/// Counts the registry keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryStats {
    /// Sessions live now.
    pub live: usize,
    /// Sessions ended whose memory is not yet released.
    pub releasing: usize,
    /// Sessions opened since start.
    pub opened: u64,
    /// Sessions ended since start.
    pub ended: u64,
    /// Ends per reason (only reasons that occurred).
    pub ended_by: Vec<(EndReason, u64)>,
    /// Sessions whose release completed.
    pub released: u64,
    /// GPU buffers released.
    pub released_buffers: u64,
    /// GPU bytes released.
    pub released_bytes: u64,
    /// Things that should not happen and were handled (each also logged at WARN or ERROR).
    pub incidents: u64,
    /// Of `incidents`, those the sweeper found (stuck in Closing, memory whose session is gone).
    /// A healthy run reports zero.
    pub sweeper_incidents: u64,
    /// Sweeper passes run.
    pub sweeps: u64,
    /// Remote leases revoked because their heartbeats stopped.
    pub leases_revoked: u64,
    /// Context resets (stale conversations whose context-bound memory was released).
    pub context_resets: u64,
    /// Ends forced past leases still held (drain deadline, sweeper, or every handle gone).
    pub drains_forced: u64,
    /// Sessions filed in the deadline queue now.
    pub scheduled_deadlines: usize,
    /// Events dropped for best-effort bus subscribers.
    pub bus_dropped: u64,
    /// Events waiting now for reliable bus subscribers that fell behind.
    pub bus_backlog: usize,
    /// The GPU budgets' books.
    pub budget: BudgetStats,
    /// Ended sessions whose memory is queued or on its way back.
    pub release_queue: ReleaseQueueStats,
    /// Evictions, offloads and restores under memory pressure.
    pub pressure: PressureCounters,
    /// Pre-destroy hooks: succeeded, failed, timed out, panicked.
    pub hooks: HookStats,
    /// Per-step timings of the destroy path, and releases force-completed
    /// because a step was stuck.
    pub steps: StepTimings,
    /// The KV block pool's counters (`None` without `[kv]`).
    pub kv: Option<crate::kv::KvStats>,
    /// Restarts of the runtime's own tasks, and the failure that escalated, if any.
    pub supervision: SupervisionStats,
    /// Idle sessions parked now, parks and revivals (`sessions.passivate_after`).
    pub passivation: crate::session::PassivationStats,
}

/// What `shutdown` did. Nothing is skipped silently: what the deadline cut
/// short is counted in the `*_unfinished` fields and `completed` is false.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShutdownReport {
    /// The deadline shutdown ran under.
    #[serde(serialize_with = "micros")]
    pub deadline: Duration,
    /// Sessions live when shutdown began, ended with reason `shutdown`.
    pub sessions_ended: u64,
    /// Of those, sessions still draining leases at three quarters of the
    /// deadline, whose ends were forced then.
    pub sessions_forced: u64,
    /// Ends forced past leases still held during shutdown (by the session's
    /// own drain timeout or by the shutdown's forcing).
    pub drains_forced: u64,
    /// Sessions not yet ended at the deadline (zero unless an actor was stuck).
    pub sessions_unfinished: u64,
    /// Ended sessions whose release had not completed at the deadline; the
    /// GPU thread destroys their buffers as it stops (each logged).
    pub releases_unfinished: u64,
    /// GPU bytes those releases held.
    pub bytes_unfinished: u64,
    /// Whether every session ended and every release completed before the deadline.
    pub completed: bool,
    /// Buffers released during shutdown (including releases already under way).
    pub buffers_released: u64,
    /// Bytes released during shutdown.
    pub bytes_released: u64,
    /// How long shutdown took.
    #[serde(serialize_with = "micros")]
    pub took: Duration,
    /// The registry's counters at the end.
    pub stats: RegistryStats,
}

/// What ending every session on a device loss did
/// ([`EngineHandle::end_sessions_on_device_loss_within`](crate::EngineHandle::end_sessions_on_device_loss_within)).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceLossReport {
    /// Sessions this call ended, with reason `device_lost`.
    pub ended: usize,
    /// Sessions that were already ending (a close waiting for a lease, an
    /// expiry): their end stands, with its own reason, and is not counted in
    /// `ended`; their releases are waited for all the same.
    pub already_ending: usize,
    /// Of the releases waited for (both kinds), those not completed at the
    /// deadline: still under way (a lease still draining, a stuck release).
    pub unreleased: usize,
    /// Whether every release was completed before the deadline.
    pub completed: bool,
    /// How long the call took.
    #[serde(serialize_with = "micros")]
    pub took: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}
