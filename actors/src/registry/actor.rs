//! Ground rules: the registry is the only owner of the id → session map and
//! the only publisher of `SessionEndEvent`. It never waits on anything slow:
//! GPU work happens on the pool's thread, subscribers are fed without waiting
//! (see `bus`), and futures it hands out resolve from messages it receives.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::error::OpenError;
use super::expiry::ExpiryState;
use super::pressure::PressureState;
use super::shards::EngineParts;
use super::shutdown::ShutdownInProgress;
use super::stats::RegistryStats;
use super::sweeper::SweeperState;
use super::tombstones::{Tombstone, Tombstones};
use crate::bus::{Bus, Sink, SubscriptionId};
use crate::clock;
use crate::config::{ConfigError, EngineConfig, SessionsConfig};
use crate::context::DecayingContext;
use crate::events::{EventKinds, LifecycleEvent, ReleaseReceipt, SessionStarted};
use crate::expiry::ExpiryPolicy;
use crate::ids::{Caller, IdMap, SessionId};
use crate::lifecycle::EndReason;
use crate::protocol::registry::*;
use crate::protocol::session::End;
use crate::session::{EndGuard, Link, SessionActor, SessionError, SessionSettings, SessionShared};

pub(super) struct LiveSession {
    pub(super) shared: Arc<SessionShared>,
    /// Callers waiting for this session's receipt (closed by id, or a racing second close).
    /// Boxed: most sessions end with nobody waiting by id, and the registry
    /// holds one entry per live session (8 bytes, not a `Vec`'s 24).
    #[allow(clippy::box_collection)]
    pub(super) waiters: Option<Box<Vec<oneshot::Sender<ReleaseReceipt>>>>,
    /// `None`: the configured default (kept once, in `ExpiryState`): the
    /// registry holds one entry per live session, so each byte counts a million times.
    pub(super) policy: Option<Box<ExpiryPolicy>>,
    pub(super) opened_us: u64,
    /// Where the session is filed in the deadline queue (`NOT_FILED` if it
    /// is not: a sentinel, 8 bytes a live session rather than 16).
    due_us: u64,
}

/// `LiveSession::due_us` of a session not in the deadline queue (never a
/// due time: `next_due` stops at `LATEST_DUE_US`).
const NOT_FILED: u64 = u64::MAX;
const _: () = assert!(crate::expiry::LATEST_DUE_US < NOT_FILED);

impl LiveSession {
    /// Where the session is filed in the deadline queue, if it is.
    pub(super) fn due(&self) -> Option<u64> {
        (self.due_us != NOT_FILED).then_some(self.due_us)
    }

    /// Files it at `due` (or nowhere); returns where it was filed.
    pub(super) fn set_due(&mut self, due: Option<u64>) -> Option<u64> {
        let before = self.due();
        self.due_us = due.unwrap_or(NOT_FILED);
        before
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) opened: u64,
    pub(super) ended_by: [u64; EndReason::ALL.len()],
    pub(super) released: u64,
    pub(super) released_buffers: u64,
    pub(super) released_bytes: u64,
    pub(super) incidents: u64,
    pub(super) sweeper_incidents: u64,
    pub(super) sweeps: u64,
    pub(super) leases_revoked: u64,
    pub(super) context_resets: u64,
    pub(super) drains_forced: u64,
}

/// Messages that may wait for the registry. Every open, attach, end and
/// receipt passes through it, so it is far deeper than a session's mailbox;
/// an end that still finds it full is delivered anyway (see `EndGuard::report`).
const REGISTRY_MAILBOX: usize = 4_096;

pub(crate) struct RegistryActor {
    config: SessionsConfig,
    pub(super) settings: Arc<SessionSettings>,
    /// Which shard this is (of `settings.shards`).
    pub(super) shard: usize,
    /// Device recoveries under way (shared by every shard): opens refused.
    opens_paused: Arc<std::sync::atomic::AtomicUsize>,
    bus: Bus,
    /// Boxed: the table keeps ~2 buckets per entry, so small buckets save
    /// more than the extra pointer costs (measured per idle session at 1M).
    pub(super) sessions: IdMap<Box<LiveSession>>,
    pub(super) tombstones: Tombstones,
    pub(super) releasing: usize,
    pub(super) counters: Counters,
    pub(super) shutdown: Option<ShutdownInProgress>,
    pub(super) expiry: ExpiryState,
    pub(super) sweeper: SweeperState,
    pub(super) pressure: PressureState,
    /// Pre-destroy hooks, for their counts in `stats()`.
    pub(crate) hooks: Arc<crate::hooks::Hooks>,
    /// Per-step timings of the releases the cleanup completed.
    steps: crate::supervision::StepTimings,
    /// Restarts and escalation of the runtime's own tasks.
    pub(crate) health: Arc<crate::supervision::Health>,
    /// `sessions.passivate_after`: idle sessions park past it.
    pub(super) passivate_after: Option<Duration>,
    /// The next look for idle sessions: when, and how to cancel it.
    pub(super) passivation_wake: Option<(u64, SpawnHandle)>,
}

