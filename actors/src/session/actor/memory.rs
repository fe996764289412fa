//! A session's GPU memory: allocations through the budgets, buffer reads and
//! writes, offload to host memory and the restore before the next use.
//!
//! Ground rules: a request is checked in full (owner, lifecycle, session cap,
//! "can never fit") before anything is charged. Room in the budgets is a
//! `Charge` until the pool is asked, so a session that stops halfway never
//! leaves bytes charged. A restore runs as a `ctx.wait` future: nothing else
//! in the mailbox is handled until the buffers are back (or could not come
//! back), so no message ever sees half-restored memory.

use std::pin::Pin;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::RestoreError;
use super::SessionActor;
use crate::budget::Charge;
use crate::budget::{BudgetScope, acquire};
use crate::gpu::{AllocRequest, Allocated, GpuError, OffloadReport, RestoreReport};
use crate::ids::AllocationId;
use crate::kv_store::KvStoreError;
use crate::lifecycle::{Event, State};
use crate::mailbox::send_now_or_later;
use crate::protocol::registry::{MakeRoom, MemoryMoved};
use crate::protocol::session::{Allocate, Offload, ReadBuffer, WriteBuffer};
use crate::session::error::{AllocError, SessionError};
use crate::session::messages::{Binding, SessionOffload};

type Reply<T> = Pin<Box<dyn ActorFuture<SessionActor, Output = Result<T, SessionError>>>>;

fn ready<T: 'static>(value: Result<T, SessionError>) -> Reply<T> {
    Box::pin(fut::ready(value))
}

impl SessionActor {
    fn allocation_error(&self, source: AllocError) -> SessionError {
        SessionError::Allocation {
            id: self.record.id,
            source,
        }
    }

    /// Checks an allocation of `charge` rounded bytes; nothing changes on refusal.
    fn admit_allocation(&self, msg: &Allocate, charge: u64) -> Result<(), SessionError> {
        self.authorize(&msg.caller)?;
        self.check(Event::Allocate)?;
        if let Some(source) = self.refuse_allocation(msg.bytes, charge) {
            return Err(self.allocation_error(source));
        }
        Ok(())
    }

    fn refuse_allocation(&self, bytes: u64, charge: u64) -> Option<AllocError> {
        let settings = &self.record.settings;
        let used = self.record.ledger.committed();
        if bytes == 0 {
            Some(AllocError::ZeroSize)
        } else if bytes > settings.max_buffer_size {
            Some(AllocError::TooLarge {
                requested: bytes,
                max: settings.max_buffer_size,
            })
        } else if used.saturating_add(charge) > settings.max_bytes {
            Some(AllocError::OverSessionBudget {
                requested: charge,
                used,
                budget: settings.max_bytes,
            })
        } else {
            settings
                .budget
                .never_fits(charge)
                .map(|short| AllocError::ExceedsBudget {
                    scope: short.scope,
                    requested: charge,
                    limit: short.limit,
                })
        }
    }

