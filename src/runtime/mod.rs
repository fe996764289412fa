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

use sessionbus_actors::{
    Delivery, DeviceLossReport, EngineHandle, EventKinds, GpuPool, PoolInfo, PoolStats,
    Pseudonymizer, ShutdownReport,
};
use tokio::sync::oneshot;

mod engine_thread;
mod error;

use crate::audit::{self, AuditStats, AuditWriter};
use crate::config::Config;
use crate::gpu::{GpuCounters, GpuInitError, GpuStop, WgpuPool};
use crate::metrics::MetricsTask;
pub use error::StartError;

/// Builds a [`Runtime`].
#[derive(Debug, Default)]
pub struct RuntimeBuilder {
    config: Config,
}

impl RuntimeBuilder {
    /// Uses `config` instead of the defaults.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Validates the configuration, opens the GPU device, and starts the engine.
    pub async fn start(self) -> Result<Runtime, StartError> {
        Runtime::start(self.config).await
    }
}

/// What [`Runtime::shutdown`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StopReport {
    /// Sessions ended and memory released by the shutdown.
    pub sessions: ShutdownReport,
    /// Events that reliable bus subscribers had not taken by `bus.flush_timeout`
    /// (zero unless a reliable subscriber stopped reading).
    pub bus_undelivered: usize,
    /// wgpu's own counters after everything was released and the device
    /// polled; if the GPU thread hung (`gpu_stopped == false`), as they stood
    /// when shutdown stopped waiting for it.
    pub gpu_after: GpuCounters,
    /// Whether the `sessionbus-gpu` thread stopped within `[supervision]
    /// step_timeout_ms`. `false`: the device or its driver is hung; shutdown
    /// returned without it, and `gpu_held` says what it still held (it
    /// destroys that if it ever comes back).
    pub gpu_stopped: bool,
    /// The pool's own count of what was still held on the GPU and in host
    /// copies when the GPU thread stopped, or was given up on (all zero
    /// buffers and bytes after a clean shutdown).
    pub gpu_held: PoolStats,
    /// The audit trail's counters after its last record (`runtime.shutdown`)
    /// was written and synced; `None` without `[audit]`.
    pub audit: Option<AuditStats>,
    /// wgpu's counters when the device had just opened, before any session:
    /// `gpu_after == gpu_baseline` means every buffer was released.
    pub gpu_baseline: GpuCounters,
}

/// A running sessionbus: the engine's actors plus the wgpu pool.
pub struct Runtime {
    engine: EngineHandle,
    gpu: Arc<WgpuPool>,
    system: actix::System,
    engine_exit: Option<oneshot::Receiver<GpuStop>>,
    flush_timeout: std::time::Duration,
    /// `[supervision] step_timeout`: the longest any wait on the GPU
    /// thread lasts (a device reopen, the worker's stop).
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
            .field("adapter", self.adapter())
            .finish()
    }
}

