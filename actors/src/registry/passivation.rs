//! The registry's side of passivation (`sessions.passivate_after`): every
//! half that time, each running session of this shard idle past it is
//! asked to park. The session decides (`session/actor/passivation.rs`): it
//! stays if anything is going on. A parked session keeps its place here,
//! its deadlines filed and its memory charged, as a running one does.

use std::time::Duration;

use actix::prelude::*;

use super::actor::RegistryActor;
use crate::lifecycle::State;
use crate::protocol::session::Passivate;

impl RegistryActor {
    /// Looks for idle sessions `after` from now (or sooner, if already due
    /// sooner): after an open, or when a parked session started again.
    pub(super) fn look_for_idle_in(&mut self, ctx: &mut Context<Self>) {
        let Some(after) = self.passivate_after else {
            return;
        };
        let at_us = self.settings.epoch.now_micros() + after.as_micros() as u64;
        self.arm_passivation(at_us, ctx);
    }

    /// Keeps one timer armed for the next look (no timer while every
    /// session of the shard is parked: an open or a revival arms it).
    fn arm_passivation(&mut self, at_us: u64, ctx: &mut Context<Self>) {
        if let Some((armed, handle)) = self.passivation_wake {
            if armed <= at_us {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = at_us.saturating_sub(self.settings.epoch.now_micros());
        let handle = ctx.run_later(Duration::from_micros(delay), |registry, ctx| {
            registry.passivation_wake = None;
            registry.passivate_idle(ctx);
        });
        self.passivation_wake = Some((at_us, handle));
    }

    /// Asks every running session idle for `passivate_after` or longer to
    /// park, and arms the next look for the first one that will be.
    fn passivate_idle(&mut self, ctx: &mut Context<Self>) {
        let Some(after) = self.passivate_after else {
            return;
        };
        let after_us = after.as_micros() as u64;
        let now_us = self.settings.epoch.now_micros();
        let mut next_us = None::<u64>;
        for live in self.sessions.values() {
            let shared = &live.shared;
            if shared.is_parked() || shared.state() != State::Established {
                continue;
            }
            let seen = shared.last_active_us();
            let due = seen.saturating_add(after_us);
            let asked = due <= now_us
                && shared.leases() == 0
                && !shared.is_waiting()
                && shared.deliver_if_running(Passivate {
                    seen_active_us: seen,
                });
            // Asked, it may still stay (work came in): look again then.
            let again = if asked { now_us + after_us } else { due };
            next_us = Some(next_us.map_or(again, |next| next.min(again)));
        }
        if let Some(next_us) = next_us {
            // Sessions idle but held (a lease) are looked at no more than twice per `after`.
            self.arm_passivation(next_us.max(now_us + after_us / 2).max(now_us + 1_000), ctx);
        }
    }

    /// The engine goes away without a shutdown: parked sessions end as
    /// running ones do when their System stops (their state holds their
    /// slot, which holds their state: nothing else would free it).
    pub(super) fn end_parked_sessions(&mut self) {
        for live in self.sessions.values() {
            if let Some(state) = live.shared.take_parked() {
                state.end_parked();
            }
        }
    }
}
