//! Starting the engine, and the handle an application drives it with.

use std::net::IpAddr;
use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use actix::{Actor, AsyncContext, Context, Recipient};
use tokio::sync::mpsc;

use crate::budget::Budget;
use crate::bus::{Delivery, Sink, SubscriptionId};
use crate::cleanup::{self, CleanupActor, Pacer, Release, ReleaseQueue};
use crate::config::{ConfigError, EngineConfig};
use crate::context::ContextPolicyFactory;
use crate::events::{EventKinds, LifecycleEvent, ReleaseReceipt};
use crate::expiry::ExpiryPolicy;
use crate::gpu::{GpuPool, PoolInfo, PoolStats};
use crate::hooks::{BeforeRelease, Hooks};
use crate::ids::{Caller, ClientIp, Owner, SessionId, TraceId};
use crate::lifecycle::EndReason;
use crate::pseudonym::Pseudonymizer;
use crate::registry::*;
use crate::session::{SessionError, SessionHandle};
use crate::stopped::Stopped;

/// Options for opening a session.
#[derive(Clone)]
pub struct OpenOptions {
    /// Who owns the session.
    pub owner: Owner,
    /// The application request's trace id (a fresh one is drawn if `None`).
    pub trace_id: Option<TraceId>,
    /// Overrides the configured idle timeout and TTL for this session.
    pub expiry: Option<ExpiryPolicy>,
    /// Replaces the engine's context policy (built from `[context]`) for this session.
    pub context_policy: Option<ContextPolicyFactory>,
    /// The client's address, for the audit trail (never logged in clear).
    pub client_ip: Option<ClientIp>,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("owner", &self.owner)
            .field("trace_id", &self.trace_id)
            .field("client_ip", &self.client_ip)
            .field("expiry", &self.expiry)
            .field(
                "context_policy",
                &self.context_policy.as_ref().map(|_| "custom"),
            )
            .finish()
    }
}

impl OpenOptions {
    /// Options for `owner`, with a fresh trace id.
    pub fn new(owner: impl Into<Owner>) -> Self {
        OpenOptions {
            owner: owner.into(),
            trace_id: None,
            expiry: None,
            context_policy: None,
            client_ip: None,
        }
    }

    /// With the client's address (carried in `SessionStarted` and
    /// `SessionEndEvent` for the audit trail; logs never show it).
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip.into());
        self
    }

    /// With this expiry policy instead of the configured one.
    pub fn expiry(mut self, policy: ExpiryPolicy) -> Self {
        self.expiry = Some(policy);
        self
    }

    /// With this context policy instead of the engine's.
    pub fn context_policy(mut self, factory: ContextPolicyFactory) -> Self {
        self.context_policy = Some(factory);
        self
    }

    /// With this trace id.
    pub fn trace_id(mut self, trace_id: TraceId) -> Self {
        self.trace_id = Some(trace_id);
        self
    }
}

/// Starts the engine's actors.
#[derive(Debug)]
pub struct Engine;

/// The engine threads [`Engine::start_on_threads`] started, one per registry
/// shard past the first. Stop them once the engine has shut down.
#[derive(Debug)]
pub struct ShardThreads {
    arbiters: Vec<actix::Arbiter>,
}

impl ShardThreads {
    /// Stops every shard thread and waits for each to finish.
    pub fn stop_and_join(self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        for arbiter in self.arbiters {
            let _ = arbiter.join();
        }
    }
}

impl Engine {
    /// Starts the registry shards and the cleanup actor on the current actix
    /// arbiter (every shard on this one thread). Must be called from inside
    /// a running actix `System`. Owners in log lines are pseudonymised with
    /// a random key for this process.
    pub fn start(
        config: EngineConfig,
        pool: Arc<dyn GpuPool>,
    ) -> Result<EngineHandle, ConfigError> {
        Engine::start_with(config, pool, Pseudonymizer::random())
    }

    /// Like [`Engine::start`], with owners in log lines pseudonymised by
    /// `pseudonyms` (keyed by the application, so they are stable across
    /// processes and match the audit trail's).
    pub fn start_with(
        config: EngineConfig,
        pool: Arc<dyn GpuPool>,
        pseudonyms: Pseudonymizer,
    ) -> Result<EngineHandle, ConfigError> {
        let (engine, _none) = Engine::start_placed(config, pool, pseudonyms, false)?;
        Ok(engine)
    }

