//! One actor per chat session.
//!
//! Ground rules: every handler runs inside `guarded`, which raises
//! `in_handler` for its duration. A handler that panics leaves it raised, and
//! actix then drops the actor (calling `stopping` on the way), so `stopping`
//! can tell a crash from a disconnect exactly. A request is checked in full
//! (owner, lifecycle, limits) before anything changes; only an accepted event
//! bumps the version and the last-active time, once.
//!
//! This file holds the actor's state, the checks every handler shares and
//! its supervision (`stopping`); each concern's handlers are in a file of
//! their own: `turns` (chat turns and the context), `leases`, `ending`
//! (the end and the drain) and `memory` (GPU memory).

use actix::prelude::*;

use super::end_guard::{EndGuard, Ending};
use super::error::{AllocError, SessionError};
use crate::context::{ContextPolicy, ContextPolicyFactory};
use crate::ids::Caller;
use crate::lease::LeaseTable;
use crate::lifecycle::{EndReason, Event, Lifecycle};
#[cfg(feature = "testing")]
use crate::protocol::session::InjectPanic;

mod ending;
mod kv;
mod leases;
mod memory;
mod passivation;
pub(crate) use passivation::ParkedSession;
mod turns;

pub(crate) struct SessionActor {
    pub(super) record: EndGuard,
    lifecycle: Lifecycle,
    leases: LeaseTable,
    /// Set once the end has begun; the end is reported when leases are drained.
    /// Boxed: only an ending session needs it.
    ending: Option<Box<Ending>>,
    /// The conversation's context policy, built on the first turn that carries a signal.
    context: Option<Box<dyn ContextPolicy>>,
    /// This session's own policy factory, if the application replaced the
    /// engine's. Boxed: rare (8 bytes a session, not 16).
    context_factory: Option<Box<ContextPolicyFactory>>,
    /// Runs only while remote leases are held; `SpawnHandle::default()` when
    /// none runs (actix's own "no handle": it never hands that one out).
    heartbeat_check: SpawnHandle,
    /// Raised while a handler runs; still raised in `stopping` means it panicked.
    in_handler: bool,
    /// A restore of offloaded buffers is under way (a `ctx.wait` future).
    restoring: bool,
    /// Requests waiting for restored buffers that have not run yet (an
    /// offload is refused meanwhile).
    awaiting_gpu: u16,
    /// Why the last restore failed, for the requests that needed it.
    /// Boxed: rare, and every live session carries the field (8 bytes, not 48).
    restore_error: Option<Box<RestoreError>>,
    /// The table's own KV blocks are in host memory.
    kv_offloaded: bool,
    /// The session's span (`session_id`, `trace_id`, `owner` pseudonym),
    /// entered around every handler; `None` when no subscriber wants it, so
    /// a session without logs pays one pointer and no allocation.
    span: Option<Box<tracing::Span>>,
    /// Asked to park: the activity stamp it was idle since (`NOT_PARKING`
    /// otherwise); decided in `stopping`.
    parking: u64,
    #[cfg(feature = "testing")]
    lose_drain_timer: bool,
}

/// `SessionActor::parking` when it was not asked to park.
const NOT_PARKING: u64 = u64::MAX;

/// Why the last restore of offloaded memory failed.
#[derive(Clone, Debug)]
enum RestoreError {
    Buffers(AllocError),
    Kv(crate::kv_store::KvStoreError),
}

impl SessionActor {
    pub(crate) fn new(record: EndGuard, context_factory: Option<ContextPolicyFactory>) -> Self {
        let mut lifecycle = Lifecycle::new();
        lifecycle
            .apply(Event::Establish)
            .expect("a new lifecycle can be established");
        let span = tracing::info_span!(
            target: "sessionbus::supervisor",
            "session",
            session_id = %record.id,
            trace_id = %record.trace_id(),
            owner = %record.settings.pseudonyms.display_owner(record.owner()),
        );
        let span = (!span.is_disabled()).then(|| Box::new(span));
        SessionActor {
            record,
            lifecycle,
            leases: LeaseTable::default(),
            ending: None,
            context: None,
            context_factory: context_factory.map(Box::new),
            heartbeat_check: SpawnHandle::default(),
            in_handler: false,
            restoring: false,
            awaiting_gpu: 0,
            restore_error: None,
            kv_offloaded: false,
            span,
            parking: NOT_PARKING,
            #[cfg(feature = "testing")]
            lose_drain_timer: false,
        }
    }

    fn now_us(&self) -> u64 {
        self.record.settings.epoch.now_micros()
    }

    /// Activity that is not a lifecycle event (lease operations) still keeps the session from idling.
    fn mark_active(&mut self) {
        self.record.shared.set_last_active_us(self.now_us());
        if let Some(queue) = &self.record.settings.release_queue {
            queue.note_live_message();
        }
    }

    /// Runs a handler body with `in_handler` raised (left raised if it panics).
    /// Inside the session's span, if it has one.
    fn guarded<R>(&mut self, body: impl FnOnce(&mut Self) -> R) -> R {
        // Taken out for the call (the body needs `&mut self`); a panic drops it with the actor.
        let span = self.span.take();
        let entered = span.as_deref().map(tracing::Span::enter);
        self.in_handler = true;
        let result = body(self);
        self.in_handler = false;
        drop(entered);
        self.span = span;
        result
    }

