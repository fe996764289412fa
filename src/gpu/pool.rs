//! [`WgpuPool`]: the handle the engine holds. It only sends commands to the
//! worker thread and reads atomics, so none of its methods block on the driver.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use sessionbus_actors::{
    AllocRequest, Allocated, GpuError, GpuPool, OffloadReport, PoolInfo, PoolStats, ReleaseReport,
    RestoreReport,
};
use sessionbus_actors::{AllocationId, SessionId};
use tokio::sync::oneshot;

use super::config::GpuConfig;
use super::counters::{GpuCounters, SharedStats};
use super::error::GpuInitError;
use super::worker::{self, Command};

/// Name of the worker thread, as it shows in `top -H`, debuggers and panics.
const THREAD_NAME: &str = "sessionbus-gpu";

/// A [`GpuPool`] backed by a real wgpu device, driven by one worker thread.
///
/// Dropping it (or calling [`WgpuPool::shutdown`]) destroys what is left,
/// stops the thread and waits for it.
pub struct WgpuPool {
    commands: Sender<Command>,
    info: PoolInfo,
    /// For counters only: reading them is atomics, not a GPU call. Replaced
    /// when a new device takes over after a loss.
    device: Mutex<wgpu::Device>,
    initial: Mutex<GpuCounters>,
    /// The current device's lost flag (raised by wgpu's device-lost callback).
    lost: Mutex<Arc<std::sync::atomic::AtomicBool>>,
    stats: Arc<SharedStats>,
    /// `None` once shut down.
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for WgpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuPool")
            .field("info", &self.info)
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl WgpuPool {
    /// Validates `config`, starts the `sessionbus-gpu` thread and waits until it
    /// has opened the device (or failed to). Blocks for as long as the driver
    /// takes to open a device, so call it at startup, not from an actor.
    pub fn start(config: &GpuConfig) -> Result<WgpuPool, GpuInitError> {
        config.validate()?;
        let (commands, inbox) = crossbeam_channel::unbounded();
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let stats = Arc::new(SharedStats::default());
        let worker_stats = Arc::clone(&stats);
        let worker_config = config.clone();
        let handle = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || worker::run(worker_config, inbox, started_tx, worker_stats))
            .map_err(GpuInitError::Spawn)?;

        match started_rx.recv() {
            Ok(Ok(started)) => {
                tracing::info!(
                    adapter = %started.info.adapter,
                    backend = %started.info.backend,
                    device_type = %started.info.device_type,
                    max_buffer_size = started.info.max_buffer_size,
                    "GPU pool started"
                );
                Ok(WgpuPool {
                    commands,
                    info: started.info,
                    device: Mutex::new(started.device),
                    initial: Mutex::new(started.initial),
                    lost: Mutex::new(started.lost),
                    stats,
                    worker: Mutex::new(Some(handle)),
                })
            }
            Ok(Err(error)) => {
                // The thread has returned already (or is about to); no hang.
                let _ = handle.join();
                Err(error)
            }
            Err(_) => {
                let _ = handle.join();
                Err(GpuInitError::WorkerDied)
            }
        }
    }

