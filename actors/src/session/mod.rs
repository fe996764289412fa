//! The session actor and the handle applications hold.

mod actor;
mod end_guard;
mod error;
mod handle;
mod lease;
mod ledger;
mod messages;
mod record_sizes;
mod settings;
mod shared;
mod slot;

pub(crate) use actor::SessionActor;
pub(crate) use end_guard::EndGuard;
pub use error::{AllocError, SessionError};
pub use handle::SessionHandle;
pub use lease::Lease;
pub use messages::{Binding, LeaseGrant, SessionInfo, SessionOffload, Turn, TurnAck};
pub(crate) use settings::SessionSettings;
pub(crate) use shared::SessionShared;
pub use slot::PassivationStats;
pub(crate) use slot::{Link, Passivations, Ticket, Via};