    fn authorize(&self, caller: &Caller) -> Result<(), SessionError> {
        if caller.may_act_on(self.record.owner()) {
            Ok(())
        } else {
            Err(SessionError::Unauthorized {
                id: self.record.id,
                caller: caller.to_string(),
            })
        }
    }

    /// Whether the lifecycle would accept `event`, without changing it.
    fn check(&self, event: Event) -> Result<(), SessionError> {
        let mut probe = self.lifecycle;
        probe
            .apply(event)
            .map(|_| ())
            .map_err(|refused| SessionError::NotEstablished {
                id: self.record.id,
                state: refused.state,
                event: refused.event,
                reason: self.lifecycle.end_reason(),
            })
    }

    /// Records an accepted activity: lifecycle, version, last-active time.
    fn accept(&mut self, event: Event) {
        if self.lifecycle.apply(event).is_ok() {
            self.record.version += 1;
            self.mark_active();
        }
    }
}

impl SessionActor {
    /// Why a session ends that nobody asked to end and that did not crash:
    /// every handle gone (a disconnect), else its engine going away.
    pub(super) fn unasked_end_reason(&self) -> EndReason {
        match self.record.shared.handles() {
            0 => EndReason::Disconnected,
            _ => EndReason::Shutdown,
        }
    }

    /// Ends the session now for `reason` (forcing leases still held), if
    /// it is not ending already.
    pub(super) fn end_unasked(&mut self, reason: EndReason) {
        if self.check(Event::End(reason)).is_ok() {
            let _ = self.lifecycle.apply(Event::End(reason));
            let ending = Ending::new(reason, None, self.leases.len());
            let forced = self.force_leases(&ending);
            self.record.report(ending, forced);
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        // Reached without an `End` in three ways. A handler panicked (actix
        // stops the context while dropping it): `in_handler` is still raised.
        // Every handle is gone: the client disconnected. Otherwise the actor is
        // stopped from outside, with handles still alive: the engine's System is
        // shutting down (a runtime dropped without `shutdown()`).
        // An end already under way (draining) is finished now, forced: after
        // this the actor is gone and nobody could return its leases.
        // Asked to park, it parks here, or stays (running) if anything came in.
        let seen = std::mem::replace(&mut self.parking, NOT_PARKING);
        if seen != NOT_PARKING && !self.in_handler && !self.record.has_reported() {
            return self.park(seen);
        }
        if self.report_ending() {
            return Running::Stop;
        }
        let reason = if self.in_handler {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "session.crashed",
                session_id = %self.record.id,
                owner = %self.record.settings.pseudonyms.display_owner(self.record.owner()),
                trace_id = %self.record.trace_id(),
                "a session handler panicked; the session ends as crashed"
            );
            EndReason::Crashed
        } else {
            self.unasked_end_reason()
        };
        self.end_unasked(reason);
        Running::Stop
    }
}

/// Every message queued through the session's slot is handled as itself,
/// and leaves the inbox count once answered: at once, or, for an answer a
/// future gives later, when that future is done (a session with a request
/// in flight does not park, which would drop it).
macro_rules! via_slot {
    ($($(#[$attr:meta])* $message:ty),* $(,)?) => {$(
        $(#[$attr])*
        impl Handler<crate::session::Via<$message>> for SessionActor {
            type Result = <SessionActor as Handler<$message>>::Result;

            fn handle(
                &mut self,
                msg: crate::session::Via<$message>,
                ctx: &mut Self::Context,
            ) -> Self::Result {
                let crate::session::Via { msg, ticket } = msg;
                <SessionActor as Handler<$message>>::handle(self, msg, ctx).answered(ticket)
            }
        }
    )*};
}

/// What a handler gives back, keeping the message's inbox ticket until it
/// is answered.
trait Answered {
    fn answered(self, ticket: crate::session::Ticket) -> Self;
}

impl<T, E> Answered for Result<T, E> {
    fn answered(self, _ticket: crate::session::Ticket) -> Self {
        self
    }
}

impl Answered for () {
    fn answered(self, _ticket: crate::session::Ticket) {}
}

/// Runs as a `ctx.wait` future: nothing else is read until it is done.
impl<R> Answered for AtomicResponse<SessionActor, R> {
    fn answered(self, _ticket: crate::session::Ticket) -> Self {
        self
    }
}

impl<R: 'static> Answered for ResponseActFuture<SessionActor, R> {
    fn answered(self, ticket: crate::session::Ticket) -> Self {
        Box::pin(self.map(move |answer, _session: &mut SessionActor, _ctx| {
            drop(ticket);
            answer
        }))
    }
}

use crate::protocol::session as to;
via_slot!(
    to::Chat,
    to::Touch,
    to::Allocate,
    to::Inspect,
    to::End,
    to::ForceEnd,
    to::TakeLease,
    to::ReturnLease,
    to::Heartbeat,
    to::WriteBuffer,
    to::ReadBuffer,
    to::Offload,
    to::AppendTokens,
    to::ForkKv,
    to::KvBlocks,
    to::WriteKv,
    to::ReadKv,
    to::Disconnect,
    to::Passivate,
    to::LeaseDropped,
    #[cfg(feature = "testing")]
    to::InjectPanic,
    #[cfg(feature = "testing")]
    to::InjectLostDrainTimer,
);

#[cfg(feature = "testing")]
impl Handler<InjectPanic> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: InjectPanic, _ctx: &mut Self::Context) {
        let id = self.record.id;
        self.guarded(|_| panic!("injected panic in session {id} (fault-injection)"));
    }
}