impl RegistryActor {
    /// Shard `shard` of the engine that shares `parts`.
    pub(crate) fn new(
        config: &EngineConfig,
        me: Addr<RegistryActor>,
        parts: &EngineParts,
        shard: usize,
    ) -> Result<Self, ConfigError> {
        let sessions = config.sessions.clone();
        let tombstones = Tombstones::new(sessions.tombstones, sessions.tombstone_ttl);
        let mut settings = SessionSettings::new(
            parts.epoch,
            config,
            parts.pool.clone(),
            me,
            match config.context.enabled {
                true => Some(DecayingContext::factory(config.context.clone())?),
                false => None,
            },
            parts.budget.clone(),
            parts.pseudonyms.clone(),
        );
        settings.kv = parts.kv.clone();
        settings.release_queue = Some(parts.queue.clone());
        settings.shards = parts.shards.clone();
        settings.passivations = parts.passivations.clone();
        Ok(RegistryActor {
            config: sessions,
            settings: Arc::new(settings),
            shard,
            opens_paused: parts.opens_paused.clone(),
            bus: Bus::new(parts.subscription_ids.clone()),
            sessions: IdMap::default(),
            tombstones,
            releasing: 0,
            counters: Counters::default(),
            shutdown: None,
            expiry: ExpiryState::new(config.expiry.policy()),
            sweeper: SweeperState::new(config.expiry.sweep_interval, config.leases.drain_timeout),
            pressure: PressureState::new(&config.budget, parts.budget.clone(), parts.queue.clone()),
            hooks: parts.hooks.clone(),
            steps: Default::default(),
            health: parts.health.clone(),
            passivate_after: config.sessions.passivation(),
            passivation_wake: None,
        })
    }

    /// Subscribes one of the runtime's own actors (reliable, never removable).
    pub(crate) fn subscribe_internal(&mut self, sink: Sink, kinds: EventKinds) -> SubscriptionId {
        self.bus.subscribe_internal(sink, kinds)
    }

    pub(super) fn stats(&self) -> RegistryStats {
        let ended_by: Vec<_> = EndReason::ALL
            .iter()
            .zip(self.counters.ended_by)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, n))
            .collect();
        RegistryStats {
            live: self.sessions.len(),
            releasing: self.releasing,
            opened: self.counters.opened,
            ended: ended_by.iter().map(|(_, n)| n).sum(),
            ended_by,
            released: self.counters.released,
            released_buffers: self.counters.released_buffers,
            released_bytes: self.counters.released_bytes,
            incidents: self.counters.incidents,
            sweeper_incidents: self.counters.sweeper_incidents,
            sweeps: self.counters.sweeps,
            leases_revoked: self.counters.leases_revoked,
            context_resets: self.counters.context_resets,
            drains_forced: self.counters.drains_forced,
            scheduled_deadlines: self.expiry.queue.len(),
            bus_dropped: self.bus.dropped_total(),
            bus_backlog: self.bus.backlog_len(),
            budget: self.pressure.budget.snapshot(),
            release_queue: self.pressure.queue.stats(),
            pressure: self.pressure.counters,
            hooks: self.hooks.stats(),
            steps: self.steps,
            kv: self.settings.kv.as_ref().map(|kv| kv.stats()),
            supervision: self.health.stats(),
            passivation: self.settings.passivations.snapshot(),
        }
    }

    fn unauthorized(id: SessionId, caller: &Caller) -> SessionError {
        SessionError::Unauthorized {
            id,
            caller: caller.to_string(),
        }
    }

    /// Registers `waiter` for the receipt of `id`, or answers at once.
    fn wait_for_receipt(
        &mut self,
        id: SessionId,
        caller: &Caller,
    ) -> Result<oneshot::Receiver<ReleaseReceipt>, SessionError> {
        let (waiter, receipt) = oneshot::channel();
        if let Some(live) = self.sessions.get_mut(&id) {
            if !caller.may_act_on(live.shared.owner()) {
                return Err(Self::unauthorized(id, caller));
            }
            live.waiters.get_or_insert_default().push(waiter);
        } else if let Some(stone) = self.tombstones.get_mut(&id) {
            if !caller.may_act_on(stone.shared.owner()) {
                return Err(Self::unauthorized(id, caller));
            }
            match &stone.receipt {
                Some(done) => {
                    let _ = waiter.send(done.clone());
                }
                None => stone.waiters.push(waiter),
            }
        } else {
            return Err(SessionError::Unknown { id });
        }
        Ok(receipt)
    }

    pub(super) fn incident(&mut self) {
        self.counters.incidents += 1;
    }
}