    /// wgpu's own count of live buffers and their memory on this device.
    pub fn counters(&self) -> GpuCounters {
        GpuCounters::read(&self.device.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The counters right after the device opened: wgpu's own internal
    /// buffers, none of the pool's. A pool that leaks nothing returns exactly
    /// these from [`WgpuPool::shutdown`].
    pub fn initial_counters(&self) -> GpuCounters {
        *self.initial.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Destroys every buffer still alive (warning once per session: a leak in
    /// the engine), waits for the device, stops the worker thread and returns
    /// the counters as they stood after that cleanup, before wgpu dropped its
    /// own buffers, so they compare with [`WgpuPool::initial_counters`].
    /// Afterwards `allocate`, `offload_session` and `restore_session` answer
    /// [`GpuError::Unavailable`], while `release_session`,
    /// `release_allocations`, `sessions_holding_memory`, `write` and `read`
    /// drop their replies unanswered; a second call just reads the counters
    /// as they are now. Host copies still held are dropped (a warning each).
    pub fn shutdown(&self) -> GpuCounters {
        let Some(handle) = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return self.counters();
        };
        let (reply, answer) = crossbeam_channel::bounded(1);
        // Fails only if the thread is already gone; then `answer` fails too.
        let _ = self.commands.send(Command::Shutdown { reply });
        let counters = answer.recv().unwrap_or_else(|_| {
            tracing::error!(
                "the sessionbus-gpu thread was gone before shutdown; its buffers died with it"
            );
            self.counters()
        });
        if handle.join().is_err() {
            tracing::error!("the sessionbus-gpu thread panicked");
        }
        let initial = self.initial_counters();
        let leaked = counters.buffers - initial.buffers;
        if leaked != 0 {
            tracing::error!(
                leaked,
                ?counters,
                ?initial,
                "GPU buffers left after shutdown"
            );
        }
        tracing::info!(?counters, stats = ?self.stats.snapshot(), "GPU pool stopped");
        counters
    }
}

impl WgpuPool {
    /// Whether wgpu reported the current device lost.
    pub fn is_lost(&self) -> bool {
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Opens a new device in place of the current one (after a loss), on the
    /// worker thread, in order with every other command. Buffers the old
    /// device still held are dropped with it (each logged); end their sessions
    /// first (`EngineHandle::end_sessions_on_device_loss`). Afterwards the
    /// counters and [`initial_counters`](Self::initial_counters) are the new device's.
    pub async fn reopen(&self) -> Result<(), GpuInitError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Reopen { reply })
            .map_err(|_| GpuInitError::WorkerDied)?;
        let started = answer.await.map_err(|_| GpuInitError::WorkerDied)??;
        *self.device.lock().unwrap_or_else(PoisonError::into_inner) = started.device;
        *self.initial.lock().unwrap_or_else(PoisonError::into_inner) = started.initial;
        *self.lost.lock().unwrap_or_else(PoisonError::into_inner) = started.lost;
        Ok(())
    }

    /// Destroys the device as a driver reset would (fault-injection builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_device_loss(&self) {
        let _ = self.commands.send(Command::InjectDeviceLoss);
    }

    /// GPU commands that panicked on the worker thread (caught: the thread
    /// went on; only that command's caller got no answer).
    pub fn worker_panics(&self) -> u64 {
        self.stats
            .worker_panics
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a command that panics on the worker thread (fault-injection
    /// builds only), in order with every other command.
    #[cfg(feature = "fault-injection")]
    pub fn inject_worker_panic(&self) {
        let _ = self.commands.send(Command::InjectPanic);
    }
}

impl Drop for WgpuPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl GpuPool for WgpuPool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    fn allocate(&self, request: AllocRequest, reply: oneshot::Sender<Result<Allocated, GpuError>>) {
        // The worker is gone: the command comes back, and its reply says so.
        if let Err(crossbeam_channel::SendError(Command::Allocate { reply, .. })) =
            self.commands.send(Command::Allocate { request, reply })
        {
            let _ = reply.send(Err(GpuError::Unavailable));
        }
    }

    fn release_session(&self, session: SessionId, reply: oneshot::Sender<ReleaseReport>) {
        // If the worker is gone the command comes back and is dropped with its
        // reply: the engine sees a dropped reply and records an incident.
        let _ = self.commands.send(Command::Release { session, reply });
    }

    fn release_allocations(
        &self,
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    ) {
        // As `release_session`: a worker that is gone drops the reply.
        let _ = self.commands.send(Command::ReleaseAllocations {
            session,
            ids,
            reply,
        });
    }

    fn sessions_holding_memory(&self, reply: oneshot::Sender<Vec<SessionId>>) {
        // A worker that is gone drops the reply: there is no pool to describe.
        let _ = self.commands.send(Command::SessionsHoldingMemory { reply });
    }

    fn stats(&self) -> PoolStats {
        self.stats.snapshot()
    }

    fn write(
        &self,
        session: SessionId,
        id: AllocationId,
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), GpuError>>,
    ) {
        // As the contract says: a worker that is gone drops the reply.
        let _ = self.commands.send(Command::Write {
            session,
            id,
            offset,
            data,
            reply,
        });
    }

    fn read(
        &self,
        session: SessionId,
        id: AllocationId,
        reply: oneshot::Sender<Result<Vec<u8>, GpuError>>,
    ) {
        // As `write`: a worker that is gone drops the reply.
        let _ = self.commands.send(Command::Read { session, id, reply });
    }

    fn offload_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<OffloadReport, GpuError>>,
    ) {
        // As `allocate`: the command comes back, and its reply says so.
        if let Err(crossbeam_channel::SendError(Command::Offload { reply, .. })) =
            self.commands.send(Command::Offload { session, reply })
        {
            let _ = reply.send(Err(GpuError::Unavailable));
        }
    }

    fn restore_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<RestoreReport, GpuError>>,
    ) {
        if let Err(crossbeam_channel::SendError(Command::Restore { reply, .. })) =
            self.commands.send(Command::Restore { session, reply })
        {
            let _ = reply.send(Err(GpuError::Unavailable));
        }
    }
}
