//! The runtime an application embeds: start it, open sessions, shut it down.
//!
//! Ground rules: the runtime's actors live on one dedicated thread running
//! its own actix `System`; GPU work lives on the pool's own thread. The
//! application talks to both only through actix addresses and channels, whose
//! futures can be awaited from any executor. That is why the same runtime
//! works inside an actix application, a plain tokio application, or a
//! blocking program (`futures::executor::block_on`).

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use actix::Recipient;
use sessionbus_actors::{
    BeforeRelease, Caller, Delivery, DeviceLossReport, EndReason, EngineHandle, EventKinds,
    GpuPool, LifecycleEvent, OpenError, OpenOptions, Owner, PoolInfo, PoolStats, Pseudonymizer,
    RegistryStats, ReleaseReceipt, SessionError, SessionHandle, SessionId, ShutdownReport, Stopped,
    SubscriptionId, TraceId,
};
use tokio::sync::{mpsc, oneshot};

mod engine_thread;
mod error;
mod pool_choice;

use crate::audit::{self, AuditStats, AuditWriter};
use crate::config::Config;
#[cfg(feature = "wgpu")]
use crate::gpu::WgpuPool;
use crate::gpu::{GpuCounters, GpuInitError};
use crate::metrics::MetricsTask;
pub use error::StartError;
use pool_choice::{PoolChoice, PoolStop};

/// Builds a [`Runtime`].
#[derive(Default)]
pub struct RuntimeBuilder {
    config: Config,
    pool: Option<Arc<dyn GpuPool>>,
    #[cfg(feature = "wgpu")]
    device: Option<crate::gpu::WgpuDevice>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("config", &self.config)
            .field("pool", &self.pool.as_ref().map(|pool| pool.info()))
            .finish()
    }
}

impl RuntimeBuilder {
    /// Uses `config` instead of the defaults.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Runs on the application's own memory pool instead of opening a wgpu
    /// device: any [`GpuPool`](crate::pool::GpuPool) (memory owned by an
    /// inference engine's allocator, another wgpu device, CUDA through
    /// bindings of your choice). Audit, metrics, budgets, hooks, signals and
    /// shutdown work unchanged; `[gpu]` is not used, and the wgpu-only calls
    /// ([`Runtime::gpu_counters`], [`Runtime::recover_gpu`]'s reopen) say so.
    /// The runtime calls the pool from its engine thread and never stops
    /// it: the application owns it.
    pub fn pool(mut self, pool: Arc<dyn GpuPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Runs the runtime's own wgpu pool on the application's device instead
    /// of opening one from `[gpu]`: the application's kernels then read the
    /// sessions' KV blocks on the device they are on ([`Runtime::wgpu_buffer`]).
    #[cfg(feature = "wgpu")]
    pub fn wgpu_device(mut self, device: crate::gpu::WgpuDevice) -> Self {
        self.device = Some(device);
        self
    }

    /// Validates the configuration, opens the GPU device (unless a pool or
    /// a device was given), and starts the engine. Giving both a pool and a
    /// device is refused ([`StartError::PoolAndDevice`]).
    pub async fn start(self) -> Result<Runtime, StartError> {
        #[cfg(feature = "wgpu")]
        if self.pool.is_some() && self.device.is_some() {
            return Err(StartError::PoolAndDevice);
        }
        let choice = match self.pool {
            Some(pool) => PoolChoice::Application(pool),
            #[cfg(feature = "wgpu")]
            None if self.device.is_some() => PoolChoice::OwnWgpu(self.device.map(Box::new)),
            None => PoolChoice::own()?,
        };
        Runtime::start_on(self.config, choice).await
    }
}

/// What [`Runtime::shutdown`] did.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct StopReport {
    /// Sessions ended and memory released by the shutdown.
    pub sessions: ShutdownReport,
    /// Events that reliable bus subscribers had not taken by `bus.flush_timeout`
    /// (zero unless a reliable subscriber stopped reading).
    pub bus_undelivered: usize,
    /// wgpu's own counters after everything was released and the device
    /// polled; if the GPU thread hung (`gpu_stopped == false`), as they stood
    /// when shutdown stopped waiting for it. `None` on an application's pool.
    pub gpu_after: Option<GpuCounters>,
    /// Whether the `sessionbus-gpu` thread stopped within `[supervision]
    /// step_timeout`. `false`: the device or its driver is hung; shutdown
    /// returned without it, and `gpu_held` says what it still held (it
    /// destroys that if it ever comes back). Always `true` on an
    /// application's pool (the application stops it).
    pub gpu_stopped: bool,
    /// The pool's own count of what was still held on the GPU and in host
    /// copies when the GPU thread stopped, or was given up on (all zero
    /// buffers and bytes after a clean shutdown). On an application's pool:
    /// its `stats()` after every release.
    pub gpu_held: PoolStats,
    /// The audit trail's counters after its last record (`runtime.shutdown`)
    /// was written and synced; `None` without `[audit]`.
    pub audit: Option<AuditStats>,
    /// wgpu's counters when the device had just opened, before any session:
    /// `gpu_after == gpu_baseline` means every buffer was released. `None`
    /// on an application's pool.
    pub gpu_baseline: Option<GpuCounters>,
}

