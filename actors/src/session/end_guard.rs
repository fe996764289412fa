//! The session's record, and the guarantee that its end is reported once.
//!
//! Ground rules: the session actor keeps everything the end event needs in an
//! `EndGuard`. Reporting the end consumes that data, so it can happen only
//! once. If the actor dies without reporting (a panic in a handler drops an
//! actix actor, and nothing restarts it), the guard's `Drop` reports the end
//! with reason `Crashed`, carrying the ledger, so the memory is still released.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::ledger::Ledger;
use super::settings::SessionSettings;
use super::shared::SessionShared;
use crate::clock;
use crate::events::{Drain, ReleaseReceipt, SessionEndEvent};
use crate::expiry::Deadline;
use crate::ids::{Caller, Owner, SessionId, TraceId};
use crate::lifecycle::EndReason;
use crate::protocol::registry::SessionFinished;

#[derive(Debug)]
pub(crate) struct EndGuard {
    pub(crate) id: SessionId,
    /// The trace id's two words (a `TraceId` would align the record to 16 bytes).
    trace: [u64; 2],
    /// When it was opened, in nanoseconds since the Unix epoch.
    created_ns: u64,
    pub(crate) version: u64,
    pub(crate) ledger: Ledger,
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) settings: Arc<SessionSettings>,
    /// The client's address given at open (for the audit trail).
    /// Boxed: only sessions opened with an address have one.
    pub(crate) client_ip: Option<Box<crate::ids::ClientIp>>,
    /// Who asked for the end under way, and the trace of that request.
    /// Boxed: only an ending session has one.
    pub(crate) end_request: Option<Box<(Caller, Option<TraceId>)>>,
    /// The session's KV block table, once it appended tokens.
    pub(crate) kv_table: Option<crate::kv::TableId>,
    /// Turns taken (saturating: 4 billion turns is not a conversation, and
    /// here it fits beside `reported` in the record's padding).
    pub(crate) turns: u32,
    reported: bool,
}

