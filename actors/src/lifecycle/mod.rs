//! The session lifecycle as pure code: no actix, no clock, no I/O.
//!
//! ```text
//!  Init ──establish──▶ Established ──end(reason)──▶ Closing ──released──▶ Closed
//!   │                   ▲   │ message / touch / allocate / context reset
//!   └──end(reason)──┐   └───┘
//!                   ▼
//!                Closing
//! ```
//!
//! Every other (state, event) pair is refused with a [`LifecycleError`] that
//! names both, and leaves the state as it was.

mod reason;
mod state;

pub use reason::EndReason;
pub use state::{Event, Lifecycle, LifecycleError, State};