/// A running sessionbus: the engine's actors plus a memory pool (its own
/// wgpu device, or the application's, see [`RuntimeBuilder::pool`]).
///
/// Every call an application makes goes through the runtime's own methods;
/// [`engine`](Self::engine) hands out a cheap, cloneable [`EngineHandle`]
/// for tasks and threads. Once the runtime is stopped, calls that have no
/// other error answer [`Stopped`].
pub struct Runtime {
    engine: EngineHandle,
    pool: Arc<dyn GpuPool>,
    /// The runtime's own wgpu pool (`None` on an application's pool).
    #[cfg(feature = "wgpu")]
    wgpu: Option<Arc<WgpuPool>>,
    system: actix::System,
    engine_exit: Option<oneshot::Receiver<PoolStop>>,
    flush_timeout: std::time::Duration,
    /// `[supervision] step_timeout`: the longest any wait on the GPU
    /// thread lasts (a device reopen, the worker's stop).
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    gpu_step_timeout: Duration,
    /// The metrics subscriber (`None` unless `metrics.enabled`).
    metrics: Option<MetricsTask>,
    audit: Option<AuditWriter>,
    shutdown_deadline: std::time::Duration,
    /// Joined when the runtime is dropped, so the driver is never still being
    /// torn down on it while the process exits.
    engine_thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("pool", self.pool_info())
            .finish()
    }
}

impl Runtime {
    /// A builder with the default configuration.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Validates `config`, opens the GPU device, and starts the engine on its
    /// own thread. Awaitable from any executor; the caller's thread never
    /// blocks. (`Runtime::builder().config(config).start()`.)
    pub async fn start(config: Config) -> Result<Runtime, StartError> {
        Runtime::builder().config(config).start().await
    }

