use crate::budget::BudgetScope;
use crate::context::ContextError;
use crate::gpu::GpuError;
use crate::ids::SessionId;
use crate::lease::LeaseError;
use crate::lifecycle::{EndReason, Event, State};

/// Why a session refused a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
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
    /// A fork's new session could not be opened (the session limit, a
    /// shutdown); its forked table was released.
    #[error("session {id}: the fork could not be opened: {source}")]
    ForkRefused {
        /// The session that was forked.
        id: SessionId,
        /// Why.
        #[source]
        source: crate::registry::OpenError,
    },
    /// A KV block operation was refused; nothing changed.
    #[error("session {id}: {source}")]
    Kv {
        /// The session.
        id: SessionId,
        /// Why.
        #[source]
        source: crate::kv_store::KvStoreError,
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
    /// An offload (soft eviction) was refused; the session and its buffers
    /// are unchanged. `why` says what stood in the way (a lease held, an
    /// allocation in flight, already offloaded, nothing on the GPU, ...).
    #[error("session {id}: offload refused: {why}")]
    OffloadRefused {
        /// The session.
        id: SessionId,
        /// What stood in the way.
        why: String,
    },
    /// The runtime is stopped; nothing can be done.
    #[error("the sessionbus runtime is stopped")]
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
#[non_exhaustive]
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
    /// Would take the session past its budget (`sessions.max_session_memory`).
    #[error("{requested} bytes would take the session to {} of its {budget}-byte budget (holds {used})", .used + .requested)]
    OverSessionBudget {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the session holds or has in flight.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// Larger than a budget could ever hold, however much is given back:
    /// refused at once rather than waited for.
    #[error("{requested} bytes can never fit the {scope} budget of {limit} bytes")]
    ExceedsBudget {
        /// Which budget (`device` or `owner`).
        scope: BudgetScope,
        /// Bytes asked for.
        requested: u64,
        /// The budget.
        limit: u64,
    },
    /// A budget has no room now and `budget.when_exhausted = "fail"`.
    #[error(
        "the {scope} GPU budget is full: {used} of {limit} bytes in use, {requested} more asked for"
    )]
    OverBudget {
        /// Which budget (`device` or `owner`).
        scope: BudgetScope,
        /// Bytes asked for.
        requested: u64,
        /// Bytes charged to that budget now.
        used: u64,
        /// The budget.
        limit: u64,
    },
    /// Waited `budget.wait_timeout` for room in a budget; none came.
    #[error(
        "waited {waited_ms} ms for {requested} bytes of room in the {scope} GPU budget; none came"
    )]
    BudgetWaitTimedOut {
        /// Which budget was full when the wait began.
        scope: BudgetScope,
        /// Bytes asked for.
        requested: u64,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The session's buffers are in host memory (offloaded) and could not be
    /// brought back; they are kept there, nothing is lost. The cause says why.
    #[error("the session's offloaded buffers could not be restored: {0}")]
    RestoreFailed(Box<AllocError>),
    /// The GPU refused.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}
