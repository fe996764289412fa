//! What the bus carries: lifecycle events, shared by reference (`Arc`) so
//! fan-out to many subscribers copies nothing.
//!
//! Every event serialises (serde): ids and trace ids as their hex text,
//! wall-clock moments as RFC 3339, durations as microseconds (`*_us`), the
//! owner and client address as given (they are the application's data;
//! `Debug` never shows them). Monotonic instants stay in the process.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::Message;
use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::context::StaleReason;
use crate::expiry::Deadline;
use crate::gpu::Allocated;
use crate::ids::{Caller, ClientIp, Owner, SessionId, TraceId};
use crate::lifecycle::EndReason;
use crate::serde_time::{as_micros, micros, wall};
use crate::supervision::ReleaseSteps;

/// A session was opened and is established.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SessionStarted {
    /// The new session.
    pub id: SessionId,
    /// Who owns it.
    pub owner: Owner,
    /// The trace of the request that opened it.
    pub trace_id: TraceId,
    /// When it was opened (wall clock).
    #[serde(serialize_with = "wall")]
    pub at: SystemTime,
    /// The client's address, if the application gave one (`OpenOptions::client_ip`).
    /// For audit: pseudonymise before writing it anywhere.
    pub client_ip: Option<ClientIp>,
}

/// A session ended. Published exactly once per session, by the registry only.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SessionEndEvent {
    /// The session.
    pub id: SessionId,
    /// Who owned it.
    pub owner: Owner,
    /// Why it ended.
    pub reason: EndReason,
    /// The GPU buffers it held when it ended (the engine's own ledger; the
    /// release receipt says what the pool actually freed).
    pub allocations: Vec<Allocated>,
    /// Sum of `allocations`' bytes.
    pub bytes: u64,
    /// Bytes of allocations requested but not yet answered when it ended.
    /// The pool frees them too (it executes requests in order), so the
    /// receipt may count more than `allocations`.
    pub in_flight_bytes: u64,
    /// Of `bytes`, those held in host memory after an offload (soft eviction)
    /// rather than on the GPU.
    pub offloaded_bytes: u64,
    /// When it was opened.
    #[serde(serialize_with = "wall")]
    pub created_at: SystemTime,
    /// Its last activity (message, touch, allocation or lease operation).
    #[serde(serialize_with = "wall")]
    pub last_active_at: SystemTime,
    /// When it ended, i.e. left Established (wall clock, for logs and audit).
    #[serde(serialize_with = "wall")]
    pub ended_at: SystemTime,
    /// When it ended (monotonic, for measuring how long the release took).
    #[serde(skip)]
    pub ended_instant: Instant,
    /// The idle or TTL deadline that ended it, with the moment it fired;
    /// `None` for every other reason.
    pub deadline: Option<Deadline>,
    /// How its leases were drained before this event was published.
    pub drain: Drain,
    /// Grows by one with every accepted event on the session; the end carries the last one.
    pub version: u64,
    /// The trace of the request that opened it.
    pub trace_id: TraceId,
    /// Who asked for the end (a close by the owner or an operator, the
    /// runtime's own operators for expiry and shutdown); `None` when no
    /// request ended it (disconnect, crash, lease lost).
    pub ended_by: Option<Caller>,
    /// The trace of the request that ended it, if it came with one
    /// (`close_traced`); see [`SessionEndEvent::request_trace_id`].
    pub end_trace_id: Option<TraceId>,
    /// The client's address given at open, if any.
    pub client_ip: Option<ClientIp>,
}

impl SessionEndEvent {
    /// The trace this end belongs to: the ending request's, else the opening one's.
    pub fn request_trace_id(&self) -> TraceId {
        self.end_trace_id.unwrap_or(self.trace_id)
    }
}

impl SessionEndEvent {
    /// GPU bytes the session still had (or was being given) when it ended:
    /// what its release gives back to the device and to the budgets.
    pub fn gpu_bytes(&self) -> u64 {
        self.bytes - self.offloaded_bytes + self.in_flight_bytes
    }
}

/// A session's conversation context went stale and was dropped; the session
/// lives on. Its context-bound buffers have been released.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ContextReset {
    /// The session.
    pub id: SessionId,
    /// Who owns it.
    pub owner: Owner,
    /// Why the context was stale.
    pub reason: StaleReason,
    /// The turn that found it stale (the first turn of the new context).
    pub turn: u64,
    /// Context-bound buffers released.
    pub buffers: u64,
    /// Bytes those buffers held.
    pub bytes: u64,
    /// When the reset happened (wall clock).
    #[serde(serialize_with = "wall")]
    pub at: SystemTime,
    /// The trace of the turn that caused it (the session's own if the turn had none).
    pub trace_id: TraceId,
    /// The client's address given at open, if any.
    pub client_ip: Option<ClientIp>,
}

