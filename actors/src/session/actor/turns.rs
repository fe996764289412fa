//! Chat turns and the conversation's context: each turn is checked against
//! the context policy, and a stale context releases its context-bound
//! buffers while the session stays established. Also touches and snapshots.

use std::time::SystemTime;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::SessionActor;
use crate::clock;
use crate::context::{ContextVerdict, StaleReason, TurnSignal};
use crate::events::ContextReset;
use crate::ids::TraceId;
use crate::lifecycle::Event;
use crate::protocol::registry::ContextWasReset;
use crate::protocol::session::{Chat, Inspect, Touch};
use crate::session::error::SessionError;
use crate::session::messages::{SessionInfo, TurnAck};

impl SessionActor {
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
                        .as_deref()
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
        // The context's KV blocks go too (its shared prefix references
        // included, each dropped once); the next append opens a new table.
        if let (Some(table), Some(kv)) = (self.record.kv_table.take(), &self.record.settings.kv) {
            // An offloaded table's host copy goes with it.
            kv.release_table(table);
            self.record.shared.set_holds_kv(false);
            self.kv_offloaded = false;
        }
        self.publish_gpu_bytes();
        let charged: u64 = released.iter().map(|a| a.bytes).sum();
        let (budget, owner) = (
            self.record.settings.budget.clone(),
            self.record.owner().clone(),
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
            owner: self.record.owner().clone(),
            reason,
            turn: u64::from(self.record.turns),
            buffers: 0,
            bytes: 0,
            at: SystemTime::now(),
            trace_id,
            client_ip: self.record.client_ip.as_deref().copied(),
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
        self.record.turns = self.record.turns.saturating_add(1);
        if let ContextVerdict::Stale(reason) = &context {
            let trace_id = msg.turn.trace_id.unwrap_or(self.record.trace_id());
            self.reset_context(reason.clone(), trace_id);
        }
        tracing::trace!(
            target: "sessionbus::supervisor",
            event = "session.turn",
            session_id = %self.record.id,
            turn = u64::from(self.record.turns),
            trace_id = msg.turn.trace_id.map(tracing::field::display),
        );
        Ok(TurnAck {
            turn: u64::from(self.record.turns),
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
            turns: u64::from(self.record.turns),
            buffers: self.record.ledger.live().len(),
            bytes: self.record.ledger.live_bytes(),
            version: self.record.version,
        })
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
