//! Passivation: an idle session gives up its actor and mailbox, and keeps
//! its whole state, boxed, in its slot (`session/slot.rs`); the next thing
//! sent to it starts it again from that state, on its shard's thread.
//!
//! The registry asks (`Passivate`) sessions idle past
//! `sessions.passivate_after`. A session parks only with nothing going on:
//! no end under way, no lease, no allocation or restore in flight, no
//! future it waits on, no message queued, a handle still alive, and no
//! activity since the registry looked. It decides in `stopping`, after its
//! mailbox ran dry; if anything came in meanwhile it stays.

use actix::prelude::*;

use super::SessionActor;
use crate::lifecycle::State;
use crate::protocol::session::{Disconnect, Passivate};
use crate::session::slot::Slot;

impl SessionActor {
    /// Whether the session may park: idle since `seen_active_us`, nothing in flight.
    fn may_park(&self, seen_active_us: u64) -> bool {
        let shared = &self.record.shared;
        self.ending.is_none()
            && self.leases.is_empty()
            && !self.restoring
            && !self.record.ledger.is_waiting()
            && self.record.ledger.in_flight() == 0
            && self.heartbeat_check.is_none()
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
        let state = Box::new(self.hand_over());
        // The address in the slot goes: nothing can queue to this mailbox any more.
        *slot = Slot::Parked(state);
        shared
            .parked
            .store(true, std::sync::atomic::Ordering::Release);
        self.record.settings.passivations.parked();
        Running::Stop
    }

    /// Moves the whole state into a new actor value (parked, to be started
    /// again); this one is left hollow, its record as if reported.
    fn hand_over(&mut self) -> SessionActor {
        SessionActor {
            record: self.record.hand_over(),
            lifecycle: self.lifecycle,
            turns: self.turns,
            leases: std::mem::take(&mut self.leases),
            ending: None,
            context: self.context.take(),
            context_factory: self.context_factory.take(),
            heartbeat_check: None,
            in_handler: false,
            restoring: false,
            restore_error: self.restore_error.take(),
            kv_offloaded: self.kv_offloaded,
            span: self.span.take(),
            parking: None,
            #[cfg(feature = "testing")]
            lose_drain_timer: self.lose_drain_timer,
        }
    }

    /// Starts a parked session again on its shard's thread: at once from
    /// that thread (so sessions revived one after the other start in that
    /// order), else through its arbiter.
    pub(crate) fn revive(self: Box<Self>) -> Addr<SessionActor> {
        let settings = self.record.settings.clone();
        let capacity = settings.mailbox_capacity;
        let start = move |ctx: &mut Context<SessionActor>| {
            ctx.set_mailbox_capacity(capacity);
            *self
        };
        match std::thread::current().id() == settings.thread {
            true => SessionActor::create(start),
            false => SessionActor::start_in_arbiter(&settings.arbiter, start),
        }
    }

    /// The engine is going away with this session parked: it ends as an
    /// actor stopped by its System does.
    pub(crate) fn end_parked(mut self: Box<Self>) {
        let reason = match self.record.shared.handles() {
            0 => crate::lifecycle::EndReason::Disconnected,
            _ => crate::lifecycle::EndReason::Shutdown,
        };
        let _ = self.lifecycle.apply(crate::lifecycle::Event::End(reason));
        let ending = crate::session::end_guard::Ending::new(reason, None, 0);
        self.record.report(ending, 0);
    }
}

impl Handler<Passivate> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Passivate, ctx: &mut Self::Context) {
        self.guarded(|session| {
            if session.may_park(msg.seen_active_us) {
                session.parking = Some(msg.seen_active_us);
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

#[cfg(test)]
mod size_probe {
    #[test]
    fn print_sizes() {
        use std::mem::size_of;
        eprintln!("SessionActor {}", size_of::<super::SessionActor>());
        eprintln!("EndGuard {}", size_of::<crate::session::EndGuard>());
        eprintln!("LeaseTable {}", size_of::<crate::lease::LeaseTable>());
        eprintln!("Ledger {}", size_of::<crate::session::ledger::Ledger>());
        eprintln!("SessionShared {}", size_of::<crate::session::SessionShared>());
        eprintln!("Lifecycle {}", size_of::<crate::lifecycle::Lifecycle>());
        eprintln!("SessionHandle {}", size_of::<crate::session::SessionHandle>());
        eprintln!("Caller {}", size_of::<crate::ids::Caller>());
        eprintln!("ClientIp opt {}", size_of::<Option<crate::ids::ClientIp>>());
        eprintln!("kv_table {}", size_of::<Option<crate::kv::TableId>>());
        eprintln!("SystemTime {}", size_of::<std::time::SystemTime>());
        eprintln!("Addr {}", size_of::<actix::Addr<super::SessionActor>>());
    }
}
