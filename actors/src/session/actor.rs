//! One actor per chat session.
//!
//! Ground rules: every handler runs inside `guarded`, which raises
//! `in_handler` for its duration. A handler that panics leaves it raised, and
//! actix then drops the actor (calling `stopping` on the way), so `stopping`
//! can tell a crash from a disconnect exactly. A request is checked in full
//! (owner, lifecycle, limits) before anything changes; only an accepted event
//! bumps the version and the last-active time, once.
//!
//! Ending: `begin_end` moves the lifecycle to Closing at once (new work is
//! refused from then on). If leases are held, the end waits for them (lease
//! returns are still accepted while Closing) up to the drain deadline; then
//! `finish_end` reports it, forced if leases were still held, and stops.

use std::time::SystemTime;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::end_guard::{EndGuard, Ending};
use super::error::{AllocError, SessionError};
use super::messages::{LeaseGrant, SessionInfo, TurnAck};
use crate::clock;
use crate::context::{
    ContextPolicy, ContextPolicyFactory, ContextVerdict, StaleReason, TurnSignal,
};
use crate::events::ContextReset;
use crate::events::ReleaseReceipt;
use crate::expiry::{Deadline, DeadlineKind};
use crate::ids::{Caller, TraceId};
use crate::lease::{Holder, LeaseError, LeaseId, LeaseTable};
use crate::lifecycle::{EndReason, Event, Lifecycle};
use crate::mailbox::send_now_or_later;
use crate::protocol::registry::{ContextWasReset, LeaseRevoked, MemoryMoved, Rearm};
use crate::protocol::session::*;

mod memory;

