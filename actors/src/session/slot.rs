//! Where a session's actor is, and the one way to send it anything.
//!
//! A session's actor is running (the slot holds its address), parked (idle
//! past `sessions.passivate_after`, it gave up its actor and mailbox and the
//! slot holds its whole state, compacted), or gone (its end is reported). Every
//! sender (handles, the registry, memory pressure, a dropped handle's
//! disconnect) goes through the slot: a parked session is started again on
//! its shard's thread, from its state as it was, before the message is
//! queued, so no sender sees a difference, and messages stay in order.
//!
//! Ground rules: a message is queued while the slot's lock is held and is
//! counted in `inbox` until its handler runs (`Via`). A session parks only
//! under the same lock, with `inbox` at zero, from its `stopping` (right
//! after its mailbox ran dry): so nothing is ever left in the mailbox of an
//! actor that parked, and a message racing the park either stops it (it was
//! counted first) or finds the slot parked and revives it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};

use actix::dev::{Request, SendError, ToEnvelope};
use actix::{Actor, Addr, Handler, Message};

use super::actor::{ParkedSession, SessionActor};
use super::shared::SessionShared;
use crate::protocol::session::Disconnect;

pub(crate) enum Slot {
    Running(Addr<SessionActor>),
    Parked(ParkedSession),
    Gone,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::Running(_) => "Running",
            Slot::Parked(_) => "Parked",
            Slot::Gone => "Gone",
        })
    }
}

/// A message queued through the slot, with its place in the session's
/// `inbox` count: the ticket gives it back when dropped, once the message
/// is answered (with the future that answers it, if one does), or unread
/// (a request its sender gave up on is never handled, actix drops it).
pub(crate) struct Via<M> {
    pub(crate) msg: M,
    pub(crate) ticket: Ticket,
}

impl<M: Message> Message for Via<M> {
    type Result = M::Result;
}

/// One message counted in a session's `inbox`, until dropped (nothing is
/// counted, and nothing is cloned, for a session that never parks).
pub(crate) struct Ticket(Option<Arc<SessionShared>>);

impl Ticket {
    fn new(shared: &Arc<SessionShared>) -> Self {
        if !shared.counts_inbox() {
            return Ticket(None);
        }
        shared.inbox.fetch_add(1, Ordering::SeqCst);
        Ticket(Some(shared.clone()))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            shared.inbox.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Counts of parks and revivals, shared by every shard of an engine.
#[derive(Debug, Default)]
pub(crate) struct Passivations {
    parked_now: AtomicU64,
    parks: AtomicU64,
    revivals: AtomicU64,
}

/// Passivation in numbers (`EngineStats::passivation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassivationStats {
    /// Sessions parked now (idle, their actor stopped, their state kept).
    pub parked: u64,
    /// Times a session parked.
    pub parks: u64,
    /// Times a parked session was started again (a message, an attach's
    /// first request, an expiry, an eviction, a close, a shutdown).
    pub revivals: u64,
}

impl Passivations {
    pub(crate) fn snapshot(&self) -> PassivationStats {
        PassivationStats {
            parked: self.parked_now.load(Ordering::Relaxed),
            parks: self.parks.load(Ordering::Relaxed),
            revivals: self.revivals.load(Ordering::Relaxed),
        }
    }

    pub(super) fn parked(&self) {
        self.parks.fetch_add(1, Ordering::Relaxed);
        self.parked_now.fetch_add(1, Ordering::Relaxed);
    }

    fn revived(&self) {
        self.revivals.fetch_add(1, Ordering::Relaxed);
        self.parked_now.fetch_sub(1, Ordering::Relaxed);
    }

