//! Ending a session: `begin_end` moves the lifecycle to Closing at once (new
//! work is refused from then on). If leases are held, the end waits for them
//! (lease returns are still accepted while Closing) up to the drain deadline;
//! then `finish_end` reports it, forced if leases were still held, and stops.
//! An end that a deadline or an eviction asked for is first re-checked: a
//! session that was active since stays.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::SessionActor;
use crate::clock;
use crate::events::ReleaseReceipt;
use crate::expiry::{Deadline, DeadlineKind};
use crate::lifecycle::{EndReason, Event};
use crate::mailbox::send_now_or_later;
use crate::protocol::registry::{MemoryMoved, Rearm};
#[cfg(feature = "testing")]
use crate::protocol::session::InjectLostDrainTimer;
use crate::protocol::session::{End, ForceEnd};
use crate::session::end_guard::Ending;
use crate::session::error::SessionError;

impl SessionActor {
    pub(super) fn begin_end(
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
        #[cfg(feature = "testing")]
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
    pub(super) fn finish_end(&mut self, ctx: &mut Context<Self>) {
        if self.report_ending() {
            ctx.stop();
        }
    }

    /// Reports the end under way, if there is one, forcing past leases still held.
    pub(super) fn report_ending(&mut self) -> bool {
        let Some(ending) = self.ending.take() else {
            return false;
        };
        let forced = self.force_leases(&ending);
        self.record.report(*ending, forced);
        true
    }

    /// Drops every lease still held; returns how many (0: a clean drain).
    pub(super) fn force_leases(&mut self, ending: &Ending) -> u32 {
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
        if msg.reason == EndReason::Evicted
            && msg.seen_active_us != crate::protocol::session::NOT_SEEN_IDLE
            && !self.eviction_holds(msg.seen_active_us)
        {
            // Picked as idle, but work came in since: it stays, and the
            // registry looks elsewhere for room.
            send_now_or_later(
                // The coordinator asked it to go, for whichever shard.
                self.record.settings.shards.coordinator(),
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

#[cfg(feature = "testing")]
impl Handler<InjectLostDrainTimer> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: InjectLostDrainTimer, _ctx: &mut Self::Context) {
        self.lose_drain_timer = true;
    }
}
