//! The registry actor: the supervisor of every session, and the only
//! publisher of `SessionEndEvent`.

mod actor;
mod error;
mod expiry;
mod listing;
mod messages;
mod pressure;
mod shutdown;
mod stats;
mod sweeper;
mod tombstones;

pub(crate) use actor::RegistryActor;
pub use error::OpenError;
pub(crate) use listing::LiveSessions;
pub(crate) use messages::*;
pub use pressure::PressureCounters;
pub use stats::{DeviceLossReport, RegistryStats, ShutdownReport};