impl Actor for RegistryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(REGISTRY_MAILBOX);
        // Age out tombstones on a quiet system too, not only when new ones arrive.
        let every = self
            .config
            .tombstone_ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        ctx.run_interval(every, |registry, _ctx| {
            registry.tombstones.forget_old(clock::now())
        });
        ctx.run_interval(self.sweeper.every, |registry, ctx| registry.sweep(ctx));
    }
}

impl Drop for RegistryActor {
    fn drop(&mut self) {
        self.end_parked_sessions();
    }
}

impl Handler<Open> for RegistryActor {
    type Result = Result<Opened, OpenError>;

    fn handle(&mut self, msg: Open, ctx: &mut Self::Context) -> Self::Result {
        let kv_table = msg.kv_table;
        let opened = self.open_session(msg, ctx);
        // A fork's table belongs to the new session only once it exists.
        if opened.is_err()
            && let (Some(table), Some(kv)) = (kv_table, &self.settings.kv)
        {
            kv.release_table(table);
        }
        opened
    }
}

impl RegistryActor {
    fn open_session(&mut self, msg: Open, ctx: &mut Context<Self>) -> Result<Opened, OpenError> {
        if self.shutting_down() {
            return Err(OpenError::ShuttingDown);
        }
        if let Some(failed) = self.health.failed() {
            return Err(OpenError::RuntimeFailed(failed));
        }
        if self.opens_paused.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Err(OpenError::DeviceRecovering);
        }
        let queue = self.pressure.queue.clone();
        if !queue.admit_session(self.config.max_sessions as u64) {
            tracing::warn!(
                target: "sessionbus::supervisor",
                event = "session.refused",
                limit = self.config.max_sessions,
                "session refused: limit reached"
            );
            return Err(OpenError::AtCapacity {
                limit: self.config.max_sessions,
            });
        }
        // Admitted: from here on the count is given back on every path out.
        let policy = msg.expiry.unwrap_or(self.expiry.default_policy);
        if let Err(invalid) = policy.validate() {
            queue.session_gone();
            return Err(OpenError::InvalidOptions(invalid));
        }
        let shards = self.settings.shards.count();
        let id = loop {
            let id = SessionId::random_in_shard(self.shard, shards);
            if !self.sessions.contains_key(&id) && !self.tombstones.contains(&id) {
                break id;
            }
        };
        let opened_us = self.settings.epoch.now_micros();
        let mut shared = SessionShared::new(opened_us, msg.owner.clone());
        if self.passivate_after.is_some() {
            shared = shared.counting_inbox();
        }
        let shared = Arc::new(shared);
        let mut record = EndGuard::new(id, msg.trace_id, shared.clone(), self.settings.clone())
            .with_client_ip(msg.client_ip);
        record.kv_table = msg.kv_table;
        shared.set_holds_kv(msg.kv_table.is_some());
        let session = SessionActor::new(record, msg.context_policy);
        let capacity = self.config.mailbox_capacity;
        let addr = SessionActor::create(move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            session
        });
        shared.set_running(addr);
        let live = LiveSession {
            shared: shared.clone(),
            waiters: None,
            policy: msg.expiry.map(Box::new),
            opened_us,
            due_us: NOT_FILED,
        };
        self.sessions.insert(id, Box::new(live));
        self.schedule(id, ctx);
        self.look_for_idle_in(ctx);
        self.counters.opened += 1;
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "session.started",
            session_id = %id,
            owner = %self.settings.pseudonyms.display_owner(&msg.owner),
            trace_id = %msg.trace_id,
            "session started"
        );
        let started = SessionStarted {
            id,
            owner: msg.owner,
            trace_id: msg.trace_id,
            at: SystemTime::now(),
            client_ip: msg.client_ip,
        };
        self.bus.publish(LifecycleEvent::Started(Arc::new(started)));
        Ok(Opened {
            id,
            link: Link::new(shared, self.settings.shards.clone()),
        })
    }
}