    /// What `acquire` calls when the rules say to evict.
    fn make_room(&self) -> impl FnOnce(BudgetScope) + 'static {
        // Pressure is decided by the coordinator shard, for every shard.
        let registry = self.record.settings.shards.coordinator().clone();
        let (requester, owner) = (self.record.id, self.record.owner().clone());
        move |scope| {
            send_now_or_later(
                &registry,
                MakeRoom {
                    requester,
                    owner,
                    scope,
                },
            )
        }
    }

    /// Keeps the registry's view of this session's GPU bytes (and of whether
    /// it waits for room) current.
    pub(super) fn publish_gpu_bytes(&self) {
        let shared = &self.record.shared;
        shared.set_gpu_bytes(self.record.ledger.charged());
        shared.set_waiting(self.record.ledger.is_waiting());
    }

    /// Whether anything of this session is in host memory (buffers or KV blocks).
    pub(super) fn is_offloaded(&self) -> bool {
        self.record.ledger.is_offloaded() || self.kv_offloaded
    }

    /// If the buffers or KV blocks are offloaded, brings them back before
    /// any other message is handled (a `ctx.wait` future). Afterwards either
    /// they are on the GPU or `restore_error` says why not.
    pub(super) fn ensure_on_gpu(&mut self, ctx: &mut Context<Self>) {
        if !self.is_offloaded() || self.restoring {
            return;
        }
        self.restoring = true;
        let buffers = self
            .record
            .ledger
            .is_offloaded()
            .then(|| self.restore_buffers());
        let kv = self.restore_kv();
        let restore = async move {
            let buffers = match buffers {
                Some(restore) => Some(restore.await),
                None => None,
            };
            let kv = match kv {
                Some(restore) => Some(restore.await),
                None => None,
            };
            (buffers, kv)
        };
        ctx.wait(
            restore
                .into_actor(self)
                .map(|(buffers, kv), session, _ctx| {
                    session.restoring = false;
                    session.restore_error = None;
                    let mut bytes = 0;
                    match buffers {
                        Some(Ok((report, charge))) => {
                            charge.commit();
                            session.record.ledger.set_offloaded(false);
                            session.publish_gpu_bytes();
                            bytes += report.bytes;
                        }
                        // A charge that came with the error is dropped here: refunded.
                        Some(Err((error, _charge))) => {
                            session.restore_failed(&error);
                            session.restore_error = Some(Box::new(RestoreError::Buffers(error)));
                        }
                        None => {}
                    }
                    if let Some(kv) = kv {
                        bytes += session.kv_restored(kv);
                    }
                    session.restored(bytes);
                }),
        );
    }

    /// `bytes` came back to the GPU: tells the registry, even if part
    /// stayed (a failed KV restore after the buffers came back), so that its
    /// gauge of host bytes follows each step; active again once all is back.
    pub(super) fn restored(&mut self, bytes: u64) {
        let whole = !self.is_offloaded();
        if whole {
            self.mark_active();
        }
        if bytes > 0 {
            send_now_or_later(
                &self.record.settings.registry,
                MemoryMoved::Restored {
                    id: self.record.id,
                    bytes,
                    whole,
                },
            );
        }
    }

    pub(super) fn restore_failed(&self, error: &dyn std::fmt::Display) {
        tracing::warn!(
            target: "sessionbus::supervisor",
            event = "session.restore_failed",
            session_id = %self.record.id,
            %error,
            "offloaded memory could not be brought back; it stays in host memory"
        );
    }

    /// Charges the budgets for the offloaded buffers, then has the pool
    /// bring them back, bounded by `step_timeout`.
    fn restore_buffers(
        &self,
    ) -> impl Future<Output = Result<(RestoreReport, Charge), (AllocError, Option<Charge>)>> + 'static
    {
        let settings = self.record.settings.clone();
        let bytes = self.record.ledger.live_bytes();
        let charged = acquire(
            settings.budget.clone(),
            self.record.owner().clone(),
            bytes,
            settings.wait_rules,
            self.make_room(),
        );
        let id = self.record.id;
        let step_timeout = settings.step_timeout;
        async move {
            let charge = charged.await.map_err(|e| (e, None))?;
            let (reply, answer) = oneshot::channel();
            settings.pool.restore_session(id, reply);
            // Bounded: nothing else reaches this session until it resolves.
            // A restore that completes after the timeout leaves the buffers on
            // the GPU while the session still counts them offloaded; the next
            // restore then finds nothing to bring back, reports zero, and the
            // books agree again (requests execute in order, see `GpuPool`).
            match tokio::time::timeout(step_timeout, answer).await {
                Ok(Ok(Ok(report))) => Ok((report, charge)),
                Ok(Ok(Err(gpu))) => Err((AllocError::Gpu(gpu), Some(charge))),
                Ok(Err(_)) => Err((AllocError::Gpu(GpuError::Unavailable), Some(charge))),
                Err(_) => Err((
                    AllocError::Gpu(GpuError::TimedOut {
                        operation: "restore",
                        waited: step_timeout,
                    }),
                    Some(charge),
                )),
            }
        }
    }

    /// The error for a request that needed the buffers or KV blocks on the
    /// GPU, if they are not.
    pub(super) fn not_on_gpu(&self) -> Option<SessionError> {
        if self.record.ledger.is_offloaded() {
            let cause = match self.restore_error.as_deref() {
                Some(RestoreError::Buffers(cause)) => cause.clone(),
                _ => AllocError::Gpu(GpuError::Unavailable),
            };
            return Some(self.allocation_error(AllocError::RestoreFailed(Box::new(cause))));
        }
        self.kv_not_on_gpu()
    }

    /// Runs `body` once the buffers are on the GPU (restoring them first if needed).
    pub(super) fn on_gpu<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        body: impl FnOnce(&mut Self, &mut Context<Self>) -> Reply<T> + 'static,
    ) -> Reply<T> {
        if !self.is_offloaded() {
            return body(self, ctx);
        }
        self.ensure_on_gpu(ctx);
        // Counted until it runs: actix may handle another message (an
        // offload) after the restore and before this request's turn, and an
        // offload must not take the buffers from under it.
        self.awaiting_gpu += 1;
        Box::pin(fut::ready(()).then(move |(), session: &mut Self, ctx| {
            session.awaiting_gpu -= 1;
            match session.not_on_gpu() {
                Some(error) => ready(Err(error)),
                None => body(session, ctx),
            }
        }))
    }

    fn allocate(&mut self, msg: Allocate, _ctx: &mut Context<Self>) -> Reply<Allocated> {
        let settings = self.record.settings.clone();
        let charge = settings.rounded(msg.bytes);
        if let Err(refused) = self.guarded(|session| session.admit_allocation(&msg, charge)) {
            return ready(Err(refused));
        }
        // Asking for memory is activity: a session waiting for room is not idle.
        self.mark_active();
        self.record.ledger.wait(charge);
        self.publish_gpu_bytes();
        let charged = acquire(
            settings.budget.clone(),
            self.record.owner().clone(),
            charge,
            settings.wait_rules,
            self.make_room(),
        );
        let (bytes, binding) = (msg.bytes, msg.binding);
        Box::pin(
            charged
                .into_actor(self)
                .then(move |charged, session, _ctx| {
                    session.record.ledger.stop_waiting(charge);
                    session.publish_gpu_bytes();
                    let charged = match charged {
                        Ok(charged) => charged,
                        Err(source) => return ready(Err(session.allocation_error(source))),
                    };
                    // The session may have begun to end while it waited: the charge
                    // is dropped (refunded) and the pool is never asked.
                    if let Err(refused) = session.check(Event::Allocate) {
                        return ready(Err(refused));
                    }
                    if let Some(error) = session.not_on_gpu() {
                        return ready(Err(error));
                    }
                    session.record.ledger.reserve(charged.commit());
                    let (reply, answer) = oneshot::channel();
                    session.record.settings.pool.allocate(
                        AllocRequest {
                            session: session.record.id,
                            id: AllocationId::next(),
                            bytes,
                        },
                        reply,
                    );
                    Box::pin(
                        answer
                            .into_actor(session)
                            .map(move |answer, session, _ctx| {
                                let answer = answer.unwrap_or(Err(GpuError::Unavailable));
                                session.guarded(|session| {
                                    session.finish_allocation(charge, binding, answer)
                                })
                            }),
                    )
                }),
        )
    }

    fn finish_allocation(
        &mut self,
        charge: u64,
        binding: Binding,
        answer: Result<Allocated, GpuError>,
    ) -> Result<Allocated, SessionError> {
        let budget = &self.record.settings.budget;
        match answer {
            Ok(allocated) => {
                if allocated.bytes != charge {
                    budget.correct(self.record.owner(), charge, allocated.bytes);
                }
                self.record.ledger.confirm(charge, allocated, binding);
                self.accept(Event::Allocate);
                self.publish_gpu_bytes();
                Ok(allocated)
            }
            Err(gpu) => {
                self.record.ledger.cancel(charge);
                // Once the end is reported, its release refunds what was in flight.
                if !self.record.has_reported() {
                    budget.refund(self.record.owner(), charge);
                }
                Err(self.allocation_error(AllocError::Gpu(gpu)))
            }
        }
    }

    fn buffer_access(&mut self, caller: &crate::ids::Caller) -> Result<(), SessionError> {
        self.authorize(caller)?;
        self.check(Event::Touch)?;
        self.mark_active();
        Ok(())
    }

    fn gpu_answer<T: 'static>(
        &mut self,
        answer: oneshot::Receiver<Result<T, GpuError>>,
    ) -> Reply<T> {
        let id = self.record.id;
        Box::pin(answer.into_actor(self).map(move |answer, _session, _ctx| {
            answer
                .unwrap_or(Err(GpuError::Unavailable))
                .map_err(|gpu| SessionError::Allocation {
                    id,
                    source: AllocError::Gpu(gpu),
                })
        }))
    }

    /// An offload the pool did not answer within `step_timeout`: it may
    /// still be carried out. The session counts its buffers offloaded from
    /// now on, so its next use restores them; requests execute in order (see
    /// `GpuPool`), so that restore comes after the late offload, and finds
    /// the buffers still on the GPU (nothing to bring back) if the offload
    /// failed or never ran. Either way the books agree afterwards.
    fn offload_timed_out(&self, waited: std::time::Duration) -> GpuError {
        tracing::error!(
            target: "sessionbus::supervisor",
            event = "session.offload_timed_out",
            session_id = %self.record.id,
            timeout_ms = waited.as_millis() as u64,
            "the GPU did not answer an offload in time; the session restores its buffers before their next use"
        );
        GpuError::TimedOut {
            operation: "offload",
            waited,
        }
    }

    fn offload(&mut self, msg: Offload, ctx: &mut Context<Self>) -> Reply<SessionOffload> {
        let refused = |why: &str| SessionError::OffloadRefused {
            id: self.record.id,
            why: why.to_owned(),
        };
        if let Err(error) = self.authorize(&msg.caller) {
            return ready(Err(error));
        }
        let kv = self.kv_on_device();
        let has_buffers = !self.record.ledger.live().is_empty();
        let why = if self.lifecycle.state() != State::Established || self.ending.is_some() {
            Some("the session is ending")
        } else if !self.leases.is_empty() {
            Some("a lease is held: work is in flight on its buffers")
        } else if self.record.ledger.in_flight() > 0 || self.record.ledger.is_waiting() {
            Some("an allocation is in flight or waiting for room")
        } else if self.is_offloaded() || self.restoring {
            Some("already offloaded")
        } else if self.awaiting_gpu > 0 {
            Some("a request is waiting for its buffers to come back")
        } else if !has_buffers && kv.is_none() {
            Some("nothing on the GPU")
        } else {
            None
        };
        if let Some(why) = why {
            return ready(Err(refused(why)));
        }
        let settings = self.record.settings.clone();
        let id = self.record.id;
        let step_timeout = settings.step_timeout;
        let host_limit = msg.host_limit;
        let buffers = has_buffers.then(|| {
            let (reply, answer) = oneshot::channel();
            settings.pool.offload_session(id, reply);
            tokio::time::timeout(step_timeout, answer)
        });
        // Buffers first, then the KV blocks; the KV blocks stay if the
        // buffers could not go (a timed-out buffer offload counts as done,
        // see `offload_timed_out`).
        let work = async move {
            let buffers = match buffers {
                Some(answer) => Some(answer.await),
                None => None,
            };
            let failed = matches!(buffers, Some(Ok(Ok(Err(_)) | Err(_))));
            let kv = match kv {
                Some((store, table)) if !failed => Some(store.offload(table, host_limit).await),
                _ => None,
            };
            (buffers, kv)
        };
        let (tx, rx) = oneshot::channel();
        // Nothing else is handled until the offload is complete, so no
        // message ever sees memory that is half gone; bounded, so that a
        // hung device cannot hold the session (and its end) for longer.
        ctx.wait(
            work.into_actor(self)
                .map(move |(buffers, kv), session, _ctx| {
                    let started_at = std::time::Instant::now();
                    let buffers = match buffers {
                        None => Ok(OffloadReport {
                            session: id,
                            buffers: 0,
                            bytes: 0,
                            started_at,
                            finished_at: started_at,
                        }),
                        Some(Ok(answer)) => answer.unwrap_or(Err(GpuError::Unavailable)),
                        Some(Err(_)) => Err(session.offload_timed_out(step_timeout)),
                    };
                    let moved = match &buffers {
                        Ok(report) => Some(report.bytes),
                        // Counted as offloaded all the same (see `offload_timed_out`).
                        Err(GpuError::TimedOut { .. }) => Some(session.record.ledger.live_bytes()),
                        Err(_) => None,
                    };
                    let mut host_bytes = 0;
                    if let Some(bytes) = moved.filter(|_| has_buffers) {
                        let charged = session.record.ledger.charged();
                        session.record.ledger.set_offloaded(true);
                        session.publish_gpu_bytes();
                        settings.budget.refund(session.record.owner(), charged);
                        host_bytes += bytes;
                    }
                    let kv_blocks = match kv {
                        // Under pressure, host memory was full: the blocks stay
                        // on the device, and the buffers' offload (if any) stands.
                        Some(Err(KvStoreError::HostMemoryFull { .. })) if host_limit.is_some() => {
                            Ok(0)
                        }
                        Some(Ok(blocks)) => {
                            if blocks > 0 {
                                session.kv_offloaded = true;
                                session.record.shared.set_holds_kv(false);
                            }
                            Ok(blocks)
                        }
                        Some(Err(source)) => Err(SessionError::Kv { id, source }),
                        None => Ok(0),
                    };
                    let kv_bytes = kv_blocks
                        .as_ref()
                        .map_or(0, |b| b * session.kv_block_bytes());
                    host_bytes += kv_bytes;
                    if session.is_offloaded() {
                        send_now_or_later(
                            &settings.registry,
                            MemoryMoved::Offloaded {
                                id,
                                bytes: host_bytes,
                            },
                        );
                    }
                    let answer = match (buffers, kv_blocks) {
                        (Err(gpu), _) => Err(SessionError::Allocation {
                            id,
                            source: AllocError::Gpu(gpu),
                        }),
                        (Ok(_), Err(error)) => Err(error),
                        (Ok(buffers), Ok(kv_blocks)) => Ok(SessionOffload {
                            buffers,
                            kv_blocks,
                            kv_bytes,
                        }),
                    };
                    let _ = tx.send(answer);
                }),
        );
        Box::pin(rx.into_actor(self).map(move |answer, _session, _ctx| {
            answer.unwrap_or(Err(SessionError::Allocation {
                id,
                source: AllocError::Gpu(GpuError::Unavailable),
            }))
        }))
    }
}

