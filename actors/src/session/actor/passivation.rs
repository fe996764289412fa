//! Passivation: an idle session gives up its actor and mailbox, and keeps
//! its whole state, compacted (`ParkedSession`), in its slot
//! (`session/slot.rs`); the next thing sent to it starts it again from that
//! state, on its shard's thread.
//!
//! The registry asks (`Passivate`) sessions idle past
//! `sessions.passivate_after`. A session parks only with nothing going on:
//! no end under way, no lease, no allocation or restore in flight, no
//! future it waits on, no message queued, a handle still alive, and no
//! activity since the registry looked. It decides in `stopping`, after its
//! mailbox ran dry; if anything came in meanwhile it stays.

use std::sync::{Arc, Mutex, PoisonError};

use actix::prelude::*;

use super::{RestoreError, SessionActor};
use crate::context::{ContextPolicy, ContextPolicyFactory};
use crate::lease::LeaseTable;
use crate::lifecycle::State;
use crate::protocol::session::{Disconnect, Passivate};
use crate::session::end_guard::{EndGuard, ParkedHoldings, ParkedRecord};
use crate::session::shared::SessionShared;
use crate::session::slot::Slot;

impl SessionActor {
    /// Whether the session may park: idle since `seen_active_us`, nothing in flight.
    fn may_park(&self, seen_active_us: u64) -> bool {
        let shared = &self.record.shared;
        self.ending.is_none()
            && self.leases.is_empty()
            && !self.restoring
            && self.awaiting_gpu == 0
            && !self.record.ledger.is_waiting()
            && self.record.ledger.in_flight() == 0
            && self.heartbeat_check == SpawnHandle::default()
            && self.lifecycle.state() == State::Established
            && shared.last_active_us() == seen_active_us
            && shared.handles() > 0
    }

    /// From `stopping`: parks (hands the state to the slot; the actor
    /// stops) or stays running if anything came in since it was asked.
    pub(super) fn park(&mut self, seen_active_us: u64) -> Running {
        let shared = self.record.shared.clone();
        let mut slot = shared.lock_slot();
        // (No future can be waited on here: the mailbox is read only when
        // none is, and nothing is read once stopping began.)
        if shared.inbox() > 0 || !self.may_park(seen_active_us) {
            return Running::Continue;
        }
        let state = self.hand_over();
        // The address in the slot goes: nothing can queue to this mailbox any more.
        *slot = Slot::Parked(state);
        shared.set_parked(true);
        self.record.settings.passivations.parked();
        Running::Stop
    }

    /// Moves the whole state out, compacted, for the slot; this actor is
    /// left hollow, its record as if reported.
    pub(crate) fn hand_over(&mut self) -> ParkedSession {
        let (record, holdings) = self.record.park();
        let rest = ParkedRest {
            holdings,
            leases: std::mem::take(&mut self.leases),
            context: self.context.take(),
            context_factory: self.context_factory.take(),
            restore_error: self.restore_error.take(),
            #[cfg(feature = "testing")]
            lose_drain_timer: self.lose_drain_timer,
        };
        ParkedSession {
            record,
            rest: (!rest.is_bare()).then(|| Box::new(rest)),
            turns: self.record.turns,
            kv_offloaded: self.kv_offloaded,
        }
    }

    /// The actor of a parked session, as it was (its span is made anew).
    pub(crate) fn from_parked(parked: ParkedSession, shared: Arc<SessionShared>) -> Self {
        let ParkedSession {
            record,
            rest,
            turns,
            kv_offloaded,
        } = parked;
        let rest = rest.map(|rest| *rest).unwrap_or_default();
        let mut actor = SessionActor::new(EndGuard::unpark(record, rest.holdings, shared), None);
        actor.leases = rest.leases;
        actor.context = rest.context;
        actor.context_factory = rest.context_factory;
        actor.restore_error = rest.restore_error;
        actor.record.turns = turns;
        actor.kv_offloaded = kv_offloaded;
        #[cfg(feature = "testing")]
        {
            actor.lose_drain_timer = rest.lose_drain_timer;
        }
        actor
    }

    /// Starts a parked session again on its shard's thread: at once from
    /// that thread inside its runtime (so sessions revived one after the
    /// other start in that order), else through its arbiter. The state comes
    /// back (`Err`) if that thread no longer runs anything: it is never
    /// dropped here, where the caller holds the slot's lock (a dropped
    /// state reports its end, which takes that lock).
    pub(crate) fn revive(self: Box<Self>) -> Result<Addr<SessionActor>, Box<Self>> {
        let settings = self.record.settings.clone();
        let capacity = settings.mailbox_capacity;
        let on_its_thread = std::thread::current().id() == settings.thread
            && tokio::runtime::Handle::try_current().is_ok();
        if on_its_thread {
            return Ok(SessionActor::create(move |ctx| {
                ctx.set_mailbox_capacity(capacity);
                *self
            }));
        }
        let state = Arc::new(Mutex::new(Some(self)));
        let started = state.clone();
        let addr = SessionActor::start_in_arbiter(&settings.arbiter, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            let taken = started
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            *taken.expect("a parked session starts once")
        });
        // A stopped arbiter drops the closure at once, unrun: the state is
        // still here, and nobody else holds it.
        if Arc::strong_count(&state) == 1
            && let Some(state) = state.lock().unwrap_or_else(PoisonError::into_inner).take()
        {
            return Err(state);
        }
        Ok(addr)
    }

    /// The engine is going away with this session parked: it ends as an
    /// actor stopped by its System does.
    pub(crate) fn end_parked(mut self) {
        let reason = self.unasked_end_reason();
        self.end_unasked(reason);
    }
}

/// A parked session's state, kept in its slot (parking allocates nothing):
/// its record, and the rest of what its actor held only if it held
/// anything (memory, a KV table, leases, a context policy, a client
/// address). 72 bytes for a session that held none of it, against a
/// running actor's 184 plus its mailbox, context and task.
pub(crate) struct ParkedSession {
    pub(crate) record: ParkedRecord,
    rest: Option<Box<ParkedRest>>,
    turns: u32,
    /// Here rather than in `rest`: a `bool` gives `Slot` a niche for its
    /// tag, so the slot is no bigger than this (8 bytes a session).
    kv_offloaded: bool,
}

#[derive(Default)]
struct ParkedRest {
    holdings: Option<ParkedHoldings>,
    leases: LeaseTable,
    context: Option<Box<dyn ContextPolicy>>,
    context_factory: Option<Box<ContextPolicyFactory>>,
    restore_error: Option<Box<RestoreError>>,
    #[cfg(feature = "testing")]
    lose_drain_timer: bool,
}

impl ParkedRest {
    /// Nothing a fresh actor would not have.
    fn is_bare(&self) -> bool {
        let bare = self.holdings.is_none()
            && self.leases.is_untouched()
            && self.context.is_none()
            && self.context_factory.is_none()
            && self.restore_error.is_none();
        #[cfg(feature = "testing")]
        let bare = bare && !self.lose_drain_timer;
        bare
    }
}

impl Handler<Passivate> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Passivate, ctx: &mut Self::Context) {
        self.guarded(|session| {
            if session.may_park(msg.seen_active_us) {
                session.parking = msg.seen_active_us;
                ctx.stop();
            }
        })
    }
}

impl Handler<Disconnect> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: Disconnect, ctx: &mut Self::Context) {
        self.guarded(|session| {
            if session.record.shared.handles() == 0 && session.ending.is_none() {
                // Refused only if the session is already ending.
                let _ =
                    session.begin_end(crate::lifecycle::EndReason::Disconnected, None, None, ctx);
            }
        })
    }
}