pub(crate) struct SessionActor {
    record: EndGuard,
    lifecycle: Lifecycle,
    turns: u64,
    leases: LeaseTable,
    /// Set once the end has begun; the end is reported when leases are drained.
    /// Boxed: only an ending session needs it.
    ending: Option<Box<Ending>>,
    /// The conversation's context policy, built on the first turn that carries a signal.
    context: Option<Box<dyn ContextPolicy>>,
    /// This session's own policy factory, if the application replaced the engine's.
    context_factory: Option<ContextPolicyFactory>,
    /// Runs only while remote leases are held.
    heartbeat_check: Option<SpawnHandle>,
    /// Raised while a handler runs; still raised in `stopping` means it panicked.
    in_handler: bool,
    /// A restore of offloaded buffers is under way (a `ctx.wait` future).
    restoring: bool,
    /// Why the last restore failed, for the requests that needed it.
    restore_error: Option<AllocError>,
    /// The session's span (`session_id`, `trace_id`, `owner` pseudonym),
    /// entered around every handler; `None` when no subscriber wants it, so
    /// a session without logs pays one pointer and no allocation.
    span: Option<Box<tracing::Span>>,
    #[cfg(feature = "fault-injection")]
    lose_drain_timer: bool,
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
            trace_id = %record.trace_id,
            owner = %record.settings.pseudonyms.display_owner(&record.owner),
        );
        let span = (!span.is_disabled()).then(|| Box::new(span));
        SessionActor {
            record,
            lifecycle,
            turns: 0,
            leases: LeaseTable::default(),
            ending: None,
            context: None,
            context_factory,
            heartbeat_check: None,
            in_handler: false,
            restoring: false,
            restore_error: None,
            span,
            #[cfg(feature = "fault-injection")]
            lose_drain_timer: false,
        }
    }

    fn now_us(&self) -> u64 {
        self.record.settings.epoch.now_micros()
    }

    /// Activity that is not a lifecycle event (lease operations) still keeps the session from idling.
    fn mark_active(&mut self) {
        self.record.shared.set_last_active_us(self.now_us());
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
        if caller.may_act_on(&self.record.owner) {
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

    fn begin_end(
        &mut self,
        reason: EndReason,
        deadline: Option<Deadline>,
        waiter: Option<oneshot::Sender<ReleaseReceipt>>,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        self.check(Event::End(reason))?;
        let _ = self.lifecycle.apply(Event::End(reason));
        let mut ending = Ending::new(reason, deadline, self.leases.len());
        ending.waiters.extend(waiter);
        let began_us = self.record.settings.epoch.micros(ending.began);
        self.record.shared.set_closing(reason, began_us);
        self.ending = Some(Box::new(ending));
        if self.leases.is_empty() {
            self.finish_end(ctx);
        } else {
            tracing::debug!(
                target: "sessionbus::supervisor",
                event = "session.draining",
                session_id = %self.record.id,
                %reason,
                leases = self.leases.len(),
                "session closing: waiting for its leases"
            );
            self.arm_drain_timer(ctx);
        }
        Ok(())
    }

    fn arm_drain_timer(&mut self, ctx: &mut Context<Self>) {
        #[cfg(feature = "fault-injection")]
        if self.lose_drain_timer {
            return;
        }
        ctx.run_later(self.record.settings.drain_timeout, |session, ctx| {
            if session.ending.is_some() {
                session.finish_end(ctx);
            }
        });
    }

    /// Reports the end that has begun (forcing past leases still held) and stops.
    fn finish_end(&mut self, ctx: &mut Context<Self>) {
        if self.report_ending() {
            ctx.stop();
        }
    }

    /// Reports the end under way, if there is one, forcing past leases still held.
    fn report_ending(&mut self) -> bool {
        let Some(ending) = self.ending.take() else {
            return false;
        };
        let forced = self.force_leases(&ending);
        self.record.report(*ending, forced);
        true
    }

    /// Drops every lease still held; returns how many (0: a clean drain).
    fn force_leases(&mut self, ending: &Ending) -> u32 {
        // Checked through `Deref` first: an idle session's table is never allocated.
        if self.leases.is_empty() {
            return 0;
        }
        let forced = self.leases.force_all();
        if forced > 0 {
            tracing::warn!(
                target: "sessionbus::supervisor",
                event = "session.drain_forced",
                session_id = %self.record.id,
                reason = %ending.reason,
                leases = forced,
                waited_us = clock::now().saturating_duration_since(ending.began).as_micros() as u64,
                "session end forced with leases still held"
            );
        }
        forced.try_into().unwrap_or(u32::MAX)
    }

    /// Whether an idle deadline that fired is really due (a message may have
    /// been queued ahead of it). Leases count as activity.
    fn idle_deadline_holds(&mut self, seen_active_us: u64) -> bool {
        if !self.leases.is_empty() {
            self.mark_active();
            return false;
        }
        self.record.shared.last_active_us() == seen_active_us
    }

    /// Whether the session is still as idle as when the registry picked it
    /// for eviction: no lease, no allocation waiting, no activity since.
    fn eviction_holds(&self, seen_active_us: u64) -> bool {
        self.leases.is_empty()
            && !self.record.ledger.is_waiting()
            && self.record.shared.last_active_us() == seen_active_us
    }

    fn end(&mut self, msg: End, ctx: &mut Context<Self>) -> Result<bool, SessionError> {
        self.authorize(&msg.caller)?;
        if let Some(ending) = self.ending.as_mut() {
            // Already ending (draining leases): wait for the same end.
            ending.waiters.extend(msg.waiter);
            return Ok(false);
        }
        if let Some(deadline) = msg.deadline {
            if deadline.kind == DeadlineKind::Idle && !self.idle_deadline_holds(msg.seen_active_us)
            {
                self.rearm();
                return Ok(false);
            }
        }
        if msg.reason == EndReason::Evicted && !self.eviction_holds(msg.seen_active_us) {
            // Picked as idle, but work came in since: it stays, and the
            // registry looks elsewhere for room.
            send_now_or_later(
                &self.record.settings.registry,
                MemoryMoved::Kept { id: self.record.id },
            );
            return Ok(false);
        }
        // Who asked, for the end event (and so the audit trail); kept only if this request ends it.
        self.record.end_request = Some(Box::new((msg.caller, msg.trace_id)));
        let began = self.begin_end(msg.reason, msg.deadline, msg.waiter, ctx);
        if began.is_err() {
            self.record.end_request = None;
        }
        began.map(|()| true)
    }

    fn rearm(&self) {
        send_now_or_later(&self.record.settings.registry, Rearm(self.record.id));
    }

    fn take_lease(
        &mut self,
        msg: TakeLease,
        ctx: &mut Context<Self>,
    ) -> Result<LeaseGrant, SessionError> {
        self.authorize(&msg.caller)?;
        self.check(Event::Touch)?;
        let settings = &self.record.settings;
        let grant = if msg.remote {
            let id = self.leases.acquire(Holder::Remote {
                last_beat: clock::now(),
            });
            LeaseGrant {
                id,
                heartbeat_interval: settings.heartbeat_interval,
                revoked_after: settings.revoke_after,
            }
        } else {
            LeaseGrant {
                id: self.leases.acquire(Holder::Local),
                heartbeat_interval: std::time::Duration::ZERO,
                revoked_after: std::time::Duration::ZERO,
            }
        };
        if msg.remote && self.heartbeat_check.is_none() {
            let every = settings.heartbeat_interval;
            self.heartbeat_check = Some(ctx.run_interval(every, |session, ctx| {
                session.guarded(|session| session.revoke_silent_leases(ctx))
            }));
        }
        self.mark_active();
        self.record.shared.set_leases(self.leases.len() as u32);
        Ok(grant)
    }

    fn lease_error(&self, source: LeaseError) -> SessionError {
        SessionError::Lease {
            id: self.record.id,
            source,
        }
    }

    fn return_lease(
        &mut self,
        lease: LeaseId,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        self.leases
            .release(lease)
            .map_err(|source| self.lease_error(source))?;
        self.mark_active();
        self.after_lease_change(ctx);
        Ok(())
    }

    /// Finishes a drain whose last lease just went; stops the heartbeat check when no remote lease is left.
    fn after_lease_change(&mut self, ctx: &mut Context<Self>) {
        self.record.shared.set_leases(self.leases.len() as u32);
        if !self.leases.has_remote() {
            if let Some(check) = self.heartbeat_check.take() {
                ctx.cancel_future(check);
            }
        }
        if self.ending.is_some() && self.leases.is_empty() {
            self.finish_end(ctx);
        }
    }

    fn revoke_silent_leases(&mut self, ctx: &mut Context<Self>) {
        let settings = self.record.settings.clone();
        let revoked = self.leases.revoke_silent(
            clock::now(),
            settings.revoke_after,
            settings.missed_heartbeats,
        );
        if revoked.is_empty() {
            return;
        }
        for lease in &revoked {
            tracing::warn!(
                target: "sessionbus::supervisor",
                event = "lease.revoked",
                session_id = %self.record.id,
                lease = lease.0,
                missed = settings.missed_heartbeats,
                "remote lease revoked: its heartbeats stopped"
            );
            // Counted reliably (a full mailbox waits in a task), never blocking this actor.
            send_now_or_later(&settings.registry, LeaseRevoked);
        }
        if self.ending.is_none() && settings.end_session_on_lease_lost {
            let _ = self.begin_end(EndReason::LeaseLost, None, None, ctx);
        } else {
            self.after_lease_change(ctx);
        }
    }

    /// Asks the context policy about the turn; an error changes nothing.
    fn assess_context(&mut self, signal: &TurnSignal) -> Result<ContextVerdict, SessionError> {
        let fresh = ContextVerdict::Fresh { similarity: None };
        let policy = match &mut self.context {
            Some(policy) => policy,
            // Sessions whose turns carry no signal never pay for a policy.
            None if *signal == TurnSignal::default() => return Ok(fresh),
            None => {
                let factory =
                    self.context_factory
                        .as_ref()
                        .or(self.record.settings.context.as_ref());
                let Some(factory) = factory else {
                    return Ok(fresh);
                };
                self.context.insert(factory())
            }
        };
        policy
            .assess(signal, clock::now())
            .map_err(|source| SessionError::Context {
                id: self.record.id,
                source,
            })
    }

    /// The context went stale: release its buffers and tell the registry,
    /// which publishes the reset once the memory is back.
    fn reset_context(&mut self, reason: StaleReason, trace_id: TraceId) {
        self.accept(Event::ContextReset);
        let released = self.record.ledger.take_context();
        self.publish_gpu_bytes();
        let charged: u64 = released.iter().map(|a| a.bytes).sum();
        let (budget, owner) = (
            self.record.settings.budget.clone(),
            self.record.owner.clone(),
        );
        let (reply, report) = oneshot::channel();
        let holds_memory = !released.is_empty();
        if holds_memory {
            let ids = released.iter().map(|a| a.id).collect();
            self.record
                .settings
                .pool
                .release_allocations(self.record.id, ids, reply);
        }
        let mut reset = ContextReset {
            id: self.record.id,
            owner: self.record.owner.clone(),
            reason,
            turn: self.turns,
            buffers: 0,
            bytes: 0,
            at: SystemTime::now(),
            trace_id,
            client_ip: self.record.client_ip,
        };
        let registry = self.record.settings.registry.clone();
        actix::spawn(async move {
            if holds_memory {
                if let Ok(report) = report.await {
                    reset.buffers = report.buffers;
                    reset.bytes = report.bytes;
                    // The memory is back: the budget may hand it out again.
                    budget.refund(&owner, charged);
                }
            }
            let _ = registry.send(ContextWasReset(reset)).await;
        });
    }

    fn chat(&mut self, msg: Chat) -> Result<TurnAck, SessionError> {
        self.authorize(&msg.caller)?;
        self.check(Event::Message)?;
        let context = self.assess_context(&msg.turn.signal)?;
        self.accept(Event::Message);
        self.turns += 1;
        if let ContextVerdict::Stale(reason) = &context {
            let trace_id = msg.turn.trace_id.unwrap_or(self.record.trace_id);
            self.reset_context(reason.clone(), trace_id);
        }
        tracing::trace!(
            target: "sessionbus::supervisor",
            event = "session.turn",
            session_id = %self.record.id,
            turn = self.turns,
            trace_id = msg.turn.trace_id.map(tracing::field::display),
        );
        Ok(TurnAck {
            turn: self.turns,
            version: self.record.version,
            context,
        })
    }

    fn touch(&mut self, msg: Touch) -> Result<(), SessionError> {
        self.authorize(&msg.caller)?;
        self.check(Event::Touch)?;
        self.accept(Event::Touch);
        Ok(())
    }

    fn inspect(&self, msg: Inspect) -> Result<SessionInfo, SessionError> {
        self.authorize(&msg.caller)?;
        Ok(SessionInfo {
            state: self.lifecycle.state(),
            turns: self.turns,
            buffers: self.record.ledger.live().len(),
            bytes: self.record.ledger.live_bytes(),
            version: self.record.version,
        })
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Reached without an `End` in three ways. A handler panicked (actix
        // stops the context while dropping it): `in_handler` is still raised.
        // Every handle is gone: the client disconnected. Otherwise the actor is
        // stopped from outside, with handles still alive: the engine's System is
        // shutting down (a runtime dropped without `shutdown()`).
        // An end already under way (draining) is finished now, forced: after
        // this the actor is gone and nobody could return its leases.
        if self.report_ending() {
            return Running::Stop;
        }
        let reason = if self.in_handler {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "session.crashed",
                session_id = %self.record.id,
                owner = %self.record.settings.pseudonyms.display_owner(&self.record.owner),
                trace_id = %self.record.trace_id,
                "a session handler panicked; the session ends as crashed"
            );
            EndReason::Crashed
        } else if !ctx.connected() {
            EndReason::Disconnected
        } else {
            EndReason::Shutdown
        };
        if self.check(Event::End(reason)).is_ok() {
            let _ = self.lifecycle.apply(Event::End(reason));
            let ending = Ending::new(reason, None, self.leases.len());
            let forced = self.force_leases(&ending);
            self.record.report(ending, forced);
        }
        Running::Stop
    }
}

impl Handler<Chat> for SessionActor {
    type Result = ResponseActFuture<Self, Result<TurnAck, SessionError>>;

    fn handle(&mut self, msg: Chat, ctx: &mut Self::Context) -> Self::Result {
        if self.record.ledger.is_offloaded() {
            // Checked before the restore: a refused turn brings nothing back.
            if let Err(refused) = self.guarded(|session| {
                session.authorize(&msg.caller)?;
                session.check(Event::Message)
            }) {
                return Box::pin(fut::ready(Err(refused)));
            }
        }
        self.on_gpu(ctx, move |session, _ctx| {
            Box::pin(fut::ready(session.guarded(|session| session.chat(msg))))
        })
    }
}

impl Handler<Touch> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: Touch, _ctx: &mut Self::Context) -> Self::Result {
        self.guarded(|session| session.touch(msg))
    }
}