impl Runtime {
    /// A builder with the default configuration.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Validates `config`, opens the GPU device, and starts the engine on its
    /// own thread. Awaitable from any executor; the caller's thread never blocks.
    pub async fn start(config: Config) -> Result<Runtime, StartError> {
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
            .spawn(move || engine_thread::run(config, pseudonyms, started_tx, exit_tx))
            .map_err(|e| StartError::Thread(e.to_string()))?;
        let (engine, gpu, system, metrics) = started_rx
            .await
            .map_err(|_| StartError::Thread("the engine thread died while starting".into()))??;
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "runtime.started",
            adapter = %gpu.info().adapter,
            backend = %gpu.info().backend,
            "sessionbus runtime started"
        );
        let mut runtime = Runtime {
            engine,
            gpu,
            system,
            engine_exit: Some(exit_rx),
            flush_timeout,
            gpu_step_timeout,
            metrics,
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
                .ok_or_else(|| StartError::Thread("the engine stopped while starting".into()))?;
            let writer = AuditWriter::spawn(trail, events)
                .map_err(|e| audit::AuditError::Thread(e.to_string()))?;
            runtime.audit = Some(writer);
        }
        Ok(runtime)
    }

    /// A cheap, cloneable handle to the engine, for tasks and threads. The
    /// runtime also derefs to it, so `runtime.open(..)`, `runtime.close(..)`,
    /// `runtime.subscribe_channel(..)` and the rest are the engine handle's methods.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &PoolInfo {
        self.gpu.info()
    }

    /// The audit trail's counters (records written, write failures, files
    /// rotated and deleted); `None` without `[audit]`.
    pub fn audit_stats(&self) -> Option<AuditStats> {
        self.audit.as_ref().map(AuditWriter::stats)
    }

    /// wgpu's own counters for the device: the ground truth for leak checks.
    pub fn gpu_counters(&self) -> GpuCounters {
        self.gpu.counters()
    }

    /// Whether wgpu reported the GPU device lost (see [`recover_gpu`](Self::recover_gpu)).
    pub fn gpu_lost(&self) -> bool {
        self.gpu.is_lost()
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
    /// a new device in place of the lost one. Sessions opened afterwards use
    /// the new device; what the old one still held (releases still under way
    /// at the deadline, counted in `unreleased`) is dropped with it.
    ///
    /// The new device is waited for at most `[supervision] step_timeout`:
    /// a GPU thread that does not answer by then (a hung driver) gives
    /// [`GpuInitError::Unresponsive`], and the device opens if it ever does.
    pub async fn recover_gpu_within(
        &self,
        deadline: Duration,
    ) -> Result<DeviceLossReport, GpuInitError> {
        let report = self
            .engine
            .end_sessions_on_device_loss_within(deadline)
            .await;
        if !report.completed {
            tracing::warn!(
                target: "sessionbus::supervisor",
                event = "gpu.recovery_deadline",
                unreleased = report.unreleased,
                deadline_ms = deadline.as_millis() as u64,
                "releases still under way at the recovery deadline; the old device drops what they held"
            );
        }
        let reopened = self.gpu.reopen_request()?;
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
        answer.map_err(|_| GpuInitError::WorkerDied)??;
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

    /// Resolves `Ok` after `after`, timed on the engine's thread (whose
    /// runtime has timers), so that any executor may await it; `Err` at once
    /// if the engine's thread is gone.
    fn engine_timer(&self, after: Duration) -> oneshot::Receiver<()> {
        let (fired, timer) = oneshot::channel();
        self.system.arbiter().spawn(async move {
            tokio::time::sleep(after).await;
            let _ = fired.send(());
        });
        timer
    }

    /// Destroys the GPU device as a driver reset would (fault-injection builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_gpu_device_loss(&self) {
        self.gpu.inject_device_loss();
    }

    /// Makes the `sessionbus-gpu` thread block, as a hung driver would, from
    /// its next command on, until the returned [`GpuHang`](crate::GpuHang)
    /// is released or dropped (fault-injection builds only). It outlives the
    /// runtime, so a test can end the hang after `shutdown` gave up on it.
    #[cfg(feature = "fault-injection")]
    pub fn inject_gpu_hang(&self) -> crate::GpuHang {
        self.gpu.inject_hang()
    }

    /// GPU commands that panicked on the `sessionbus-gpu` thread; the thread
    /// survives each (see `gpu.worker_panicked` in the logs).
    pub fn gpu_worker_panics(&self) -> u64 {
        self.gpu.worker_panics()
    }

    /// Makes the `sessionbus-gpu` thread panic on its next command
    /// (fault-injection builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_gpu_worker_panic(&self) {
        self.gpu.inject_worker_panic();
    }

    /// [`shutdown_within`](Self::shutdown_within) the configured `[shutdown]
    /// deadline_secs` (default 30 s).
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
    pub async fn shutdown_within(mut self, deadline: std::time::Duration) -> StopReport {
        let sessions = self
            .engine
            .shutdown_within(deadline)
            .await
            .unwrap_or_default();
        let bus_undelivered = self.engine.flush_bus(self.flush_timeout).await;
        if let Some(metrics) = self.metrics.take() {
            metrics.finish().await; // counts every event of the run, samples once more
        }
        self.system.stop();
        let gpu = match self.engine_exit.take() {
            Some(exit) => exit.await.ok(),
            None => None,
        };
        // Only if the engine thread died: stop the worker from here.
        let gpu = gpu.unwrap_or_else(|| self.gpu.shutdown_within(self.gpu_step_timeout));
        // The engine has stopped publishing: the writer drains what is queued,
        // writes `runtime.shutdown` and syncs before this resolves.
        let audit = match self.audit.as_mut() {
            Some(writer) => Some(writer.finish().await),
            None => None,
        };
        StopReport {
            sessions,
            bus_undelivered,
            gpu_after: gpu.counters,
            gpu_stopped: gpu.stopped,
            gpu_held: gpu.held,
            audit,
            gpu_baseline: self.gpu.initial_counters(),
        }
    }
}

/// The runtime is the engine plus its adapters: everything the engine handle
/// does (open, attach, close by id, subscribe, stats) is done on the runtime
/// directly. `Runtime::shutdown` (which also stops the threads) takes precedence
/// over the handle's engine-only `shutdown`.
impl std::ops::Deref for Runtime {
    type Target = EngineHandle;

    fn deref(&self) -> &EngineHandle {
        &self.engine
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