    /// Like [`Engine::start_with`], with shard 0 (and the cleanup actor) on
    /// the current arbiter and every other shard on an engine thread of its
    /// own, so that sessions of different shards run in parallel. Stop the
    /// threads with [`ShardThreads::stop_and_join`] after the shutdown.
    pub fn start_on_threads(
        config: EngineConfig,
        pool: Arc<dyn GpuPool>,
        pseudonyms: Pseudonymizer,
    ) -> Result<(EngineHandle, ShardThreads), ConfigError> {
        Engine::start_placed(config, pool, pseudonyms, true)
    }

    fn start_placed(
        config: EngineConfig,
        pool: Arc<dyn GpuPool>,
        pseudonyms: Pseudonymizer,
        threads: bool,
    ) -> Result<(EngineHandle, ShardThreads), ConfigError> {
        config.validate()?;
        config
            .budget
            .validate_for_device(pool.info().min_buffer_bytes)?;
        let pacer = Arc::new(Pacer::new(&config.release));
        let kv = match &config.kv {
            Some(kv) => Some(Arc::new(
                crate::kv_store::KvStore::new(
                    kv.clone(),
                    pool.clone(),
                    pacer.clone(),
                    config.supervision.step_timeout,
                )
                .map_err(|e| ConfigError::new(format!("kv.{}", e.field()), e.to_string()))?,
            )),
            None => None,
        };
        // Check what each shard would refuse before any shard starts.
        if config.context.enabled {
            crate::context::DecayingContext::factory(config.context.clone())?;
        }
        let parts = EngineParts {
            pool: pool.clone(),
            budget: Arc::new(Budget::new(&config.budget)),
            queue: Arc::new(ReleaseQueue::default()),
            pseudonyms: Arc::new(pseudonyms),
            kv,
            hooks: Arc::new(Hooks::new(config.hooks.timeout)),
            health: Arc::new(crate::supervision::Health::default()),
            epoch: crate::clock::Epoch::now(),
            shards: Shards::default(),
            subscription_ids: Default::default(),
            opens_paused: Default::default(),
            passivations: Default::default(),
        };
        let capacity = config.bus.subscriber_capacity;
        // One release pipeline for every shard: one queue (urgent ends go
        // before expiries whichever shard they come from), one pacer, one
        // dispatcher; each receipt goes back to its session's shard.
        let release = Release {
            pool: pool.clone(),
            pacer,
            queue: parts.queue.clone(),
            budget: parts.budget.clone(),
            hooks: parts.hooks.clone(),
            step_timeout: config.supervision.step_timeout,
            hand: Default::default(),
            panics: Default::default(),
            health: parts.health.clone(),
            limits: config.supervision.clone(),
            registry: parts.shards.clone(),
        };
        let intake = cleanup::intake(release.clone());
        CleanupActor::new(release).start();
        let count = config.sessions.shard_count();
        let mut arbiters = Vec::new();
        let mut shards = Vec::with_capacity(count);
        for shard in 0..count {
            let (config, parts, intake) = (config.clone(), parts.clone(), intake.clone());
            let create = move |ctx: &mut Context<RegistryActor>| {
                let mut registry = RegistryActor::new(&config, ctx.address(), &parts, shard)
                    .expect("the configuration was validated above");
                registry.subscribe_internal(Sink::Intake(intake), EventKinds::ENDED);
                registry
            };
            let addr = match threads && shard > 0 {
                true => {
                    let arbiter = actix::Arbiter::new();
                    let addr = RegistryActor::start_in_arbiter(&arbiter.handle(), create);
                    arbiters.push(arbiter);
                    addr
                }
                false => RegistryActor::create(create),
            };
            shards.push(addr);
        }
        parts.shards.set(shards);
        let engine = EngineHandle {
            parts,
            next_open: Default::default(),
            bus_capacity: capacity,
            shutdown_deadline: config.shutdown.deadline,
        };
        Ok((engine, ShardThreads { arbiters }))
    }
}

/// The running engine. Cheap to clone; usable from any thread and any executor.
#[derive(Clone)]
pub struct EngineHandle {
    /// What every shard shares (their addresses included).
    parts: EngineParts,
    /// Opens go to the shards in turn.
    next_open: Arc<AtomicUsize>,
    bus_capacity: usize,
    shutdown_deadline: std::time::Duration,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("pool", self.parts.pool.info())
            .finish()
    }
}

