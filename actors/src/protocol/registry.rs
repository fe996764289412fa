//! What the registry actor is asked: by the engine (open, attach, close,
//! subscribe, stats, shutdown), by sessions (their end, rearmed deadlines,
//! context resets, revoked leases, memory that moved, room to make) and by
//! cleanup actors (completed releases).

use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use tokio::sync::oneshot;

use crate::budget::BudgetScope;
use crate::bus::{Delivery, Sink, SubscriptionId};
use crate::context::ContextPolicyFactory;
use crate::events::{ContextReset, EventKinds, ReleaseReceipt, SessionEndEvent};
use crate::expiry::ExpiryPolicy;
use crate::ids::{Caller, Owner, SessionId, TraceId};
use crate::lifecycle::EndReason;
use crate::registry::{DeviceLossReport, OpenError, RegistryStats, ShutdownReport};
use crate::session::{Link, SessionError, SessionShared};

/// A newly opened or attached session's parts, from which a handle is built.
pub(crate) struct Opened {
    pub(crate) id: SessionId,
    /// Counted as a handle from the start: a session attached to cannot
    /// end as disconnected before the new handle exists.
    pub(crate) link: Link,
}

#[derive(Message)]
#[rtype(result = "Result<Opened, OpenError>")]
pub(crate) struct Open {
    pub(crate) owner: Owner,
    pub(crate) trace_id: TraceId,
    /// Overrides the configured expiry policy for this session.
    pub(crate) expiry: Option<ExpiryPolicy>,
    /// Overrides the engine's context policy for this session.
    pub(crate) context_policy: Option<ContextPolicyFactory>,
    pub(crate) client_ip: Option<crate::ids::ClientIp>,
    /// A KV block table the new session starts with (a fork's); released
    /// here if the open is refused.
    pub(crate) kv_table: Option<crate::kv::TableId>,
}

#[derive(Message)]
#[rtype(result = "Result<Opened, SessionError>")]
pub(crate) struct Attach {
    pub(crate) id: SessionId,
    pub(crate) caller: Caller,
}

/// Ends a session by id (for callers that hold no handle, e.g. an HTTP request).
#[derive(Message)]
#[rtype(result = "Result<ReleaseReceipt, SessionError>")]
pub(crate) struct CloseById {
    pub(crate) id: SessionId,
    pub(crate) caller: Caller,
    /// The trace of the closing request, if it came with one.
    pub(crate) trace_id: Option<TraceId>,
    /// `Closed` for a close; another reason for an end decided outside the
    /// engine (a cluster layer ending a fenced node's sessions with `NodeLost`).
    pub(crate) reason: EndReason,
}

/// Resolves with the receipt of a session once it is released.
#[derive(Message)]
#[rtype(result = "Result<ReleaseReceipt, SessionError>")]
pub(crate) struct AwaitReceipt {
    pub(crate) id: SessionId,
    pub(crate) caller: Caller,
}

/// A session's end, from its actor (or its drop guard).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SessionFinished {
    pub(crate) event: SessionEndEvent,
    pub(crate) waiters: Vec<oneshot::Sender<ReleaseReceipt>>,
}

/// From a session whose idle deadline fired while it was in fact active
/// (a message was queued ahead of the end): file it again.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Rearm(pub(crate) SessionId);

/// From a session: its context went stale and its context-bound memory is back.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ContextWasReset(pub(crate) ContextReset);

/// From a session: one of its remote leases stopped heartbeating and was revoked.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LeaseRevoked;

/// Sessions' memory is back, from the cleanup: the receipts of one batch
/// for this shard's sessions, in the order they were released.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ReleasesCompleted {
    pub(crate) receipts: Vec<ReleaseReceipt>,
}

#[derive(Message)]
#[rtype(result = "SubscriptionId")]
pub(crate) struct Subscribe {
    /// Drawn once for every shard (`bus::next_subscription_id`).
    pub(crate) id: SubscriptionId,
    pub(crate) sink: Sink,
    pub(crate) kinds: EventKinds,
    pub(crate) delivery: Delivery,
}

#[derive(Message)]
#[rtype(result = "bool")]
pub(crate) struct Unsubscribe(pub(crate) SubscriptionId);

#[derive(Message)]
#[rtype(result = "RegistryStats")]
pub(crate) struct Stats;

/// Ends every session with reason `shutdown` and resolves when all memory is
/// back, or at `deadline` with what is left (see `registry/shutdown.rs`).
#[derive(Message)]
#[rtype(result = "ShutdownReport")]
pub(crate) struct Shutdown {
    pub(crate) deadline: Duration,
}

