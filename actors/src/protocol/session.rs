//! What a session actor is asked to do. Every request names its caller, and
//! the actor checks ownership before anything else.

use actix::Message;
use tokio::sync::oneshot;

use crate::events::ReleaseReceipt;
use crate::expiry::Deadline;
use crate::gpu::Allocated;
use crate::ids::{AllocationId, Caller, TraceId};
use crate::lease::LeaseId;
use crate::lifecycle::EndReason;
use crate::session::{Binding, LeaseGrant, SessionError, SessionInfo, Turn, TurnAck};

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
/// `End::seen_active_us` of an end that holds whatever the session did since.
pub(crate) const NOT_SEEN_IDLE: u64 = u64::MAX;

#[derive(Message)]
#[rtype(result = "Result<bool, SessionError>")]
pub(crate) struct End {
    pub(crate) caller: Caller,
    pub(crate) reason: EndReason,
    pub(crate) waiter: Option<oneshot::Sender<ReleaseReceipt>>,
    /// Set when a deadline fired (the session re-checks an idle deadline first).
    pub(crate) deadline: Option<Deadline>,
    /// The last-activity stamp the registry saw when it found the session
    /// idle: a different stamp now means activity came in since, and an
    /// idle deadline or a pressure eviction no longer holds.
    /// [`NOT_SEEN_IDLE`] for ends nobody decided from idleness (a close, an
    /// operator's end with any reason, a shutdown).
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
#[cfg(feature = "testing")]
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct InjectLostDrainTimer;

/// Panics inside the handler, to prove that a crash still ends the session once.
#[cfg(feature = "testing")]
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
#[rtype(result = "Result<crate::session::SessionOffload, SessionError>")]
pub(crate) struct Offload {
    pub(crate) caller: Caller,
    /// `budget.offload_host_memory` for the KV blocks (the engine's own
    /// offloads under pressure); `None` for an application's offload.
    pub(crate) host_limit: Option<u64>,
}

/// Appends tokens to the session's KV block table (opening it on first use).
#[derive(Message)]
#[rtype(result = "Result<crate::kv_store::KvAppendReport, SessionError>")]
pub(crate) struct AppendTokens {
    pub(crate) caller: Caller,
    pub(crate) tokens: Vec<crate::kv::TokenId>,
    /// The sharing scope if the table opens now: the owner when `None`.
    pub(crate) salt: Option<crate::kv::Salt>,
}

/// Forks the session's KV block table: a new table sharing every full
/// block, with the partial last block copied; answers it and the owner.
#[derive(Message)]
#[rtype(result = "Result<(crate::kv::TableId, crate::ids::Owner), SessionError>")]
pub(crate) struct ForkKv {
    pub(crate) caller: Caller,
}

/// Where the session's KV blocks are, in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::kv_store::KvBlock>, SessionError>")]
pub(crate) struct KvBlocks {
    pub(crate) caller: Caller,
}

/// Writes into one of the session's KV blocks.
#[derive(Message)]
#[rtype(result = "Result<(), SessionError>")]
pub(crate) struct WriteKv {
    pub(crate) caller: Caller,
    pub(crate) index: usize,
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
}

/// Reads one of the session's KV blocks back.
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, SessionError>")]
pub(crate) struct ReadKv {
    pub(crate) caller: Caller,
    pub(crate) index: usize,
}

/// Every handle (and lease) of the session is gone: it ends as
/// disconnected, unless one was attached since.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Disconnect;

/// From the registry: the session was idle since `seen_active_us` for
/// `sessions.passivate_after`; it parks if it still is, and nothing holds it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Passivate {
    pub(crate) seen_active_us: u64,
}