    async fn start_on(config: Config, choice: PoolChoice) -> Result<Runtime, StartError> {
        config.validate()?;
        // Opened first: an unwritable directory refuses the start before anything runs.
        let trail = match &config.audit {
            Some(audit) => Some(audit::open_trail(audit.clone()).await?),
            None => None,
        };
        // Log lines carry the same owner pseudonyms as the audit trail when it
        // has a key; otherwise pseudonyms are stable only within this process.
        let pseudonyms = trail
            .as_ref()
            .map_or_else(Pseudonymizer::random, audit::log_pseudonyms);
        let flush_timeout = config.bus.flush_timeout;
        let shutdown_deadline = config.shutdown.deadline;
        let gpu_step_timeout = config.supervision.step_timeout;
        let (started_tx, started_rx) = oneshot::channel::<engine_thread::Started>();
        let (exit_tx, exit_rx) = oneshot::channel();
        let engine_thread = thread::Builder::new()
            .name("sessionbus-engine".into())
            .spawn(move || engine_thread::run(config, choice, pseudonyms, started_tx, exit_tx))
            .map_err(StartError::Thread)?;
        let started = started_rx.await.map_err(|_| StartError::EngineDied)??;
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "runtime.started",
            adapter = %started.pool.info().adapter,
            backend = %started.pool.info().backend,
            "sessionbus runtime started"
        );
        let mut runtime = Runtime {
            engine: started.engine,
            pool: started.pool,
            #[cfg(feature = "wgpu")]
            wgpu: started.wgpu,
            system: started.system,
            engine_exit: Some(exit_rx),
            flush_timeout,
            gpu_step_timeout,
            metrics: started.metrics,
            audit: None,
            shutdown_deadline,
            engine_thread: Some(engine_thread),
        };
        if let Some(trail) = trail {
            // Subscribed before `start` returns, so no session can be opened unseen.
            let events = runtime
                .engine
                .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
                .await
                .map_err(|Stopped| StartError::EngineDied)?;
            let writer = AuditWriter::spawn(trail, events).map_err(audit::AuditError::Thread)?;
            runtime.audit = Some(writer);
        }
        Ok(runtime)
    }

    /// A cheap, cloneable handle to the engine, for tasks and threads: the
    /// same session calls as the runtime's own, without its shutdown.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Opens a session owned by `owner`; the handle acts as that owner.
    pub async fn open(&self, owner: impl Into<Owner>) -> Result<SessionHandle, OpenError> {
        self.engine.open(owner).await
    }

    /// Opens a session with options (trace id, client address, expiry, context policy).
    pub async fn open_with(&self, options: OpenOptions) -> Result<SessionHandle, OpenError> {
        self.engine.open_with(options).await
    }

    /// A handle to an existing session, for `caller` (its owner, or an operator).
    pub async fn attach(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
    ) -> Result<SessionHandle, SessionError> {
        self.engine.attach(id, caller).await
    }

    /// Closes a session by id; resolves with its release receipt. Closing an
    /// ended session returns the receipt of its end.
    pub async fn close(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
    ) -> Result<ReleaseReceipt, SessionError> {
        self.engine.close(id, caller).await
    }

    /// Closes a session by id for a request that carries `trace_id`.
    pub async fn close_traced(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
        trace_id: TraceId,
    ) -> Result<ReleaseReceipt, SessionError> {
        self.engine.close_traced(id, caller, trace_id).await
    }

    /// Ends a session by id with `reason` (see [`EngineHandle::end`]).
    pub async fn end(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
        reason: EndReason,
    ) -> Result<ReleaseReceipt, SessionError> {
        self.engine.end(id, caller, reason).await
    }

    /// The ids of the live sessions (see [`EngineHandle::live_sessions`]).
    pub async fn live_sessions(
        &self,
        active_within: Option<Duration>,
    ) -> Result<Vec<SessionId>, Stopped> {
        self.engine.live_sessions(active_within).await
    }

    /// Subscribes an actor to lifecycle events of `kinds`.
    pub async fn subscribe(
        &self,
        recipient: Recipient<LifecycleEvent>,
        kinds: EventKinds,
        delivery: Delivery,
    ) -> Result<SubscriptionId, Stopped> {
        self.engine.subscribe(recipient, kinds, delivery).await
    }

    /// Subscribes a tokio channel to lifecycle events of `kinds`, for
    /// applications without actors.
    pub async fn subscribe_channel(
        &self,
        kinds: EventKinds,
        delivery: Delivery,
    ) -> Result<mpsc::Receiver<LifecycleEvent>, Stopped> {
        self.engine.subscribe_channel(kinds, delivery).await
    }

    /// Removes a subscription; `Ok(false)` if there was none with that id.
    pub async fn unsubscribe(&self, id: SubscriptionId) -> Result<bool, Stopped> {
        self.engine.unsubscribe(id).await
    }

    /// The registry's counters.
    pub async fn stats(&self) -> Result<RegistryStats, Stopped> {
        self.engine.stats().await
    }

    /// Registers a pre-destroy hook (see [`EngineHandle::on_before_release`]).
    pub fn on_before_release(&self, name: impl Into<String>, hook: impl BeforeRelease) {
        self.engine.on_before_release(name, hook);
    }

    /// Why the runtime failed, if one of its supervised tasks panicked past
    /// the restart limit (`[supervision]`); `None` while healthy.
    pub fn failure(&self) -> Option<String> {
        self.engine.failure()
    }

    /// The memory pool's device (for the runtime's own wgpu pool: the adapter and backend in use).
    pub fn pool_info(&self) -> &PoolInfo {
        self.pool.info()
    }

    /// The memory pool's own counters: what it holds now.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The audit trail's counters (records written, write failures, files
    /// rotated and deleted); `None` without `[audit]`.
    pub fn audit_stats(&self) -> Option<AuditStats> {
        self.audit.as_ref().map(AuditWriter::stats)
    }

    /// wgpu's own counters for the runtime's wgpu device: the ground truth
    /// for leak checks. `None` on an application's pool.
    pub fn gpu_counters(&self) -> Option<GpuCounters> {
        #[cfg(feature = "wgpu")]
        if let Some(wgpu) = &self.wgpu {
            return Some(wgpu.counters());
        }
        None
    }

    /// The runtime's wgpu device and queue, for the application's own
    /// kernels (a paged-attention kernel reading a session's KV blocks);
    /// `None` on an application's pool.
    #[cfg(feature = "wgpu")]
    pub fn wgpu_device(&self) -> Option<crate::gpu::WgpuDevice> {
        self.wgpu.as_ref().map(|wgpu| wgpu.device())
    }

    /// The wgpu buffer behind allocation `id` (for KV blocks:
    /// [`KvBlock::buffer`](crate::KvBlock::buffer), a slab shared by many
    /// sessions), for the application's kernels. Refused on an
    /// application's pool (`GpuError::Unsupported`).
    #[cfg(feature = "wgpu")]
    pub async fn wgpu_buffer(
        &self,
        id: sessionbus_actors::AllocationId,
    ) -> Result<wgpu::Buffer, sessionbus_actors::GpuError> {
        match &self.wgpu {
            Some(wgpu) => wgpu.buffer(id).await,
            None => Err(sessionbus_actors::GpuError::Unsupported("wgpu buffers")),
        }
    }

    /// Whether wgpu reported the runtime's GPU device lost (see
    /// [`recover_gpu`](Self::recover_gpu)); always `false` on an
    /// application's pool (the application knows when its device is lost).
    pub fn gpu_lost(&self) -> bool {
        #[cfg(feature = "wgpu")]
        if let Some(wgpu) = &self.wgpu {
            return wgpu.is_lost();
        }
        false
    }

    /// Recovers from a lost GPU device without restarting the process:
    /// [`recover_gpu_within`](Self::recover_gpu_within) the configured
    /// `[shutdown] deadline` (the bound already chosen for ending every
    /// session). Returns how many sessions it ended with reason
    /// `device_lost`; sessions that were already ending (a close draining a
    /// lease) keep their own end and are not counted.
    pub async fn recover_gpu(&self) -> Result<usize, GpuInitError> {
        let deadline = self.shutdown_deadline;
        Ok(self.recover_gpu_within(deadline).await?.ended)
    }

    /// Recovers from a lost GPU device without restarting the process: ends
    /// every live session with reason `device_lost`, waits until the release
    /// of every session that was live is complete (those already ending
    /// included, whatever their reason) or `deadline` has passed, then opens
    /// a new device in place of the lost one. Opens meanwhile are refused
    /// with `OpenError::DeviceRecovering`; sessions opened afterwards use
    /// the new device; what the old one still held (releases still under way
    /// at the deadline, counted in `unreleased`) is dropped with it.
    ///
    /// The new device is waited for at most `[supervision] step_timeout`:
    /// a GPU thread that does not answer by then (a hung driver) gives
    /// [`GpuInitError::Unresponsive`], and the device opens if it ever does.
    ///
    /// On an application's pool, the sessions are ended and their releases
    /// waited for the same way; reopening its device is the application's.
    pub async fn recover_gpu_within(
        &self,
        deadline: Duration,
    ) -> Result<DeviceLossReport, GpuInitError> {
        // No session is admitted until the new device is open: one admitted
        // in between would put its buffers and KV slabs on the lost one.
        let _paused = self.engine.pause_opens_for_device_recovery();
        let report = self
            .engine
            .end_sessions_on_device_loss_within(deadline)
            .await?;
        if !report.completed {
            tracing::warn!(
                target: "sessionbus::supervisor",
                event = "gpu.recovery_deadline",
                unreleased = report.unreleased,
                deadline_ms = deadline.as_millis() as u64,
                "releases still under way at the recovery deadline; the old device drops what they held"
            );
        }
        #[cfg(feature = "wgpu")]
        if let Some(wgpu) = &self.wgpu {
            self.reopen_wgpu(wgpu).await?;
        }
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "gpu.recovered",
            ended = report.ended,
            already_ending = report.already_ending,
            unreleased = report.unreleased,
            duration_us = report.took.as_micros() as u64,
            "GPU device recovered"
        );
        Ok(report)
    }

    /// Opens a new device in place of the lost one, waiting for the GPU
    /// thread at most `[supervision] step_timeout`.
    #[cfg(feature = "wgpu")]
    async fn reopen_wgpu(&self, wgpu: &WgpuPool) -> Result<(), GpuInitError> {
        let reopened = wgpu.reopen_request()?;
        let waited = self.gpu_step_timeout;
        let answer = match futures::future::select(reopened, self.engine_timer(waited)).await {
            futures::future::Either::Left((answer, _)) => answer,
            futures::future::Either::Right((Ok(()), _)) => {
                tracing::error!(
                    target: "sessionbus::supervisor",
                    event = "gpu.reopen_timed_out",
                    timeout_ms = waited.as_millis() as u64,
                    "the sessionbus-gpu thread did not open a new device in time: the device or its driver is hung"
                );
                return Err(GpuInitError::Unresponsive { waited });
            }
            // No engine thread to time with (it died): wait for the worker.
            futures::future::Either::Right((Err(_), reopened)) => reopened.await,
        };
        answer.map_err(|_| GpuInitError::WorkerDied)?
    }

    /// Resolves `Ok` after `after`, timed on the engine's thread (whose
    /// runtime has timers), so that any executor may await it; `Err` at once
    /// if the engine's thread is gone.
    #[cfg(feature = "wgpu")]
    fn engine_timer(&self, after: Duration) -> oneshot::Receiver<()> {
        let (fired, timer) = oneshot::channel();
        self.system.arbiter().spawn(async move {
            tokio::time::sleep(after).await;
            let _ = fired.send(());
        });
        timer
    }

    /// The runtime's own wgpu pool, for the fault hooks.
    #[cfg(all(feature = "testing", feature = "wgpu"))]
    fn own_wgpu(&self) -> &WgpuPool {
        self.wgpu
            .as_deref()
            .expect("this fault hook needs the runtime's own wgpu pool, not an application's")
    }

    /// Destroys the GPU device as a driver reset would (`testing` builds
    /// only; panics on an application's pool).
    #[cfg(all(feature = "testing", feature = "wgpu"))]
    pub fn inject_gpu_device_loss(&self) {
        self.own_wgpu().inject_device_loss();
    }

    /// Makes the `sessionbus-gpu` thread block, as a hung driver would, from
    /// its next command on, until the returned
    /// [`GpuHang`](crate::testing::GpuHang) is released or dropped (`testing`
    /// builds only; panics on an application's pool). It outlives the
    /// runtime, so a test can end the hang after `shutdown` gave up on it.
    #[cfg(all(feature = "testing", feature = "wgpu"))]
    pub fn inject_gpu_hang(&self) -> crate::testing::GpuHang {
        self.own_wgpu().inject_hang()
    }

    /// Makes the `sessionbus-gpu` thread panic on its next command
    /// (`testing` builds only; panics on an application's pool).
    #[cfg(all(feature = "testing", feature = "wgpu"))]
    pub fn inject_gpu_worker_panic(&self) {
        self.own_wgpu().inject_worker_panic();
    }

    /// GPU commands that panicked on the `sessionbus-gpu` thread; the thread
    /// survives each (see `gpu.worker_panicked` in the logs). Zero on an
    /// application's pool.
    pub fn gpu_worker_panics(&self) -> u64 {
        #[cfg(feature = "wgpu")]
        if let Some(wgpu) = &self.wgpu {
            return wgpu.worker_panics();
        }
        0
    }

    /// [`shutdown_within`](Self::shutdown_within) the configured `[shutdown]
    /// deadline` (default 30 s).
    pub async fn shutdown(self) -> StopReport {
        let deadline = self.shutdown_deadline;
        self.shutdown_within(deadline).await
    }

    /// Stops admitting sessions, ends every session with reason `shutdown`,
    /// releases their GPU memory unpaced, stops the engine thread and the GPU
    /// worker, and reports. Leases still held at three quarters of `deadline`
    /// are forced; at `deadline` the engine reports what is still unreleased
    /// (`sessions.releases_unfinished`, `sessions.completed == false`) and the
    /// GPU thread destroys it as it stops. Reliable subscribers then get up
    /// to `bus.flush_timeout` to take their backlog. wgpu's counters in the
    /// report are read after the last device poll.
    ///
    /// Bounded even when the GPU hangs: a release the device does not answer
    /// is declared stuck after `[supervision] step_timeout`, and the GPU
    /// thread is waited for at most that long again as it stops; if it does
    /// not stop, the report says so (`gpu_stopped == false`, what it still
    /// held in `gpu_held`) and shutdown returns without it.
    ///
    /// Called twice (it takes the runtime, so only through a clone of its
    /// engine handle), the second finds nothing: an empty report.
    pub async fn shutdown_within(mut self, deadline: std::time::Duration) -> StopReport {
        let sessions = self
            .engine
            .shutdown_within(deadline)
            .await
            .unwrap_or_default();
        let bus_undelivered = self
            .engine
            .flush_bus(self.flush_timeout)
            .await
            .unwrap_or_default();
        if let Some(metrics) = self.metrics.take() {
            metrics.finish().await; // counts every event of the run, samples once more
        }
        self.system.stop();
        let stop = match self.engine_exit.take() {
            Some(exit) => exit.await.ok(),
            None => None,
        };
        // Only if the engine thread died: stop the pool from here.
        let stop = stop.unwrap_or_else(|| self.stop_pool_here());
        // The engine has stopped publishing: the writer drains what is queued,
        // writes `runtime.shutdown` and syncs before this resolves.
        let audit = match self.audit.as_mut() {
            Some(writer) => Some(writer.finish().await),
            None => None,
        };
        StopReport {
            sessions,
            bus_undelivered,
            gpu_after: stop.counters,
            gpu_stopped: stop.stopped,
            gpu_held: stop.held,
            audit,
            gpu_baseline: stop.baseline,
        }
    }

    /// Stops the pool from the caller's thread (only when the engine thread
    /// died and could not).
    fn stop_pool_here(&self) -> PoolStop {
        #[cfg(feature = "wgpu")]
        if let Some(wgpu) = &self.wgpu {
            return PoolStop::wgpu(wgpu, self.gpu_step_timeout);
        }
        PoolStop::application(self.pool.as_ref())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.engine_exit.is_some() {
            tracing::warn!(
                target: "sessionbus::supervisor",
                event = "runtime.dropped",
                "Runtime dropped without shutdown(): live sessions were not ended in order"
            );
            self.system.stop();
        }
        // The engine thread ends right after the engine stops (it tears the
        // GPU worker down first); waiting for it here means nothing of the
        // driver is still running when the caller goes on, or exits.
        if let Some(engine_thread) = self.engine_thread.take() {
            if engine_thread.thread().id() != thread::current().id() {
                let _ = engine_thread.join();
            }
        }
    }
}
