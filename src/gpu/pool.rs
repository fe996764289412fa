//! [`WgpuPool`]: the handle the engine holds. It only sends commands to the
//! worker thread and reads atomics, so none of its methods block on the driver.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use sessionbus_actors::{
    AllocRequest, Allocated, ByteRange, GpuError, GpuPool, OffloadReport, PoolInfo, PoolStats,
    ReleaseReport, RestoreReport,
};
use sessionbus_actors::{AllocationId, SessionId};
use tokio::sync::oneshot;

use super::config::GpuConfig;
use super::counters::{GpuCounters, SharedStats};
use super::error::GpuInitError;
use super::given::WgpuDevice;
use super::worker::{self, Command, DeviceView, WorkerExit};

/// Name of the worker thread, as it shows in `top -H`, debuggers and panics.
const THREAD_NAME: &str = "sessionbus-gpu";

/// How long [`WgpuPool::shutdown`] (and dropping the pool) waits for the
/// worker to stop: the default `[supervision] step_timeout`.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What stopping the worker did (see [`WgpuPool::shutdown_within`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpuStop {
    /// wgpu's counters after the worker destroyed what was left; if it did
    /// not stop, as they stood when it was given up on.
    pub(crate) counters: GpuCounters,
    /// Whether the worker stopped in time. `false`: it is hung (in the
    /// driver); it is left running and destroys what is left if it ever
    /// comes back.
    pub(crate) stopped: bool,
    /// The pool's own count of what was still held then (zero after a clean stop).
    pub(crate) held: PoolStats,
}
/// A [`GpuPool`] backed by a real wgpu device, driven by one worker thread.
///
/// Dropping it (or calling [`WgpuPool::shutdown`]) destroys what is left,
/// stops the thread and waits for it.
pub struct WgpuPool {
    commands: Sender<Command>,
    info: PoolInfo,
    /// The current device, for counters (atomics, not a GPU call) and its
    /// lost flag; the worker replaces it when a new device takes over.
    view: Arc<DeviceView>,
    stats: Arc<SharedStats>,
    /// `None` once shut down (or given up on and dropped).
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Signalled by the worker thread as it ends.
    exit: Arc<WorkerExit>,
    /// `Shutdown` has been sent.
    stop_sent: AtomicBool,
    /// A stop timed out: the worker is hung; later stops do not wait again.
    gave_up: AtomicBool,
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
        WgpuPool::start_with(config, None)
    }

    /// Like [`start`](Self::start), on a device the application opened
    /// (`[gpu] backend` and `adapter` are then not used): its kernels and the
    /// sessions' buffers share one device, so a kernel reads a session's KV
    /// blocks where they are ([`buffer`](Self::buffer)). The pool installs
    /// its own uncaptured-error and device-lost handlers on it. After a
    /// loss it cannot open a new device (`GivenDeviceLost`).
    pub fn start_on(device: WgpuDevice, config: &GpuConfig) -> Result<WgpuPool, GpuInitError> {
        WgpuPool::start_with(config, Some(device))
    }

    /// The pool's device, queue and adapter, for the application's kernels.
    pub fn device(&self) -> WgpuDevice {
        self.view.handles()
    }

    /// The wgpu buffer behind allocation `id` (a session's buffer, or a KV
    /// slab: `KvBlock::buffer`), for the application's kernels; answered in
    /// order with every other command. `UnknownBuffer` once it is released.
    pub async fn buffer(&self, id: AllocationId) -> Result<wgpu::Buffer, GpuError> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Buffer { id, reply }).is_err() {
            return Err(GpuError::Unavailable);
        }
        answer.await.unwrap_or(Err(GpuError::Unavailable))
    }

    fn start_with(config: &GpuConfig, given: Option<WgpuDevice>) -> Result<WgpuPool, GpuInitError> {
        config.validate()?;
        let (commands, inbox) = crossbeam_channel::unbounded();
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let stats = Arc::new(SharedStats::default());
        let exit = Arc::new(WorkerExit::default());
        let worker_stats = Arc::clone(&stats);
        let worker_exit = Arc::clone(&exit);
        let worker_config = config.clone();
        let handle = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                worker::run(
                    worker_config,
                    given,
                    inbox,
                    started_tx,
                    worker_stats,
                    worker_exit,
                )
            })
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
                    view: started.view,
                    stats,
                    worker: Mutex::new(Some(handle)),
                    exit,
                    stop_sent: AtomicBool::new(false),
                    gave_up: AtomicBool::new(false),
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
        self.view.counters()
    }

    /// The counters right after the device opened: wgpu's own internal
    /// buffers, none of the pool's. A pool that leaks nothing returns exactly
    /// these from [`WgpuPool::shutdown`].
    pub fn initial_counters(&self) -> GpuCounters {
        self.view.initial()
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
    ///
    /// Waits for the worker at most 30 s: a worker hung in the driver is
    /// given up on (logged at ERROR, counters read as they stand), never
    /// waited for forever.
    pub fn shutdown(&self) -> GpuCounters {
        self.shutdown_within(STOP_TIMEOUT).counters
    }

    /// [`shutdown`](Self::shutdown), waiting for the worker at most
    /// `timeout`. A worker that does not stop by then is hung: it is left
    /// running (it still destroys what is left if it ever comes back), the
    /// report says so, and later calls do not wait for it again.
    pub(crate) fn shutdown_within(&self, timeout: Duration) -> GpuStop {
        let mut worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if worker.is_none() {
            return GpuStop {
                counters: self.counters(),
                stopped: self.exit.wait(Duration::ZERO).is_some(),
                held: self.stats.snapshot(),
            };
        }
        if !self.stop_sent.swap(true, Ordering::SeqCst) {
            // Fails only if the thread is already gone; `exit` says so then.
            let _ = self.commands.send(Command::Shutdown);
        }
        let timeout = match self.gave_up.load(Ordering::SeqCst) {
            true => Duration::ZERO,
            false => timeout,
        };
        let Some(stopped_at) = self.exit.wait(timeout) else {
            if !self.gave_up.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    target: "sessionbus::supervisor",
                    event = "gpu.stop_timed_out",
                    timeout_ms = timeout.as_millis() as u64,
                    held = ?self.stats.snapshot(),
                    "the sessionbus-gpu thread did not stop in time: the device or its driver is hung; \
                     going on without it (it destroys what it holds if it ever comes back)"
                );
            }
            return GpuStop {
                counters: self.counters(),
                stopped: false,
                held: self.stats.snapshot(),
            };
        };
        // The thread's body has returned: joining it does not wait.
        if let Some(handle) = worker.take() {
            if handle.join().is_err() {
                tracing::error!("the sessionbus-gpu thread panicked");
            }
        }
        let counters = stopped_at.unwrap_or_else(|| {
            tracing::error!(
                "the sessionbus-gpu thread was gone before shutdown; its buffers died with it"
            );
            self.counters()
        });
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
        GpuStop {
            counters,
            stopped: true,
            held: self.stats.snapshot(),
        }
    }
}

