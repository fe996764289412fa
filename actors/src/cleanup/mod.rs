//! Cleanup: turn each `SessionEndEvent` into released GPU memory, through a
//! prioritised release queue paced by load tiers.

mod actor;
mod backoff;
mod config;
mod lag_probe;
mod pacer;
mod queue;

pub(crate) use actor::CleanupActor;
pub(crate) use actor::{Release, intake};
pub use config::{PaceUnit, ReleaseConfig, ReleaseTier};
pub(crate) use pacer::Pacer;
pub(crate) use queue::ReleaseQueue;
pub use queue::ReleaseQueueStats;
