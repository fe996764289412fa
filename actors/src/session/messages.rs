//! What a session actor is asked to do. Every request names its caller, and
//! the actor checks ownership before anything else.

use actix::Message;
use tokio::sync::oneshot;

use super::error::SessionError;
use crate::events::ReleaseReceipt;
use crate::gpu::Allocated;
use crate::ids::{Caller, TraceId};
use crate::lifecycle::{EndReason, State};

/// One chat turn.
#[derive(Clone, Debug, Default)]
pub struct Turn {
    /// The application request's trace id, if it has one.
    pub trace_id: Option<TraceId>,
}

/// A turn was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnAck {
    /// Turns the session has taken, this one included.
    pub turn: u64,
    /// The session's version after the turn.
    pub version: u64,
}

/// A snapshot of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its state.
    pub state: State,
    /// Turns taken.
    pub turns: u64,
    /// GPU buffers held.
    pub buffers: usize,
    /// GPU bytes held.
    pub bytes: u64,
    /// Its version.
    pub version: u64,
}

#[derive(Message)]
#[rtype(result = "Result<TurnAck, SessionError>")]
pub(crate) struct Chat {
    pub(crate) caller: Caller,
    pub(crate) turn: Turn,
}

#[derive(Message)]
#[rtype(result = "Result<(), SessionError>")]
pub(crate) struct Touch {
    pub(crate) caller: Caller,
}

#[derive(Message)]
#[rtype(result = "Result<Allocated, SessionError>")]
pub(crate) struct Allocate {
    pub(crate) caller: Caller,
    pub(crate) bytes: u64,
}

#[derive(Message)]
#[rtype(result = "Result<SessionInfo, SessionError>")]
pub(crate) struct Inspect {
    pub(crate) caller: Caller,
}

/// Ends the session. `waiter` receives the release receipt.
#[derive(Message)]
#[rtype(result = "Result<(), SessionError>")]
pub(crate) struct End {
    pub(crate) caller: Caller,
    pub(crate) reason: EndReason,
    pub(crate) waiter: Option<oneshot::Sender<ReleaseReceipt>>,
}

/// Panics inside the handler, to prove that a crash still ends the session once.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct InjectPanic;