impl EngineHandle {
    /// Opens a session owned by `owner`; the handle acts as that owner.
    pub async fn open(&self, owner: impl Into<Owner>) -> Result<SessionHandle, OpenError> {
        self.open_with(OpenOptions::new(owner)).await
    }

    /// Opens a session with options.
    pub async fn open_with(&self, options: OpenOptions) -> Result<SessionHandle, OpenError> {
        let owner = options.owner;
        let open = Open {
            owner: owner.clone(),
            trace_id: options.trace_id.unwrap_or_else(TraceId::random),
            expiry: options.expiry,
            context_policy: options.context_policy,
            client_ip: options.client_ip,
            kv_table: None,
        };
        let all = self.parts.shards.all();
        let shard = &all[self.next_open.fetch_add(1, Ordering::Relaxed) % all.len()];
        let opened = shard
            .send(open)
            .await
            .map_err(|_| OpenError::RuntimeStopped)??;
        Ok(SessionHandle::new(
            opened.id,
            Caller::User(owner),
            opened.link,
        ))
    }

    /// A handle to an existing session, for `caller` (its owner, or an operator).
    pub async fn attach(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
    ) -> Result<SessionHandle, SessionError> {
        let caller = caller.into();
        let attach = Attach {
            id,
            caller: caller.clone(),
        };
        let shard = self.parts.shards.for_id(id);
        let opened = shard
            .send(attach)
            .await
            .map_err(|_| SessionError::RuntimeStopped)??;
        Ok(SessionHandle::new(opened.id, caller, opened.link))
    }

    /// Closes a session by id; resolves with its release receipt. Closing an
    /// ended session returns the receipt of its end.
    pub async fn close(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
    ) -> Result<ReleaseReceipt, SessionError> {
        self.close_traced_opt(id, caller.into(), None).await
    }

    /// Closes a session by id like [`close`](Self::close), for a request that
    /// carries `trace_id` (see [`SessionHandle::close_traced`]).
    pub async fn close_traced(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
        trace_id: TraceId,
    ) -> Result<ReleaseReceipt, SessionError> {
        self.close_traced_opt(id, caller.into(), Some(trace_id))
            .await
    }

    async fn close_traced_opt(
        &self,
        id: SessionId,
        caller: Caller,
        trace_id: Option<TraceId>,
    ) -> Result<ReleaseReceipt, SessionError> {
        let close = CloseById {
            id,
            caller,
            trace_id,
            reason: EndReason::Closed,
        };
        self.parts
            .shards
            .for_id(id)
            .send(close)
            .await
            .map_err(|_| SessionError::RuntimeStopped)?
    }

    /// Ends a session by id with `reason`, for layers that decide an end
    /// outside the engine (the cluster layer ends a fenced node's sessions with
    /// [`EndReason::NodeLost`]). Same rules as [`EngineHandle::close`]: the
    /// caller must be the owner or an operator, and an ended session answers
    /// with the receipt of its first end (its reason unchanged).
    pub async fn end(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
        reason: EndReason,
    ) -> Result<ReleaseReceipt, SessionError> {
        let end = CloseById {
            id,
            caller: caller.into(),
            trace_id: None,
            reason,
        };
        self.parts
            .shards
            .for_id(id)
            .send(end)
            .await
            .map_err(|_| SessionError::RuntimeStopped)?
    }

    /// The ids of the sessions that are live (established) now; with
    /// `active_within`, only those with activity (message, touch, allocation,
    /// lease operation) in that window. One scan of the registry's table, for
    /// periodic mirroring (the cluster layer's coalesced directory renewals),
    /// not per request.
    pub async fn live_sessions(
        &self,
        active_within: Option<std::time::Duration>,
    ) -> Result<Vec<SessionId>, Stopped> {
        let lists = self.ask_all(|| LiveSessions { active_within }).await?;
        Ok(lists.into_iter().flatten().collect())
    }

