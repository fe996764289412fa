//! The registry's side of expiry: filing sessions under their next deadline,
//! one timer for the earliest, and ending what is due.

use std::time::Duration;

use actix::prelude::*;

use super::actor::RegistryActor;
use crate::clock;
use crate::expiry::{Deadline, DeadlineKind, DeadlineQueue, ExpiryPolicy, next_due};
use crate::ids::{Caller, SessionId};
use crate::lifecycle::EndReason;
use crate::protocol::registry::Rearm;
use crate::protocol::session::End;

pub(crate) struct ExpiryState {
    pub(super) default_policy: ExpiryPolicy,
    pub(super) queue: DeadlineQueue,
    /// The armed timer: when it fires, and how to cancel it.
    wake: Option<(u64, SpawnHandle)>,
    /// Who the end requests of expired sessions come from.
    caller: Caller,
}

impl ExpiryState {
    pub(super) fn new(default_policy: ExpiryPolicy) -> Self {
        ExpiryState {
            default_policy,
            queue: DeadlineQueue::default(),
            wake: None,
            caller: Caller::Operator("sessionbus-expiry".into()),
        }
    }
}

impl RegistryActor {
    /// Files `id` under its next deadline (replacing any earlier filing).
    pub(super) fn schedule(&mut self, id: SessionId, ctx: &mut Context<Self>) {
        let Some(live) = self.sessions.get_mut(&id) else {
            return;
        };
        if let Some(old) = live.set_due(None) {
            self.expiry.queue.remove(id, old);
        }
        let last_active = live.shared.last_active_us();
        let policy = live
            .policy
            .as_deref()
            .unwrap_or(&self.expiry.default_policy);
        if let Some((_, due)) = next_due(policy, live.opened_us, last_active) {
            live.set_due(Some(due));
            self.expiry.queue.insert(id, due);
            self.arm(ctx);
        }
    }

    /// Keeps one timer armed for the earliest deadline.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(next) = self.expiry.queue.next() else {
            return;
        };
        if let Some((armed, handle)) = self.expiry.wake {
            if armed <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = next.saturating_sub(self.settings.epoch.now_micros());
        let handle = ctx.run_later(Duration::from_micros(delay), |registry, ctx| {
            registry.expiry.wake = None;
            registry.fire(ctx);
        });
        self.expiry.wake = Some((next, handle));
    }

    /// Ends every session whose deadline has come; re-files those that were active since.
    fn fire(&mut self, ctx: &mut Context<Self>) {
        let epoch = self.settings.epoch;
        let now = clock::now();
        let now_us = epoch.micros(now);
        // A session re-filed here is due after `now_us`: taken once at most.
        while let Some((id, _)) = self.expiry.queue.pop_due(now_us) {
            let Some(live) = self.sessions.get_mut(&id) else {
                continue;
            };
            live.set_due(None);
            let last_active = live.shared.last_active_us();
            let policy = live
                .policy
                .as_deref()
                .unwrap_or(&self.expiry.default_policy);
            match next_due(policy, live.opened_us, last_active) {
                Some((kind, due)) if due <= now_us => {
                    let reason = match kind {
                        DeadlineKind::Idle => EndReason::IdleTimeout,
                        DeadlineKind::Ttl => EndReason::TtlExpired,
                    };
                    let end = End {
                        caller: self.expiry.caller.clone(),
                        reason,
                        waiter: None,
                        deadline: Some(Deadline {
                            kind,
                            at: epoch.instant(due),
                            fired_at: now,
                        }),
                        seen_active_us: last_active,
                        trace_id: None,
                    };
                    // Parked, it starts again to take it; gone, its end is on the way.
                    live.shared.deliver(end);
                }
                Some((_, due)) => {
                    live.set_due(Some(due));
                    self.expiry.queue.insert(id, due);
                }
                None => {}
            }
        }
        self.arm(ctx);
    }
}

impl Handler<Rearm> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Rearm, ctx: &mut Self::Context) {
        self.schedule(msg.0, ctx);
    }
}