impl Handler<Attach> for RegistryActor {
    type Result = Result<Opened, SessionError>;

    fn handle(&mut self, msg: Attach, _ctx: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        if let Some(live) = self.sessions.get(&id) {
            if !msg.caller.may_act_on(live.shared.owner()) {
                return Err(Self::unauthorized(id, &msg.caller));
            }
            if live.shared.is_reachable() {
                // Running or parked alike: its next message reaches it.
                return Ok(Opened {
                    id,
                    link: Link::new(live.shared.clone(), self.settings.shards.clone()),
                });
            }
            // The session is ending; its end is on the way. Answer as for an ended session.
            let (state, reason) = (live.shared.state(), live.shared.reason());
            return Err(SessionError::NotEstablished {
                id,
                state,
                event: crate::lifecycle::Event::Touch,
                reason,
            });
        }
        match self.tombstones.get_mut(&id) {
            Some(stone) if !msg.caller.may_act_on(stone.shared.owner()) => {
                Err(Self::unauthorized(id, &msg.caller))
            }
            Some(stone) => Err(SessionError::NotEstablished {
                id,
                state: stone.shared.state(),
                event: crate::lifecycle::Event::Touch,
                reason: Some(stone.reason),
            }),
            None => Err(SessionError::Unknown { id }),
        }
    }
}

impl Handler<CloseById> for RegistryActor {
    type Result = ResponseFuture<Result<ReleaseReceipt, SessionError>>;

    fn handle(&mut self, msg: CloseById, _ctx: &mut Self::Context) -> Self::Result {
        let receipt = self.wait_for_receipt(msg.id, &msg.caller);
        if let (Ok(_), Some(live)) = (&receipt, self.sessions.get(&msg.id)) {
            let end = End {
                caller: msg.caller,
                reason: msg.reason,
                waiter: None,
                deadline: None,
                seen_active_us: crate::protocol::session::NOT_SEEN_IDLE,
                trace_id: msg.trace_id,
            };
            // Refusal means it is already ending; the waiter above gets the receipt either way.
            live.shared.deliver(end);
        }
        Box::pin(async move { receipt?.await.map_err(|_| SessionError::RuntimeStopped) })
    }
}

impl Handler<AwaitReceipt> for RegistryActor {
    type Result = ResponseFuture<Result<ReleaseReceipt, SessionError>>;

    fn handle(&mut self, msg: AwaitReceipt, _ctx: &mut Self::Context) -> Self::Result {
        let receipt = self.wait_for_receipt(msg.id, &msg.caller);
        Box::pin(async move { receipt?.await.map_err(|_| SessionError::RuntimeStopped) })
    }
}

impl Handler<SessionFinished> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: SessionFinished, _ctx: &mut Self::Context) {
        let event = msg.event;
        let id = event.id;
        let removed = self.sessions.remove(&id);
        if let Some(live) = &removed {
            live.shared.set_unregistered();
            self.pressure.queue.session_gone();
        }
        if event.offloaded_bytes > 0 {
            let counters = &mut self.pressure.counters;
            counters.offloaded_now = counters.offloaded_now.saturating_sub(1);
            counters.offloaded_bytes = counters
                .offloaded_bytes
                .saturating_sub(event.offloaded_bytes);
        }
        let Some(live) = removed else {
            // Cannot happen by construction (the end guard reports once); if it
            // does, publishing again would break "exactly one end".
            self.incident();
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "session.duplicate_end",
                session_id = %id,
                reason = %event.reason,
                "a second end was reported for a session; ignored"
            );
            return;
        };
        if event.reason == EndReason::Evicted {
            self.pressure.counters.evicted += 1;
        }
        let reason = event.reason;
        let index = EndReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.counters.ended_by[index] += 1;
        self.note_end(reason);
        if reason == EndReason::Crashed {
            self.incident();
        }
        if let Some(due) = live.due() {
            self.expiry.queue.remove(id, due);
        }
        if event.drain.was_forced() {
            self.counters.drains_forced += 1;
        }
        self.releasing += 1;
        let mut waiters = live.waiters.map_or_else(Vec::new, |waiters| *waiters);
        waiters.extend(msg.waiters);
        let pseudonyms = &self.settings.pseudonyms;
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "session.ended",
            session_id = %id,
            owner = %pseudonyms.display_owner(live.shared.owner()),
            reason = %reason,
            buffers = event.allocations.len(),
            bytes = event.bytes,
            duration_us = event
                .ended_at
                .duration_since(event.created_at)
                .unwrap_or_default()
                .as_micros() as u64,
            trace_id = %event.request_trace_id(),
            ended_by = event
                .ended_by
                .as_ref()
                .map(|caller| tracing::field::display(pseudonyms.display_caller(caller))),
            lateness_us = event.deadline.map(|d| d.lateness().as_micros() as u64),
            drain_forced = event.drain.forced,
            "session ended"
        );
        let stone = Tombstone {
            reason,
            shared: live.shared,
            receipt: None,
            waiters,
        };
        self.tombstones.insert(id, stone);
        let receipt = ReleaseReceipt::nothing_to_release(&event)
            .then(|| ReleaseReceipt::nothing_released(&event));
        self.bus.publish(LifecycleEvent::Ended(Arc::new(event)));
        if let Some(receipt) = receipt {
            // Nothing was ever handed to the pool (or all of it is back): the
            // cleanup actor skips this end, and the books close here, with no
            // round trip through it or the GPU thread.
            self.complete_release(receipt);
        }
    }
}

