//! A session's leases: taken for in-flight work, returned (or dropped),
//! and for remote holders kept alive by heartbeats; a remote lease whose
//! heartbeats stop is revoked. While Closing, the last lease returned
//! finishes the end.

use actix::prelude::*;

use super::SessionActor;
use crate::clock;
use crate::lease::{Holder, LeaseError, LeaseId};
use crate::lifecycle::{EndReason, Event};
use crate::mailbox::send_now_or_later;
use crate::protocol::registry::LeaseRevoked;
use crate::protocol::session::{Heartbeat, LeaseDropped, ReturnLease, TakeLease};
use crate::session::error::SessionError;
use crate::session::messages::LeaseGrant;

impl SessionActor {
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
        if msg.remote && self.heartbeat_check == SpawnHandle::default() {
            let every = settings.heartbeat_interval;
            self.heartbeat_check = ctx.run_interval(every, |session, ctx| {
                session.guarded(|session| session.revoke_silent_leases(ctx))
            });
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
            let check = std::mem::take(&mut self.heartbeat_check);
            if check != SpawnHandle::default() {
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