    /// Sends what `message` makes to every shard, and waits for every answer.
    async fn ask_all<M>(&self, message: impl Fn() -> M) -> Result<Vec<M::Result>, Stopped>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        RegistryActor: actix::Handler<M>,
    {
        let asks = self
            .parts
            .shards
            .all()
            .iter()
            .map(|shard| shard.send(message()));
        futures::future::join_all(asks)
            .await
            .into_iter()
            .map(|answer| answer.map_err(|_| Stopped))
            .collect()
    }

    /// Subscribes `sink` on every shard under one id.
    async fn subscribe_sink(
        &self,
        sink: Sink,
        kinds: EventKinds,
        delivery: Delivery,
    ) -> Result<SubscriptionId, Stopped> {
        let id = crate::bus::next_subscription_id(&self.parts.subscription_ids);
        self.ask_all(|| Subscribe {
            id,
            sink: sink.clone(),
            kinds,
            delivery,
        })
        .await?;
        Ok(id)
    }

    /// Subscribes an actor to lifecycle events of `kinds`.
    pub async fn subscribe(
        &self,
        recipient: Recipient<LifecycleEvent>,
        kinds: EventKinds,
        delivery: Delivery,
    ) -> Result<SubscriptionId, Stopped> {
        self.subscribe_sink(Sink::Actor(recipient), kinds, delivery)
            .await
    }

    /// Subscribes a tokio channel (capacity `bus.subscriber_capacity`) to
    /// lifecycle events of `kinds`, for applications without actors.
    pub async fn subscribe_channel(
        &self,
        kinds: EventKinds,
        delivery: Delivery,
    ) -> Result<mpsc::Receiver<LifecycleEvent>, Stopped> {
        let (sender, receiver) = mpsc::channel(self.bus_capacity);
        self.subscribe_sink(Sink::Channel(sender), kinds, delivery)
            .await?;
        Ok(receiver)
    }

    /// Removes a subscription; `Ok(false)` if there was none with that id.
    pub async fn unsubscribe(&self, id: SubscriptionId) -> Result<bool, Stopped> {
        let removed = self.ask_all(|| Unsubscribe(id)).await?;
        Ok(removed.into_iter().any(|removed| removed))
    }

    /// The registry's counters.
    pub async fn stats(&self) -> Result<RegistryStats, Stopped> {
        Ok(merge_stats(self.ask_all(|| Stats).await?))
    }

    /// The GPU pool's device.
    pub fn pool_info(&self) -> &PoolInfo {
        self.parts.pool.info()
    }