impl WgpuPool {
    /// Whether wgpu reported the current device lost.
    pub fn is_lost(&self) -> bool {
        self.view.is_lost()
    }

    /// Opens a new device in place of the current one (after a loss), on the
    /// worker thread, in order with every other command. Buffers the old
    /// device still held are dropped with it (each logged); end their sessions
    /// first (`EngineHandle::end_sessions_on_device_loss`). Afterwards the
    /// counters and [`initial_counters`](Self::initial_counters) are the new
    /// device's (also when the caller stopped waiting before the worker got
    /// to it).
    pub async fn reopen(&self) -> Result<(), GpuInitError> {
        self.reopen_request()?
            .await
            .map_err(|_| GpuInitError::WorkerDied)?
    }

    /// Queues a reopen; the receiver answers once it is done.
    pub(crate) fn reopen_request(
        &self,
    ) -> Result<oneshot::Receiver<Result<(), GpuInitError>>, GpuInitError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Reopen { reply })
            .map_err(|_| GpuInitError::WorkerDied)?;
        Ok(answer)
    }

    /// Destroys the device as a driver reset would (`testing` builds only).
    #[cfg(feature = "testing")]
    pub fn inject_device_loss(&self) {
        let _ = self.commands.send(Command::InjectDeviceLoss);
    }

    /// Makes the worker thread block, as a hung driver would, from its next
    /// command on (in order with every other command) until the returned
    /// [`GpuHang`] is released or dropped (`testing` builds only).
    #[cfg(feature = "testing")]
    pub fn inject_hang(&self) -> GpuHang {
        let (release, until) = crossbeam_channel::bounded(0);
        let _ = self.commands.send(Command::InjectHang { until });
        GpuHang {
            release: Some(release),
            exit: self.exit.clone(),
        }
    }

    /// GPU commands that panicked on the worker thread (caught: the thread
    /// went on; only that command's caller got no answer).
    pub fn worker_panics(&self) -> u64 {
        self.stats
            .worker_panics
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a command that panics on the worker thread (`testing`
    /// builds only), in order with every other command.
    #[cfg(feature = "testing")]
    pub fn inject_worker_panic(&self) {
        let _ = self.commands.send(Command::InjectPanic);
    }
}

/// A hang injected into the `sessionbus-gpu` thread
/// ([`WgpuPool::inject_hang`], `Runtime::inject_gpu_hang`); `testing`
/// builds only. Dropping it ends the hang too. It outlives the pool and the
/// runtime, so a test can end the hang after a shutdown gave up on the
/// thread, and see it finish.
#[cfg(feature = "testing")]
#[derive(Debug)]
pub struct GpuHang {
    release: Option<Sender<()>>,
    exit: Arc<WorkerExit>,
}

#[cfg(feature = "testing")]
impl GpuHang {
    /// Ends the hang: the thread goes on with its commands.
    pub fn release(self) {}

    /// Ends the hang, then waits up to `timeout` for the thread to stop (it
    /// does once a shutdown was asked, even one that gave up on it): the
    /// counters it read after destroying everything that was left, which
    /// compare with the baseline. `None` if it has not stopped by then, or
    /// ended without a shutdown.
    pub fn release_and_wait_stopped(mut self, timeout: Duration) -> Option<GpuCounters> {
        self.release.take();
        self.exit.wait(timeout).flatten()
    }
}

impl Drop for WgpuPool {
    /// Stops the worker as [`shutdown`](Self::shutdown) does. A worker that
    /// was already given up on is not waited for again: it is left running,
    /// detached, with what it holds.
    fn drop(&mut self) {
        if !self.shutdown_within(STOP_TIMEOUT).stopped {
            let worker = self
                .worker
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner);
            if worker.take().is_some() {
                tracing::error!(
                    target: "sessionbus::supervisor",
                    event = "gpu.worker_detached",
                    "the GPU pool is dropped with its hung worker thread still running; it is left detached"
                );
            }
        }
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

    fn read_ranges(
        &self,
        session: SessionId,
        ranges: Vec<ByteRange>,
        reply: oneshot::Sender<Result<Vec<Vec<u8>>, GpuError>>,
    ) {
        // As `write`: a worker that is gone drops the reply.
        let _ = self.commands.send(Command::ReadRanges {
            session,
            ranges,
            reply,
        });
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
