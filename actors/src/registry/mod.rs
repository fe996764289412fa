//! The registry actor: the supervisor of every session, and the only
//! publisher of `SessionEndEvent`.

mod actor;
mod error;
mod expiry;
mod listing;
mod passivation;
mod pressure;
mod shards;
mod shutdown;
mod stats;
mod sweeper;
mod tombstones;

pub(crate) use actor::RegistryActor;
pub use error::OpenError;
pub use shards::OpensPaused;
pub(crate) use shards::{EngineParts, Shards, merge_device_loss, merge_shutdown, merge_stats};
// What the registry receives, in `protocol::registry`, for the engine that sends it.
pub(crate) use crate::protocol::registry::*;
pub use pressure::PressureCounters;
pub use stats::{DeviceLossReport, RegistryStats, ShutdownReport};
