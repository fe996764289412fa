//! What a session actor is asked to do. Every request names its caller, and
//! the actor checks ownership before anything else.

use std::time::Duration;

use actix::Message;
use tokio::sync::oneshot;

use super::error::SessionError;
use crate::context::{ContextVerdict, Intent, TurnSignal};
use crate::events::ReleaseReceipt;
use crate::expiry::Deadline;
use crate::gpu::{Allocated, OffloadReport};
use crate::ids::{AllocationId, Caller, TraceId};
use crate::lease::LeaseId;
use crate::lifecycle::{EndReason, State};

/// One chat turn.
#[derive(Clone, Debug, Default)]
pub struct Turn {
    /// The application request's trace id, if it has one.
    pub trace_id: Option<TraceId>,
    /// What the context policy looks at: the turn's embedding, intent and
    /// negation. Empty by default (the context is then only kept fresh).
    pub signal: TurnSignal,
}

impl Turn {
    /// A turn with no trace id and no signal.
    pub fn new() -> Self {
        Turn::default()
    }

    /// With the request's trace id.
    pub fn trace_id(mut self, trace_id: TraceId) -> Self {
        self.trace_id = Some(trace_id);
        self
    }

    /// With the turn's embedding.
    pub fn embedding(mut self, embedding: Vec<f32>) -> Self {
        self.signal.embedding = Some(embedding);
        self
    }

    /// With the turn's intent and the classifier's confidence in it.
    pub fn intent(mut self, label: impl Into<String>, confidence: f32) -> Self {
        self.signal.intent = Some(Intent::new(label, confidence));
        self
    }

    /// Marks the turn as rejecting what came before.
    pub fn negation(mut self) -> Self {
        self.signal.negation = true;
        self
    }
}

/// How long an allocation lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// Until the session ends.
    #[default]
    Session,
    /// Until the conversation's context goes stale (or the session ends),
    /// like the KV cache of the turns so far.
    Context,
}

/// A turn was accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnAck {
    /// Turns the session has taken, this one included.
    pub turn: u64,
    /// The session's version after the turn.
    pub version: u64,
    /// What the context policy decided. `Stale` means the context was reset:
    /// its context-bound buffers are being released and a `ContextReset`
    /// event is published; the session stays established.
    pub context: ContextVerdict,
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
    pub(crate) binding: Binding,
}

#[derive(Message)]
#[rtype(result = "Result<SessionInfo, SessionError>")]
pub(crate) struct Inspect {
    pub(crate) caller: Caller,
}

/// Ends the session. `waiter` receives the release receipt. Answers whether
/// this request began the end (`false`: the session was already ending and
/// the request joined that end, whose reason stands; or an idle deadline or
/// eviction that no longer holds left the session live).
#[derive(Message)]
#[rtype(result = "Result<bool, SessionError>")]
pub(crate) struct End {
    pub(crate) caller: Caller,
    pub(crate) reason: EndReason,
    pub(crate) waiter: Option<oneshot::Sender<ReleaseReceipt>>,
    /// Set when a deadline fired (the session re-checks an idle deadline first).
    pub(crate) deadline: Option<Deadline>,
    /// The last-activity stamp the registry saw when it found the session
    /// idle: a different stamp now means activity came in since.
    pub(crate) seen_active_us: u64,
    /// The trace of the request asking for the end, if it came with one.
    pub(crate) trace_id: Option<TraceId>,
}

/// From the sweeper: a session stuck in Closing past its drain deadline ends now.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ForceEnd;

/// Takes a lease for in-flight work.
#[derive(Message)]
#[rtype(result = "Result<LeaseGrant, SessionError>")]
pub(crate) struct TakeLease {
    pub(crate) caller: Caller,
    pub(crate) remote: bool,
}

/// A lease that was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease's id (for heartbeats and release).
    pub id: LeaseId,
    /// For a remote lease: how often to heartbeat. Zero for a local lease.
    pub heartbeat_interval: Duration,
    /// For a remote lease: silence after which it is revoked. Zero for a local lease.
    pub revoked_after: Duration,
}

/// Returns a lease.
#[derive(Message)]
#[rtype(result = "Result<(), SessionError>")]
pub(crate) struct ReturnLease {
    pub(crate) caller: Caller,
    pub(crate) lease: LeaseId,
}

/// Keeps a remote lease alive.
#[derive(Message)]
#[rtype(result = "Result<(), SessionError>")]
pub(crate) struct Heartbeat {
    pub(crate) caller: Caller,
    pub(crate) lease: LeaseId,
}

/// A lease guard was dropped without an explicit release.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LeaseDropped(pub(crate) LeaseId);

/// Stops the drain timer from being armed (fault injection: proves the sweeper catches a stuck Closing).
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct InjectLostDrainTimer;

/// Panics inside the handler, to prove that a crash still ends the session once.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct InjectPanic;

/// Writes into one of the session's buffers.
#[derive(Message)]
#[rtype(result = "Result<(), SessionError>")]
pub(crate) struct WriteBuffer {
    pub(crate) caller: Caller,
    pub(crate) id: AllocationId,
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
}

/// Reads one of the session's buffers back.
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, SessionError>")]
pub(crate) struct ReadBuffer {
    pub(crate) caller: Caller,
    pub(crate) id: AllocationId,
}

/// Soft eviction: move the session's buffers to host memory (from the
/// registry under memory pressure, or an operator).
#[derive(Message)]
#[rtype(result = "Result<OffloadReport, SessionError>")]
pub(crate) struct Offload {
    pub(crate) caller: Caller,
}