/// A session's GPU memory has been given back.
///
/// Serialises with `end_to_release_us` and `paced_for_us` in place of the
/// two monotonic instants (the end event has the wall-clock `ended_at`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseReceipt {
    /// The session.
    pub id: SessionId,
    /// Why it ended.
    pub reason: EndReason,
    /// Buffers destroyed.
    pub buffers: u64,
    /// Bytes those buffers held.
    pub bytes: u64,
    /// When the session ended.
    pub ended_at: Instant,
    /// When its buffers were destroyed and the device polled.
    pub released_at: Instant,
    /// Time spent in the release queue: waiting behind more urgent releases,
    /// for a free release slot, and for the pacer (near zero unless a storm
    /// is being paced).
    pub paced_for: Duration,
    /// What went wrong, if the memory could not be released (an incident, logged as an error).
    pub error: Option<String>,
    /// The deadline that ended the session, if one did: `released_at - deadline.at`
    /// is deadline → memory back.
    pub deadline: Option<Deadline>,
    /// The trace of the end ([`SessionEndEvent::request_trace_id`]).
    pub trace_id: TraceId,
    /// How long each step of the destroy path took, and which one was
    /// stuck if the release had to be force-completed.
    pub steps: ReleaseSteps,
}

/// How an ending session's leases (in-flight work) were drained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Drain {
    /// Leases held when the end began (0: nothing to wait for).
    pub leases: u32,
    /// Leases still held when the end was forced: by the drain deadline, the
    /// sweeper, or every handle going away. 0 means the drain was clean.
    pub forced: u32,
    /// From the start of the end to its publication.
    #[serde(rename = "waited_us", serialize_with = "micros")]
    pub waited: Duration,
}

impl Drain {
    /// Whether the end had to be forced past leases still held.
    pub fn was_forced(&self) -> bool {
        self.forced > 0
    }
}

impl ReleaseReceipt {
    /// The receipt of a session that held nothing on the GPU.
    pub(crate) fn nothing_released(ended: &SessionEndEvent) -> Self {
        ReleaseReceipt {
            id: ended.id,
            reason: ended.reason,
            buffers: 0,
            bytes: 0,
            ended_at: ended.ended_instant,
            released_at: crate::clock::now(),
            paced_for: Duration::ZERO,
            error: None,
            deadline: ended.deadline,
            trace_id: ended.request_trace_id(),
            steps: ReleaseSteps::default(),
        }
    }

    /// Whether the session behind `ended` held nothing on the GPU, so no release is needed.
    pub(crate) fn nothing_to_release(ended: &SessionEndEvent) -> bool {
        ended.allocations.is_empty() && ended.in_flight_bytes == 0
    }

    /// From the end of the session to its memory being back.
    pub fn end_to_release(&self) -> Duration {
        self.released_at.saturating_duration_since(self.ended_at)
    }
}

/// Any lifecycle event. Subscribers choose which kinds they get with [`EventKinds`].
///
/// Serialises as `{"kind": "started" | "ended" | "released" | "context_reset", "event": {…}}`.
#[derive(Clone, Debug, Message, Serialize)]
#[serde(tag = "kind", content = "event", rename_all = "snake_case")]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// A session started.
    Started(Arc<SessionStarted>),
    /// A session ended.
    Ended(Arc<SessionEndEvent>),
    /// A session's memory was released.
    Released(Arc<ReleaseReceipt>),
    /// A session's context went stale and was reset (not an end).
    ContextReset(Arc<ContextReset>),
}

impl LifecycleEvent {
    /// The event's kind, as a one-bit set.
    pub fn kind(&self) -> EventKinds {
        match self {
            LifecycleEvent::Started(_) => EventKinds::STARTED,
            LifecycleEvent::Ended(_) => EventKinds::ENDED,
            LifecycleEvent::Released(_) => EventKinds::RELEASED,
            LifecycleEvent::ContextReset(_) => EventKinds::CONTEXT_RESET,
        }
    }

    /// The session the event is about.
    pub fn session_id(&self) -> SessionId {
        match self {
            LifecycleEvent::Started(e) => e.id,
            LifecycleEvent::Ended(e) => e.id,
            LifecycleEvent::Released(e) => e.id,
            LifecycleEvent::ContextReset(e) => e.id,
        }
    }
}

impl Serialize for ReleaseReceipt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut receipt = s.serialize_struct("ReleaseReceipt", 10)?;
        receipt.serialize_field("id", &self.id)?;
        receipt.serialize_field("reason", &self.reason)?;
        receipt.serialize_field("buffers", &self.buffers)?;
        receipt.serialize_field("bytes", &self.bytes)?;
        receipt.serialize_field("end_to_release_us", &as_micros(self.end_to_release()))?;
        receipt.serialize_field("paced_for_us", &as_micros(self.paced_for))?;
        receipt.serialize_field("error", &self.error)?;
        receipt.serialize_field("deadline", &self.deadline)?;
        receipt.serialize_field("trace_id", &self.trace_id)?;
        receipt.serialize_field("steps", &self.steps)?;
        receipt.end()
    }
}

/// A fired deadline serialises as its kind and how late it fired (its
/// instants stay in the process).
impl Serialize for Deadline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut deadline = s.serialize_struct("Deadline", 2)?;
        deadline.serialize_field("kind", &self.kind)?;
        deadline.serialize_field("lateness_us", &as_micros(self.lateness()))?;
        deadline.end()
    }
}

bitflags::bitflags! {
    /// A set of event kinds a subscriber wants (`STARTED | ENDED`, …).
    #[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
    pub struct EventKinds: u8 {
        /// Session started.
        const STARTED = 1;
        /// Session ended.
        const ENDED = 1 << 1;
        /// Session memory released.
        const RELEASED = 1 << 2;
        /// Session context reset.
        const CONTEXT_RESET = 1 << 3;
        /// Every kind.
        const ALL = Self::STARTED.bits()
            | Self::ENDED.bits()
            | Self::RELEASED.bits()
            | Self::CONTEXT_RESET.bits();
    }
}