/// Ends every live session with `reason` (an operator's end). Answers once
/// every session has answered the end (how many it ended, how many were
/// already ending) and, with `wait_for_releases`, once every one of their
/// releases is complete or that long has passed.
#[derive(Message)]
#[rtype(result = "DeviceLossReport")]
pub(crate) struct EndAll {
    pub(crate) reason: EndReason,
    pub(crate) wait_for_releases: Option<Duration>,
}

/// Resolves when reliable subscribers' backlogs are empty, or at `timeout`,
/// with the number of events still waiting.
#[derive(Message)]
#[rtype(result = "usize")]
pub(crate) struct FlushBus {
    pub(crate) timeout: Duration,
}

/// From a session whose allocation waits for room (`when_exhausted =
/// "evict"`): make room in `scope` by evicting idle sessions.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct MakeRoom {
    pub(crate) requester: SessionId,
    pub(crate) owner: Owner,
    pub(crate) scope: BudgetScope,
}

/// From a session whose KV operation found no free or cached block: make
/// room from idle sessions that hold KV blocks (least recently active
/// first), at most `sessions` of them.
#[derive(Message)]
#[rtype(result = "KvRoomMade")]
pub(crate) struct EvictForKv {
    pub(crate) requester: SessionId,
    pub(crate) sessions: usize,
    /// Whether idle holders may be offloaded (`false`: a second round, after
    /// offloads freed too little: they are ended).
    pub(crate) offload: bool,
}

/// The sessions picked to make KV room: those asked to end (wait for their
/// receipts), and those to offload (the asker sends them `Offload` and waits).
#[derive(Debug, Default, actix::MessageResponse)]
pub(crate) struct KvRoomMade {
    pub(crate) ended: Vec<SessionId>,
    pub(crate) offloading: Vec<Arc<SessionShared>>,
    /// `budget.offload_host_memory`, for the offloads' `host_limit`.
    pub(crate) host_limit: u64,
}

/// From a session: its buffers moved between the GPU and host memory.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) enum MemoryMoved {
    /// Offloaded to host memory (soft eviction).
    Offloaded { id: SessionId, bytes: u64 },
    /// `bytes` brought back to the GPU; `whole`: nothing of the session is in
    /// host memory any more (buffers and KV blocks can come back in two steps).
    Restored {
        id: SessionId,
        bytes: u64,
        whole: bool,
    },
    /// Picked for eviction as idle, but work came in since: it stays.
    Kept { id: SessionId },
}

/// The ids of live (established) sessions; with `active_within`, only those
/// with activity in that window (see `registry/listing.rs`).
#[derive(Message)]
#[rtype(result = "Vec<SessionId>")]
pub(crate) struct LiveSessions {
    pub(crate) active_within: Option<Duration>,
}

/// Sent to one shard once every shard has ended its sessions (after a
/// shutdown or a device loss): gives the KV slabs back to the device (every
/// table is released by then) and, with `hooks_until`, waits up to then for
/// hooks still running (up to the shutdown's deadline). Answers the KV store's and the hooks' stats. Sent to
/// a shard so the waiting runs on an engine thread, whatever the caller's executor.
#[derive(Message)]
#[rtype(result = "AfterAllEnded")]
pub(crate) struct ReleaseSharedAfterEnds {
    pub(crate) wait_for_hooks: bool,
}

#[derive(actix::MessageResponse)]
pub(crate) struct AfterAllEnded {
    pub(crate) kv: Option<crate::kv::KvStats>,
    pub(crate) hooks: crate::hooks::HookStats,
    /// The shared books, read after every shard is done (a shard's own
    /// report read them while others were still releasing).
    pub(crate) budget: crate::budget::BudgetStats,
    pub(crate) release_queue: crate::cleanup::ReleaseQueueStats,
}

/// What memory pressure may pick from one shard: its idle sessions that
/// match `want`, for the coordinator, which picks across every shard.
#[derive(Message)]
#[rtype(result = "Vec<PressureCandidate>")]
pub(crate) struct PressureCandidates {
    pub(crate) want: CandidateFilter,
}

#[derive(Clone)]
pub(crate) struct CandidateFilter {
    pub(crate) requester: SessionId,
    /// Only this owner's sessions (a per-owner budget), or anyone's.
    pub(crate) owner: Option<Owner>,
    /// Sessions holding KV blocks (else: holding GPU bytes).
    pub(crate) kv: bool,
    /// Last active at or before this (epoch microseconds).
    pub(crate) idle_since_us: u64,
}

/// One idle session pressure may offload or end.
pub(crate) struct PressureCandidate {
    pub(crate) id: SessionId,
    pub(crate) last_active_us: u64,
    pub(crate) bytes: u64,
    pub(crate) owner: Owner,
    pub(crate) shared: Arc<SessionShared>,
}

/// A parked session of this shard started again: the registry looks for
/// idle sessions again `passivate_after` from now.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SessionRevived;
