//! One actor per chat session.
//!
//! Ground rules: every handler runs inside `guarded`, which raises
//! `in_handler` for its duration. A handler that panics leaves it raised, and
//! actix then drops the actor (calling `stopping` on the way), so `stopping`
//! can tell a crash from a disconnect exactly. A request is checked in full
//! (owner, lifecycle, limits) before anything changes; only an accepted event
//! bumps the version and the last-active time, once.

use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::end_guard::EndGuard;
use super::error::{AllocError, SessionError};
use super::messages::*;
use crate::events::ReleaseReceipt;
use crate::gpu::{AllocRequest, Allocated, GpuError, GpuPool};
use crate::ids::{AllocationId, Caller};
use crate::lifecycle::{EndReason, Event, Lifecycle};

/// Per-session limits, fixed at open.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionLimits {
    pub(crate) max_bytes: u64,
    pub(crate) max_buffer_size: u64,
}

pub(crate) struct SessionActor {
    record: EndGuard,
    lifecycle: Lifecycle,
    pool: Arc<dyn GpuPool>,
    limits: SessionLimits,
    turns: u64,
    /// Raised while a handler runs; still raised in `stopping` means it panicked.
    in_handler: bool,
}

impl SessionActor {
    pub(crate) fn new(record: EndGuard, pool: Arc<dyn GpuPool>, limits: SessionLimits) -> Self {
        let mut lifecycle = Lifecycle::new();
        lifecycle
            .apply(Event::Establish)
            .expect("a new lifecycle can be established");
        SessionActor {
            record,
            lifecycle,
            pool,
            limits,
            turns: 0,
            in_handler: false,
        }
    }

    /// Runs a handler body with `in_handler` raised (left raised if it panics).
    fn guarded<R>(&mut self, body: impl FnOnce(&mut Self) -> R) -> R {
        self.in_handler = true;
        let result = body(self);
        self.in_handler = false;
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
            self.record.last_active_at = SystemTime::now();
        }
    }

    fn refuse_allocation(&self, bytes: u64) -> Option<AllocError> {
        let used = self.record.ledger.committed();
        if bytes == 0 {
            Some(AllocError::ZeroSize)
        } else if bytes > self.limits.max_buffer_size {
            Some(AllocError::TooLarge {
                requested: bytes,
                max: self.limits.max_buffer_size,
            })
        } else if used.saturating_add(bytes) > self.limits.max_bytes {
            Some(AllocError::OverSessionBudget {
                requested: bytes,
                used,
                budget: self.limits.max_bytes,
            })
        } else {
            None
        }
    }

    /// Moves to Closing and hands the end to the registry (the end guard bumps the version once).
    fn end(
        &mut self,
        reason: EndReason,
        waiter: Option<oneshot::Sender<ReleaseReceipt>>,
    ) -> Result<(), SessionError> {
        self.check(Event::End(reason))?;
        let _ = self.lifecycle.apply(Event::End(reason));
        self.record.report(reason, waiter);
        Ok(())
    }

    fn chat(&mut self, msg: Chat) -> Result<TurnAck, SessionError> {
        self.authorize(&msg.caller)?;
        self.check(Event::Message)?;
        self.accept(Event::Message);
        self.turns += 1;
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

    /// Validates and reserves; returns what to await. Nothing changes on refusal.
    fn start_allocation(
        &mut self,
        msg: &Allocate,
    ) -> Result<oneshot::Receiver<Result<Allocated, GpuError>>, SessionError> {
        let id = self.record.id;
        self.authorize(&msg.caller)?;
        self.check(Event::Allocate)?;
        if let Some(source) = self.refuse_allocation(msg.bytes) {
            return Err(SessionError::Allocation { id, source });
        }
        self.record.ledger.reserve(msg.bytes);
        let (reply, answer) = oneshot::channel();
        self.pool.allocate(
            AllocRequest {
                session: id,
                id: AllocationId::next(),
                bytes: msg.bytes,
            },
            reply,
        );
        Ok(answer)
    }

    fn finish_allocation(
        &mut self,
        bytes: u64,
        answer: Result<Allocated, GpuError>,
    ) -> Result<Allocated, SessionError> {
        match answer {
            Ok(allocated) => {
                self.record.ledger.confirm(bytes, allocated);
                self.accept(Event::Allocate);
                Ok(allocated)
            }
            Err(gpu) => {
                self.record.ledger.cancel(bytes);
                Err(SessionError::Allocation {
                    id: self.record.id,
                    source: AllocError::Gpu(gpu),
                })
            }
        }
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
        let reason = if self.in_handler {
            EndReason::Crashed
        } else if !ctx.connected() {
            EndReason::Disconnected
        } else {
            EndReason::Shutdown
        };
        let _ = self.end(reason, None);
        Running::Stop
    }
}

impl Handler<Chat> for SessionActor {
    type Result = Result<TurnAck, SessionError>;

    fn handle(&mut self, msg: Chat, _ctx: &mut Self::Context) -> Self::Result {
        self.guarded(|session| session.chat(msg))
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

impl Handler<Allocate> for SessionActor {
    type Result = ResponseActFuture<Self, Result<Allocated, SessionError>>;

    fn handle(&mut self, msg: Allocate, _ctx: &mut Self::Context) -> Self::Result {
        let bytes = msg.bytes;
        match self.guarded(|session| session.start_allocation(&msg)) {
            Err(refused) => Box::pin(fut::ready(Err(refused))),
            Ok(answer) => Box::pin(answer.into_actor(self).map(move |answer, session, _ctx| {
                let answer = answer.unwrap_or(Err(GpuError::Unavailable));
                session.guarded(|session| session.finish_allocation(bytes, answer))
            })),
        }
    }
}

impl Handler<End> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: End, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(|session| {
            session.authorize(&msg.caller)?;
            session.end(msg.reason, msg.waiter)
        })?;
        // The registry now owns the end; this actor has nothing left to do.
        ctx.stop();
        Ok(())
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