impl Handler<ReleasesCompleted> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: ReleasesCompleted, _ctx: &mut Self::Context) {
        for receipt in msg.receipts {
            self.steps.add(&receipt.steps);
            self.complete_release(receipt);
        }
    }
}

impl RegistryActor {
    fn complete_release(&mut self, receipt: ReleaseReceipt) {
        let id = receipt.id;
        self.releasing = self.releasing.saturating_sub(1);
        self.counters.released += 1;
        self.counters.released_buffers += receipt.buffers;
        self.counters.released_bytes += receipt.bytes;
        if receipt.error.is_some() {
            self.incident();
        }
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "session.released",
            session_id = %id,
            reason = %receipt.reason,
            buffers = receipt.buffers,
            bytes = receipt.bytes,
            duration_us = receipt.end_to_release().as_micros() as u64,
            trace_id = %receipt.trace_id,
            "session memory released"
        );
        if let Some(stone) = self.tombstones.get_mut(&id) {
            stone.shared.set_closed();
            for waiter in stone.waiters.drain(..) {
                let _ = waiter.send(receipt.clone());
            }
        }
        self.tombstones.released(id, receipt.clone(), clock::now());
        self.bus
            .publish(LifecycleEvent::Released(Arc::new(receipt)));
        self.finish_shutdown_if_done();
    }
}

impl Handler<SessionRevived> for RegistryActor {
    type Result = ();

    fn handle(&mut self, _msg: SessionRevived, ctx: &mut Self::Context) {
        self.look_for_idle_in(ctx);
    }
}

impl Handler<Subscribe> for RegistryActor {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.bus
                .subscribe_as(msg.id, msg.sink, msg.kinds, msg.delivery),
        )
    }
}

impl Handler<Unsubscribe> for RegistryActor {
    type Result = bool;

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) -> bool {
        self.bus.unsubscribe(msg.0)
    }
}

impl Handler<Stats> for RegistryActor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _msg: Stats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats())
    }
}

impl Handler<FlushBus> for RegistryActor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: FlushBus, _ctx: &mut Self::Context) -> Self::Result {
        let backlogs = self.bus.backlogs();
        let deadline = clock::now() + msg.timeout;
        Box::pin(async move {
            loop {
                let left: usize = backlogs.iter().map(|b| b.borrow().len()).sum();
                if left == 0 || clock::now() >= deadline {
                    return left;
                }
                actix::clock::sleep(Duration::from_millis(1)).await;
            }
        })
    }
}

impl Handler<LeaseRevoked> for RegistryActor {
    type Result = ();

    fn handle(&mut self, _msg: LeaseRevoked, _ctx: &mut Self::Context) {
        self.counters.leases_revoked += 1;
    }
}

impl Handler<ContextWasReset> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: ContextWasReset, _ctx: &mut Self::Context) {
        let reset = msg.0;
        self.counters.context_resets += 1;
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "session.context_reset",
            session_id = %reset.id,
            owner = %self.settings.pseudonyms.display_owner(&reset.owner),
            reason = reset.reason.as_str(),
            turn = reset.turn,
            buffers = reset.buffers,
            bytes = reset.bytes,
            trace_id = %reset.trace_id,
            "session context reset: {}", reset.reason
        );
        self.bus
            .publish(LifecycleEvent::ContextReset(Arc::new(reset)));
    }
}
