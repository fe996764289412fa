//! The session actor and the handle applications hold.

mod actor;
mod end_guard;
mod error;
mod handle;
mod ledger;
mod messages;
mod shared;

pub(crate) use actor::{SessionActor, SessionLimits};
pub(crate) use end_guard::EndGuard;
pub use error::{AllocError, SessionError};
pub use handle::SessionHandle;
pub(crate) use messages::End;
pub use messages::{SessionInfo, Turn, TurnAck};
pub(crate) use shared::SessionShared;