impl Handler<Allocate> for SessionActor {
    type Result = ResponseActFuture<Self, Result<Allocated, SessionError>>;

    fn handle(&mut self, msg: Allocate, ctx: &mut Self::Context) -> Self::Result {
        if let Err(refused) = self.guarded(|session| {
            session.authorize(&msg.caller)?;
            session.check(Event::Allocate)
        }) {
            return ready(Err(refused));
        }
        self.on_gpu(ctx, move |session, ctx| session.allocate(msg, ctx))
    }
}

impl Handler<WriteBuffer> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), SessionError>>;

    fn handle(&mut self, msg: WriteBuffer, ctx: &mut Self::Context) -> Self::Result {
        if let Err(refused) = self.guarded(|session| session.buffer_access(&msg.caller)) {
            return ready(Err(refused));
        }
        self.on_gpu(ctx, move |session, _ctx| {
            let (reply, answer) = oneshot::channel();
            let pool = &session.record.settings.pool;
            pool.write(session.record.id, msg.id, msg.offset, msg.data, reply);
            session.gpu_answer(answer)
        })
    }
}

impl Handler<ReadBuffer> for SessionActor {
    type Result = ResponseActFuture<Self, Result<Vec<u8>, SessionError>>;

    fn handle(&mut self, msg: ReadBuffer, ctx: &mut Self::Context) -> Self::Result {
        if let Err(refused) = self.guarded(|session| session.buffer_access(&msg.caller)) {
            return ready(Err(refused));
        }
        self.on_gpu(ctx, move |session, _ctx| {
            let (reply, answer) = oneshot::channel();
            session
                .record
                .settings
                .pool
                .read(session.record.id, msg.id, reply);
            session.gpu_answer(answer)
        })
    }
}

impl Handler<Offload> for SessionActor {
    type Result = ResponseActFuture<Self, Result<SessionOffload, SessionError>>;

    fn handle(&mut self, msg: Offload, ctx: &mut Self::Context) -> Self::Result {
        self.offload(msg, ctx)
    }
}
