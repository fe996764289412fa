use crate::context::ContextError;
use crate::gpu::GpuError;
use crate::ids::SessionId;
use crate::lease::LeaseError;
use crate::lifecycle::{EndReason, Event, State};

/// Why a session refused a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    /// The caller is neither the session's owner nor an operator. Nothing changed.
    #[error("{caller} may not act on session {id}: it belongs to another owner")]
    Unauthorized {
        /// The session.
        id: SessionId,
        /// Who asked (as text).
        caller: String,
    },
    /// The session is not (or no longer) established; a late message after an end lands here.
    #[error("session {id} is {state}{}: {event} refused", .reason.map(|r| format!(" (ended: {r})")).unwrap_or_default())]
    NotEstablished {
        /// The session.
        id: SessionId,
        /// Its state.
        state: State,
        /// The refused event.
        event: Event,
        /// How it ended, if it has.
        reason: Option<EndReason>,
    },
    /// No such session: never opened here, or ended so long ago it is forgotten.
    #[error("no session {id} on this node (never opened, or ended and forgotten)")]
    Unknown {
        /// The id asked for.
        id: SessionId,
    },
    /// An allocation was refused; nothing was allocated.
    #[error("session {id}: {source}")]
    Allocation {
        /// The session.
        id: SessionId,
        /// Why.
        #[source]
        source: AllocError,
    },
    /// The turn's context signal was malformed (bad embedding or intent).
    /// The turn was refused; the session and its context are unchanged.
    #[error("session {id}: turn refused: {source}")]
    Context {
        /// The session.
        id: SessionId,
        /// What was wrong.
        #[source]
        source: ContextError,
    },
    /// A lease operation was refused (released twice, revoked, unknown).
    /// The session is not affected.
    #[error("session {id}: {source}")]
    Lease {
        /// The session.
        id: SessionId,
        /// Why.
        #[source]
        source: LeaseError,
    },
    /// The runtime is stopped; nothing can be done.
    #[error("the sessionbus runtime is not running")]
    RuntimeStopped,
}

impl SessionError {
    /// Whether this is the "session gone" answer to a late message.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            SessionError::NotEstablished {
                state: State::Closing | State::Closed,
                ..
            }
        )
    }
}

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Zero-byte buffers are not allowed.
    #[error("an allocation of 0 bytes is not allowed")]
    ZeroSize,
    /// Larger than the device's largest buffer.
    #[error("{requested} bytes is more than the device's largest buffer ({max} bytes); split it")]
    TooLarge {
        /// Bytes asked for.
        requested: u64,
        /// The device's limit.
        max: u64,
    },
    /// Would take the session past its budget (`sessions.max_session_bytes`).
    #[error("{requested} bytes would take the session to {} of its {budget}-byte budget (holds {used})", .used + .requested)]
    OverSessionBudget {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the session holds or has in flight.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// The GPU refused.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}