    fn dropped(&self) {
        self.parked_now.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SessionShared {
    pub(super) fn lock_slot(&self) -> MutexGuard<'_, Slot> {
        // A panic never happens under this lock (nothing but queueing runs there).
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The actor just started for this session.
    pub(crate) fn set_running(&self, addr: Addr<SessionActor>) {
        *self.lock_slot() = Slot::Running(addr);
    }

    /// The end is reported: nothing reaches the actor any more (and its
    /// address no longer keeps its mailbox alive).
    pub(crate) fn set_gone(&self) {
        let before = std::mem::replace(&mut *self.lock_slot(), Slot::Gone);
        drop(before);
    }

    /// Whether its actor runs or is parked (not yet ended).
    pub(crate) fn is_reachable(&self) -> bool {
        !matches!(*self.lock_slot(), Slot::Gone)
    }

    /// Live handles and leases.
    pub(crate) fn handles(&self) -> u32 {
        self.handles.load(Ordering::SeqCst)
    }

    /// Messages queued and not yet handled.
    pub(super) fn inbox(&self) -> u32 {
        self.inbox.load(Ordering::SeqCst)
    }

    /// The slot, locked, with a parked session started again (it stays
    /// parked if its shard's thread no longer runs anything).
    fn running_slot(self: &Arc<Self>) -> MutexGuard<'_, Slot> {
        let mut slot = self.lock_slot();
        if matches!(*slot, Slot::Parked(_)) {
            let Slot::Parked(parked) = std::mem::replace(&mut *slot, Slot::Gone) else {
                unreachable!("checked just above");
            };
            let settings = parked.record.settings.clone();
            let state = Box::new(SessionActor::from_parked(parked, self.clone()));
            match state.revive() {
                Ok(addr) => {
                    *slot = Slot::Running(addr);
                    settings.passivations.revived();
                    self.set_parked(false);
                    settings
                        .registry
                        .do_send(crate::protocol::registry::SessionRevived);
                }
                // (The hollow actor left dropped here reports nothing.)
                Err(mut state) => *slot = Slot::Parked(state.hand_over()),
            }
        }
        slot
    }

    /// Queues `msg` (reviving a parked session first); the request resolves
    /// with the answer. `None`: the session has ended.
    pub(crate) fn send<M>(self: &Arc<Self>, msg: M) -> Option<Request<SessionActor, Via<M>>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<Via<M>>,
    {
        let slot = self.running_slot();
        let Slot::Running(addr) = &*slot else {
            return None;
        };
        let ticket = Ticket::new(self);
        Some(addr.send(Via { msg, ticket }))
    }

    /// Queues `msg` without waiting for room or an answer (reviving a
    /// parked session first), from any thread. `false`: the session has ended.
    /// The overflow past a full mailbox is bounded by what the engine
    /// itself sends (one end, one force, one disconnect per session).
    pub(crate) fn deliver<M>(self: &Arc<Self>, msg: M) -> bool
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<Via<M>>,
    {
        let slot = self.running_slot();
        queue(&slot, self, msg)
    }

    /// Like [`deliver`](Self::deliver), only to a running actor: a parked
    /// session is left parked. `false`: not running.
    pub(crate) fn deliver_if_running<M>(self: &Arc<Self>, msg: M) -> bool
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<Via<M>>,
    {
        let slot = self.lock_slot();
        queue(&slot, self, msg)
    }

    /// A parked session's state, taken out (the engine is going away: the
    /// caller ends it). `None` if it was not parked.
    pub(crate) fn take_parked(self: &Arc<Self>) -> Option<SessionActor> {
        let mut slot = self.lock_slot();
        if !matches!(*slot, Slot::Parked(_)) {
            return None;
        }
        let Slot::Parked(parked) = std::mem::replace(&mut *slot, Slot::Gone) else {
            unreachable!("checked just above");
        };
        self.set_parked(false);
        parked.record.settings.passivations.dropped();
        drop(slot);
        Some(SessionActor::from_parked(parked, self.clone()))
    }
}

fn queue<M>(slot: &Slot, shared: &Arc<SessionShared>, msg: M) -> bool
where
    M: Message + Send + 'static,
    M::Result: Send,
    SessionActor: Handler<Via<M>>,
    <SessionActor as Actor>::Context: ToEnvelope<SessionActor, Via<M>>,
{
    let Slot::Running(addr) = slot else {
        return false;
    };
    let ticket = Ticket::new(shared);
    match addr.try_send(Via { msg, ticket }) {
        Ok(()) => true,
        Err(SendError::Full(msg)) => {
            addr.do_send(msg);
            true
        }
        Err(SendError::Closed(_)) => false,
    }
}

/// What a handle (or a lease) holds of its session: while any link is
/// alive the session is reachable; dropping the last one is a disconnect.
/// Every clone is counted (a handle holds its link inline: one allocation
/// less per session than a shared `Arc<Link>`).
pub(crate) struct Link {
    pub(crate) shared: Arc<SessionShared>,
    /// Every registry shard (the session's own, found by its id): for a
    /// fork's open and an ended session's receipt.
    pub(crate) shards: crate::registry::Shards,
}

impl Link {
    pub(crate) fn new(shared: Arc<SessionShared>, shards: crate::registry::Shards) -> Self {
        shared.handles.fetch_add(1, Ordering::SeqCst);
        Link { shared, shards }
    }
}

impl Clone for Link {
    fn clone(&self) -> Self {
        Link::new(self.shared.clone(), self.shards.clone())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The session checks the count again: an attach may have come in since.
            self.shared.deliver(Disconnect);
        }
    }
}