impl Handler<Inspect> for SessionActor {
    type Result = Result<SessionInfo, SessionError>;

    fn handle(&mut self, msg: Inspect, _ctx: &mut Self::Context) -> Self::Result {
        self.guarded(|session| session.inspect(msg))
    }
}

impl Handler<End> for SessionActor {
    type Result = Result<bool, SessionError>;

    fn handle(&mut self, msg: End, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(|session| session.end(msg, ctx))
    }
}

impl Handler<ForceEnd> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: ForceEnd, ctx: &mut Self::Context) {
        self.guarded(|session| session.finish_end(ctx))
    }
}

impl Handler<TakeLease> for SessionActor {
    type Result = ResponseActFuture<Self, Result<LeaseGrant, SessionError>>;

    fn handle(&mut self, msg: TakeLease, ctx: &mut Self::Context) -> Self::Result {
        if self.record.ledger.is_offloaded() {
            if let Err(refused) = self.guarded(|session| {
                session.authorize(&msg.caller)?;
                session.check(Event::Touch)
            }) {
                return Box::pin(fut::ready(Err(refused)));
            }
        }
        // A lease guards work on the buffers: they come back first.
        self.on_gpu(ctx, move |session, ctx| {
            Box::pin(fut::ready(
                session.guarded(|session| session.take_lease(msg, ctx)),
            ))
        })
    }
}

impl Handler<ReturnLease> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: ReturnLease, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(|session| {
            session.authorize(&msg.caller)?;
            session.return_lease(msg.lease, ctx)
        })
    }
}

impl Handler<LeaseDropped> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: LeaseDropped, ctx: &mut Self::Context) {
        // Already released explicitly (or forced): nothing to do.
        let _ = self.guarded(|session| session.return_lease(msg.0, ctx));
    }
}

impl Handler<Heartbeat> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: Heartbeat, _ctx: &mut Self::Context) -> Self::Result {
        self.guarded(|session| {
            session.authorize(&msg.caller)?;
            session
                .leases
                .heartbeat(msg.lease, clock::now())
                .map_err(|source| session.lease_error(source))?;
            session.mark_active();
            Ok(())
        })
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectLostDrainTimer> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: InjectLostDrainTimer, _ctx: &mut Self::Context) {
        self.lose_drain_timer = true;
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectPanic> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: InjectPanic, _ctx: &mut Self::Context) {
        let id = self.record.id;
        self.guarded(|_| panic!("injected panic in session {id} (fault-injection)"));
    }
}
