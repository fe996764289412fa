//! One actor per chat session.

use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::end_guard::EndGuard;
use super::error::{AllocError, SessionError};
use super::messages::*;
use crate::gpu::{AllocRequest, GpuError, GpuPool};
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
        }
    }

    /// Checks the caller, then applies `event`; nothing changes on refusal.
    fn admit(&mut self, caller: &Caller, event: Event) -> Result<(), SessionError> {
        if !caller.may_act_on(&self.record.owner) {
            return Err(SessionError::Unauthorized {
                id: self.record.id,
                caller: caller.to_string(),
            });
        }
        self.lifecycle
            .apply(event)
            .map_err(|refused| SessionError::NotEstablished {
                id: self.record.id,
                state: refused.state,
                event: refused.event,
                reason: self.lifecycle.end_reason(),
            })?;
        self.record.version += 1;
        self.record.last_active_at = SystemTime::now();
        Ok(())
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

    fn end(
        &mut self,
        reason: EndReason,
        waiter: Option<oneshot::Sender<crate::events::ReleaseReceipt>>,
    ) {
        self.record.report(reason, waiter);
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Reached without an `End` in two ways: every handle is gone (the client
        // disconnected), or the actor is being dropped after a handler panicked
        // (actix stops a context when dropping it) while handles still exist.
        let reason = if ctx.connected() {
            EndReason::Crashed
        } else {
            EndReason::Disconnected
        };
        if self.lifecycle.apply(Event::End(reason)).is_ok() {
            self.end(reason, None);
        }
        Running::Stop
    }
}

impl Handler<Chat> for SessionActor {
    type Result = Result<TurnAck, SessionError>;

    fn handle(&mut self, msg: Chat, _ctx: &mut Self::Context) -> Self::Result {
        self.admit(&msg.caller, Event::Message)?;
        let _ = msg.turn;
        self.turns += 1;
        Ok(TurnAck {
            turn: self.turns,
            version: self.record.version,
        })
    }
}

impl Handler<Touch> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: Touch, _ctx: &mut Self::Context) -> Self::Result {
        self.admit(&msg.caller, Event::Touch)
    }
}

impl Handler<Inspect> for SessionActor {
    type Result = Result<SessionInfo, SessionError>;

    fn handle(&mut self, msg: Inspect, _ctx: &mut Self::Context) -> Self::Result {
        if !msg.caller.may_act_on(&self.record.owner) {
            return Err(SessionError::Unauthorized {
                id: self.record.id,
                caller: msg.caller.to_string(),
            });
        }
        Ok(SessionInfo {
            state: self.lifecycle.state(),
            turns: self.turns,
            buffers: self.record.ledger.live().len(),
            bytes: self.record.ledger.live_bytes(),
            version: self.record.version,
        })
    }
}

impl Handler<Allocate> for SessionActor {
    type Result = ResponseActFuture<Self, Result<crate::gpu::Allocated, SessionError>>;

    fn handle(&mut self, msg: Allocate, _ctx: &mut Self::Context) -> Self::Result {
        let id = self.record.id;
        // Size and budget first: a refused allocation must not count as activity.
        if !msg.caller.may_act_on(&self.record.owner) {
            let err = SessionError::Unauthorized {
                id,
                caller: msg.caller.to_string(),
            };
            return Box::pin(fut::ready(Err(err)));
        }
        if self.lifecycle.is_established() {
            if let Some(source) = self.refuse_allocation(msg.bytes) {
                return Box::pin(fut::ready(Err(SessionError::Allocation { id, source })));
            }
        }
        if let Err(err) = self.admit(&msg.caller, Event::Allocate) {
            return Box::pin(fut::ready(Err(err)));
        }
        let bytes = msg.bytes;
        self.record.ledger.reserve(bytes);
        let (reply, answer) = oneshot::channel();
        self.pool.allocate(
            AllocRequest {
                session: id,
                id: AllocationId::next(),
                bytes,
            },
            reply,
        );
        Box::pin(answer.into_actor(self).map(move |answer, act, _ctx| {
            let answer = answer.unwrap_or(Err(GpuError::Unavailable));
            match answer {
                Ok(allocated) => {
                    act.record.ledger.confirm(bytes, allocated);
                    Ok(allocated)
                }
                Err(gpu) => {
                    act.record.ledger.cancel(bytes);
                    Err(SessionError::Allocation {
                        id,
                        source: AllocError::Gpu(gpu),
                    })
                }
            }
        }))
    }
}

impl Handler<End> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, msg: End, ctx: &mut Self::Context) -> Self::Result {
        self.admit(&msg.caller, Event::End(msg.reason))?;
        self.end(msg.reason, msg.waiter);
        // The registry now owns the end; this actor has nothing left to do.
        ctx.stop();
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectPanic> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: InjectPanic, _ctx: &mut Self::Context) {
        panic!(
            "injected panic in session {} (fault-injection)",
            self.record.id
        );
    }
}