impl EndGuard {
    pub(crate) fn new(
        id: SessionId,
        trace_id: TraceId,
        shared: Arc<SessionShared>,
        settings: Arc<SessionSettings>,
    ) -> Self {
        let now = SystemTime::now();
        EndGuard {
            id,
            trace: [(trace_id.0 >> 64) as u64, trace_id.0 as u64],
            created_ns: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos().try_into().unwrap_or(u64::MAX)),
            version: 1,
            ledger: Ledger::default(),
            shared,
            settings,
            client_ip: None,
            end_request: None,
            kv_table: None,
            turns: 0,
            reported: false,
        }
    }

    /// With the client's address given at open.
    pub(crate) fn with_client_ip(mut self, ip: Option<crate::ids::ClientIp>) -> Self {
        self.client_ip = ip.map(Box::new);
        self
    }

    /// Who owns the session.
    pub(crate) fn owner(&self) -> &Owner {
        self.shared.owner()
    }

    /// The trace id given at open (or drawn then).
    pub(crate) fn trace_id(&self) -> TraceId {
        TraceId((u128::from(self.trace[0]) << 64) | u128::from(self.trace[1]))
    }

    /// When the session was opened.
    pub(crate) fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_nanos(self.created_ns)
    }

    /// The last activity on the wall clock, from the monotonic stamp in the
    /// shared atomics (kept once there rather than twice per session).
    fn last_active_wall(&self) -> SystemTime {
        let epoch = self.settings.epoch;
        let since =
            clock::now().saturating_duration_since(epoch.instant(self.shared.last_active_us()));
        SystemTime::now()
            .checked_sub(since)
            .unwrap_or(self.created_at())
            .max(self.created_at())
    }

    /// Takes the record out for a session that parks: what every session
    /// has, and (only if it has any) its memory, KV table and client
    /// address. This guard is left as if reported, so its drop reports
    /// nothing; [`unpark`](Self::unpark) builds the guard again.
    pub(crate) fn park(&mut self) -> (ParkedRecord, Option<ParkedHoldings>) {
        debug_assert!(
            self.end_request.is_none(),
            "no end is under way in a parking session"
        );
        self.reported = true;
        let record = ParkedRecord {
            id: self.id,
            trace: self.trace,
            created_ns: self.created_ns,
            version: self.version,
            settings: self.settings.clone(),
        };
        let holdings = (!self.ledger.is_clear()
            || self.client_ip.is_some()
            || self.kv_table.is_some())
        .then(|| ParkedHoldings {
            ledger: std::mem::take(&mut self.ledger),
            client_ip: self.client_ip.take(),
            kv_table: self.kv_table.take(),
        });
        (record, holdings)
    }

    /// The guard of a parked session starting again.
    pub(crate) fn unpark(
        record: ParkedRecord,
        holdings: Option<ParkedHoldings>,
        shared: Arc<SessionShared>,
    ) -> Self {
        let ParkedHoldings {
            ledger,
            client_ip,
            kv_table,
        } = holdings.unwrap_or_default();
        EndGuard {
            id: record.id,
            trace: record.trace,
            created_ns: record.created_ns,
            version: record.version,
            ledger,
            shared,
            settings: record.settings,
            client_ip,
            end_request: None,
            kv_table,
            turns: 0,
            reported: false,
        }
    }

    /// Whether the end has been reported (the ledger then belongs to the end event).
    pub(crate) fn has_reported(&self) -> bool {
        self.reported
    }

    /// Reports the end to the registry. Only the first call does anything.
    pub(crate) fn report(&mut self, ending: Ending, forced: u32) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let reason = ending.reason;
        // Every block the session referenced is dropped here, exactly once,
        // whatever ended it (a crash reports through `Drop` too).
        // KV blocks in host memory count as offloaded bytes, as buffers do.
        let kv_host_bytes = match (self.kv_table.take(), &self.settings.kv) {
            (Some(table), Some(kv)) => kv.release_table(table),
            _ => 0,
        };
        let began_us = self.settings.epoch.micros(ending.began);
        self.shared.set_closing(reason, began_us);
        self.shared.set_gone();
        let in_flight_bytes = self.ledger.in_flight();
        let offloaded = self.ledger.is_offloaded();
        let (allocations, bytes) = self.ledger.take();
        let offloaded_bytes = if offloaded { bytes } else { 0 } + kv_host_bytes;
        let (ended_by, end_trace_id) = match self.end_request.take() {
            Some(request) => (Some(request.0), request.1),
            None => (None, None),
        };
        let event = SessionEndEvent {
            id: self.id,
            owner: self.owner().clone(),
            reason,
            allocations,
            bytes,
            in_flight_bytes,
            offloaded_bytes,
            created_at: self.created_at(),
            last_active_at: self.last_active_wall(),
            ended_at: ending.began_wall,
            ended_instant: ending.began,
            deadline: ending.deadline,
            drain: Drain {
                leases: ending.leases,
                forced,
                waited: clock::now().saturating_duration_since(ending.began),
            },
            version: self.version + 1, // the end itself is the last accepted event
            trace_id: self.trace_id(),
            ended_by,
            end_trace_id,
            client_ip: self.client_ip.as_deref().copied(),
        };
        let message = SessionFinished {
            event,
            waiters: ending.waiters,
        };
        // This message carries memory to give back, so it must not be refused.
        // A full registry mailbox falls back to `do_send`, which ignores capacity:
        // the overflow is bounded by the number of sessions (each reports once).
        match self.settings.registry.try_send(message) {
            Ok(()) => {}
            Err(actix::dev::SendError::Full(message)) => self.settings.registry.do_send(message),
            Err(actix::dev::SendError::Closed(_)) => tracing::error!(
                target: "sessionbus::supervisor",
                event = "session.end_unreported",
                session_id = %self.id,
                %reason,
                "the registry is gone; this session's end cannot be published"
            ),
        }
    }
}

/// What a parked session's record keeps of every session: no shared
/// atomics (the slot it is parked in is in them) and nothing only some
/// sessions have (`ParkedHoldings`), nor the turn count (the parked
/// session keeps it beside a flag, in what would be padding here).
#[derive(Debug)]
pub(crate) struct ParkedRecord {
    pub(crate) id: SessionId,
    trace: [u64; 2],
    created_ns: u64,
    version: u64,
    pub(crate) settings: Arc<SessionSettings>,
}

/// What a parked session's record keeps only if it has it.
#[derive(Debug, Default)]
pub(crate) struct ParkedHoldings {
    ledger: Ledger,
    client_ip: Option<Box<crate::ids::ClientIp>>,
    kv_table: Option<crate::kv::TableId>,
}

/// An end that has begun: the session is Closing and may be draining leases.
#[derive(Debug)]
pub(crate) struct Ending {
    pub(crate) reason: EndReason,
    pub(crate) began: Instant,
    pub(crate) began_wall: SystemTime,
    pub(crate) deadline: Option<Deadline>,
    /// Leases held when the end began.
    pub(crate) leases: u32,
    pub(crate) waiters: Vec<oneshot::Sender<ReleaseReceipt>>,
}

impl Ending {
    pub(crate) fn new(reason: EndReason, deadline: Option<Deadline>, leases: usize) -> Self {
        Ending {
            reason,
            began: clock::now(),
            began_wall: SystemTime::now(),
            deadline,
            leases: leases.try_into().unwrap_or(u32::MAX),
            waiters: Vec::new(),
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.reported {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "session.crashed",
                session_id = %self.id,
                "session actor died without ending; reporting it as crashed"
            );
            self.report(Ending::new(EndReason::Crashed, None, 0), 0);
        }
    }
}