    /// The GPU pool's own counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.parts.pool.stats()
    }

    /// Waits up to `timeout` for reliable subscribers' backlogs to drain;
    /// returns how many events are still undelivered.
    pub async fn flush_bus(&self, timeout: std::time::Duration) -> Result<usize, Stopped> {
        let left = self.ask_all(|| FlushBus { timeout }).await?;
        Ok(left.into_iter().sum())
    }

    /// Allocates `bytes` of GPU memory for a session id the registry does not
    /// know (`testing` builds only): the kind of leak the sweeper exists
    /// to find. Resolves once the buffer exists.
    #[cfg(feature = "testing")]
    pub async fn inject_orphan_allocation(&self, bytes: u64) -> Result<SessionId, crate::GpuError> {
        let session = SessionId::random();
        let (reply, allocated) = tokio::sync::oneshot::channel();
        let request = crate::AllocRequest {
            session,
            id: crate::AllocationId::next(),
            bytes,
        };
        self.parts.pool.allocate(request, reply);
        allocated
            .await
            .unwrap_or(Err(crate::GpuError::Unavailable))?;
        Ok(session)
    }

    /// Ends every live session with reason `device_lost`: the GPU device
    /// holding their memory is gone. Their releases run as usual (the pool
    /// frees what the lost device still holds). Answers how many it ended,
    /// once each session has taken the end; a session that was already
    /// ending (a close draining a lease) keeps its own end and is not
    /// counted. Does not wait for the releases (see
    /// [`end_sessions_on_device_loss_within`](Self::end_sessions_on_device_loss_within)).
    pub async fn end_sessions_on_device_loss(&self) -> Result<usize, Stopped> {
        let report = self.end_all_on_device_loss(None).await?;
        Ok(report.ended)
    }

    /// Like [`end_sessions_on_device_loss`](Self::end_sessions_on_device_loss),
    /// then waits until the release of every session that was live is
    /// complete (those it ended and those already ending alike), for at most
    /// `deadline` in all. What is still under way then is counted in
    /// `unreleased`, never waited for past the deadline. The timing runs on
    /// the engine's thread, so any executor may await this.
    pub async fn end_sessions_on_device_loss_within(
        &self,
        deadline: std::time::Duration,
    ) -> Result<DeviceLossReport, Stopped> {
        self.end_all_on_device_loss(Some(deadline)).await
    }

    async fn end_all_on_device_loss(
        &self,
        wait_for_releases: Option<std::time::Duration>,
    ) -> Result<DeviceLossReport, Stopped> {
        let reports = self
            .ask_all(|| EndAll {
                reason: crate::lifecycle::EndReason::DeviceLost,
                wait_for_releases,
            })
            .await?;
        // The slabs are on the lost device: once every shard's sessions
        // released their tables, they leave the books (their buffers go with
        // the device), so new blocks come from slabs on the new one.
        self.parts
            .shards
            .coordinator()
            .send(ReleaseSharedAfterEnds {
                wait_for_hooks: false,
            })
            .await
            .map_err(|_| Stopped)?;
        Ok(merge_device_loss(reports))
    }

    /// Refuses every open, on every shard, with
    /// [`OpenError::DeviceRecovering`] until the guard is dropped: for a
    /// device recovery, from before the sessions are ended until the new
    /// device is open, so no session admitted in between puts its memory
    /// (buffers or KV slabs) on the lost device. `Runtime::recover_gpu` holds
    /// one; an application replacing its own device holds one the same way.
    pub fn pause_opens_for_device_recovery(&self) -> OpensPaused {
        OpensPaused::new(self.parts.opens_paused.clone())
    }

    /// Why the runtime failed, if one of its supervised tasks panicked past
    /// the restart limit (`[supervision]`); `None` while healthy.
    pub fn failure(&self) -> Option<String> {
        self.parts.health.failed()
    }

    /// Makes the cleanup dispatcher panic `times` times (`testing`
    /// builds only), each right after it took a release off the queue and
    /// before it handed it to the pool: the worst moment for a restart.
    #[cfg(feature = "testing")]
    pub fn inject_cleanup_panics(&self, times: u32) {
        self.parts
            .health
            .inject_panics
            .fetch_add(times, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops admitting sessions, ends every live session with reason
    /// `shutdown`, and resolves once all their memory is released, or at
    /// `deadline` with what is left counted in the report. Leases still held
    /// at three quarters of the deadline are forced. Releases go out unpaced.
    ///
    /// This stops the engine only; an application on the `sessionbus`
    /// crate calls `Runtime::shutdown`, which also stops its threads.
    pub async fn shutdown_within(
        &self,
        deadline: std::time::Duration,
    ) -> Result<ShutdownReport, Stopped> {
        let reports = self.ask_all(|| Shutdown { deadline }).await?;
        let mut report = merge_shutdown(reports);
        let shared = self
            .parts
            .shards
            .coordinator()
            .send(ReleaseSharedAfterEnds {
                wait_for_hooks: true,
            })
            .await
            .map_err(|_| Stopped)?;
        if shared.kv.is_some() {
            report.stats.kv = shared.kv;
        }
        report.stats.hooks = shared.hooks;
        report.stats.budget = shared.budget;
        report.stats.release_queue = shared.release_queue;
        // Read off the one release queue once every shard has reported (a
        // shard that finished early read it while others still released).
        report.bytes_unfinished =
            shared.release_queue.queued_bytes + shared.release_queue.in_flight_bytes;
        Ok(report)
    }

    /// Registers a pre-destroy hook, named `name` in logs: it runs after
    /// every session end and before that session's GPU memory is released,
    /// for at most `[hooks] timeout`. Failures, panics and timeouts are
    /// logged (with the error's source chain), counted in `stats().hooks`,
    /// and never stop the release. See [`BeforeRelease`] for what a hook may be.
    pub fn on_before_release(&self, name: impl Into<String>, hook: impl BeforeRelease) {
        self.parts.hooks.add(name.into(), Arc::new(hook));
    }

    /// [`shutdown_within`](Self::shutdown_within) the configured
    /// `[shutdown] deadline`.
    pub async fn shutdown(&self) -> Result<ShutdownReport, Stopped> {
        self.shutdown_within(self.shutdown_deadline).await
    }
}
