//! The `sessionbus-gpu` thread: the only thread that calls into wgpu (apart
//! from reading counters, which are atomics).
//!
//! Why one thread: the driver's own locking then never meets the engine's
//! threads, the per-session buffer map needs no lock, and requests run in
//! arrival order, which the `GpuPool` ordering contract requires.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use sessionbus_actors::{
    AllocRequest, Allocated, GpuError, OffloadReport, PoolInfo, ReleaseReport, RestoreReport,
};
use sessionbus_actors::{AllocationId, SessionId};
use tokio::sync::oneshot;

use super::adapter::{OpenedDevice, open_device};
use super::config::GpuConfig;
use super::counters::{GpuCounters, SharedStats};
use super::error::GpuInitError;
use super::host_copy;

/// What the pool handle asks of the worker.
pub(crate) enum Command {
    Allocate {
        request: AllocRequest,
        reply: oneshot::Sender<Result<Allocated, GpuError>>,
    },
    Release {
        session: SessionId,
        reply: oneshot::Sender<ReleaseReport>,
    },
    /// Destroy only the listed buffers of `session`; batched like `Release`.
    ReleaseAllocations {
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    },
    /// List the sessions holding at least one live buffer; needs no poll.
    SessionsHoldingMemory {
        reply: oneshot::Sender<Vec<SessionId>>,
    },
    /// Queue a write into one buffer; answered at once.
    Write {
        session: SessionId,
        id: AllocationId,
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), GpuError>>,
    },
    /// Copy one buffer back to host memory (waits for the device).
    Read {
        session: SessionId,
        id: AllocationId,
        reply: oneshot::Sender<Result<Vec<u8>, GpuError>>,
    },
    /// Copy a session's buffers to host memory, then destroy them on the device.
    Offload {
        session: SessionId,
        reply: oneshot::Sender<Result<OffloadReport, GpuError>>,
    },
    /// Recreate a session's offloaded buffers from their host copies.
    Restore {
        session: SessionId,
        reply: oneshot::Sender<Result<RestoreReport, GpuError>>,
    },
    /// Destroy whatever is left, poll, leave the counters in `WorkerExit`, and exit.
    Shutdown,
    /// Destroy what is left on the (lost) device, open a new device with the
    /// same configuration, and carry on with it (the `DeviceView` follows,
    /// even if the caller stopped waiting).
    Reopen {
        reply: oneshot::Sender<Result<(), GpuInitError>>,
    },
    /// Destroy the device, as a driver reset would (fault-injection builds only).
    #[cfg(feature = "fault-injection")]
    InjectDeviceLoss,
    /// Block until `until` is sent to or dropped, as a hung driver would
    /// (fault-injection builds only).
    #[cfg(feature = "fault-injection")]
    InjectHang { until: Receiver<()> },
    /// Panic while executing this command (fault-injection builds only).
    #[cfg(feature = "fault-injection")]
    InjectPanic,
}

/// What the worker hands back to `WgpuPool::start` once the device is open.
pub(crate) struct Started {
    pub(crate) info: PoolInfo,
    /// The current device, for other threads; the worker keeps it current.
    pub(crate) view: Arc<DeviceView>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The current device as other threads see it: wgpu's counters (atomics,
/// no GPU call) and the lost flag. The worker replaces what it holds when a
/// new device takes over after a loss, even if whoever asked for the new
/// device stopped waiting for it.
pub(crate) struct DeviceView {
    device: Mutex<wgpu::Device>,
    /// Counters right after the device opened: wgpu's own buffers only.
    initial: Mutex<GpuCounters>,
    /// Raised by the device-lost callback.
    lost: Mutex<Arc<AtomicBool>>,
}

impl DeviceView {
    fn new(opened: &OpenedDevice) -> Self {
        DeviceView {
            device: Mutex::new(opened.device.clone()),
            initial: Mutex::new(GpuCounters::read(&opened.device)),
            lost: Mutex::new(opened.lost.clone()),
        }
    }

    fn replace(&self, opened: &OpenedDevice) {
        *lock(&self.initial) = GpuCounters::read(&opened.device);
        *lock(&self.device) = opened.device.clone();
        *lock(&self.lost) = opened.lost.clone();
    }

    pub(crate) fn counters(&self) -> GpuCounters {
        GpuCounters::read(&lock(&self.device))
    }

    pub(crate) fn initial(&self) -> GpuCounters {
        *lock(&self.initial)
    }

    pub(crate) fn is_lost(&self) -> bool {
        lock(&self.lost).load(Ordering::Acquire)
    }
}

/// How the worker thread ended, for whoever waits for it (with a timeout:
/// a hung driver never comes back, and a shutdown must still return).
#[derive(Default)]
pub(crate) struct WorkerExit {
    state: Mutex<ExitState>,
    changed: Condvar,
}

#[derive(Default)]
struct ExitState {
    /// Read after `Shutdown` destroyed what was left, before the device was dropped.
    counters: Option<GpuCounters>,
    /// The thread's body has returned (or unwound): joining it is immediate.
    exited: bool,
}

impl std::fmt::Debug for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("WorkerExit")
            .field("counters", &state.counters)
            .field("exited", &state.exited)
            .finish()
    }
}

impl WorkerExit {
    fn stopped_at(&self, counters: GpuCounters) {
        lock(&self.state).counters = Some(counters);
    }

    fn exited(&self) {
        lock(&self.state).exited = true;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for the thread to end: `Some` once it has, with
    /// the counters `Shutdown` read (`None` inside if it ended otherwise:
    /// a panic, or every sender gone); `None` if it is still running.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<Option<GpuCounters>> {
        let state = lock(&self.state);
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |state| !state.exited)
            .unwrap_or_else(PoisonError::into_inner);
        state.exited.then_some(state.counters)
    }
}

/// Marks the thread ended when dropped: declared first in `run`, so it is
/// dropped last, after the device and queue.
struct ExitGuard(Arc<WorkerExit>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.exited();
    }
}

/// Every buffer is usable as compute storage and as a copy source/target:
/// what a model's KV cache or activations need, without mapping. Writes
/// (`queue.write_buffer`) need COPY_DST; reads and offloads copy out of the
/// buffer, which needs COPY_SRC.
pub(super) const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
const _: () = assert!(
    USAGE.contains(wgpu::BufferUsages::COPY_SRC.union(wgpu::BufferUsages::COPY_DST)),
    "reads, writes, offload and restore copy into and out of every buffer"
);

/// The thread's body: opens the device, reports on `started`, then serves
/// `commands` until told to stop or until every sender is gone.
pub(crate) fn run(
    config: GpuConfig,
    commands: Receiver<Command>,
    started: Sender<Result<Started, GpuInitError>>,
    stats: Arc<SharedStats>,
    exit: Arc<WorkerExit>,
) {
    let _exit = ExitGuard(exit.clone());
    let _guard = PanicLog;
    let opened = match open_device(&config) {
        Ok(opened) => opened,
        Err(error) => {
            // `start` is waiting on the other end; if it is gone there is no one to tell.
            let _ = started.send(Err(error));
            return;
        }
    };
    let view = Arc::new(DeviceView::new(&opened));
    let report = Started {
        info: opened.info.clone(),
        view: view.clone(),
    };
    if started.send(Ok(report)).is_err() {
        return;
    }
    let mut worker = Worker::new(opened, stats, config.clone(), view);
    let asked_to_stop = worker.serve(&commands, config.batch_max.max(1));
    worker.destroy_everything();
    // Read before the device and queue are dropped: dropping them frees wgpu's
    // own buffers too, and the caller wants a figure comparable to `initial`.
    if asked_to_stop {
        exit.stopped_at(GpuCounters::read(&worker.device));
    }
    refuse_the_rest(&commands);
}

/// Logs when the thread unwinds (a driver panic): callers will see dropped
/// replies and `Unavailable`, and the log says why.
struct PanicLog;

impl Drop for PanicLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the sessionbus-gpu thread panicked; the GPU pool is gone");
        }
    }
}

struct LiveBuffer {
    id: AllocationId,
    buffer: wgpu::Buffer,
    bytes: u64,
}

/// An offloaded buffer: its id and contents (its size is their length).
struct HostCopy {
    id: AllocationId,
    data: Vec<u8>,
}

/// A release whose buffers are destroyed but whose reply waits for the batch's poll.
struct PendingRelease {
    session: SessionId,
    reply: oneshot::Sender<ReleaseReport>,
    buffers: u64,
    bytes: u64,
    host_bytes: u64,
    started_at: Instant,
}

impl PendingRelease {
    /// A release whose buffers (`freed`: count, device bytes, host bytes) are
    /// destroyed; its reply waits for the poll.
    fn new(
        session: SessionId,
        reply: oneshot::Sender<ReleaseReport>,
        freed: Freed,
        started_at: Instant,
    ) -> Self {
        PendingRelease {
            session,
            reply,
            buffers: freed.buffers,
            bytes: freed.bytes,
            host_bytes: freed.host_bytes,
            started_at,
        }
    }
}

/// What one release destroyed: buffers on the device and host copies alike
/// (`buffers`), device bytes, host bytes.
#[derive(Clone, Copy, Default)]
struct Freed {
    buffers: u64,
    bytes: u64,
    host_bytes: u64,
}

struct Worker {
    device: wgpu::Device,
    queue: wgpu::Queue,
    max_buffer_size: u64,
    lost: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<SharedStats>,
    /// Owned by this thread alone, hence no lock.
    sessions: HashMap<SessionId, Vec<LiveBuffer>>,
    /// Host copies of offloaded buffers, per session. No empty entries:
    /// `sessions_holding_memory` lists these keys too.
    offloaded: HashMap<SessionId, Vec<HostCopy>>,
    /// A `queue.write_buffer` since the last submission: wgpu holds it (and
    /// its staging memory) until something is submitted.
    unsubmitted_writes: bool,
    /// For opening a new device after a loss.
    config: GpuConfig,
    /// Kept current for other threads (counters, lost flag).
    view: Arc<DeviceView>,
}

impl Worker {
    fn new(
        opened: OpenedDevice,
        stats: Arc<SharedStats>,
        config: GpuConfig,
        view: Arc<DeviceView>,
    ) -> Self {
        Worker {
            config,
            view,
            max_buffer_size: opened.info.max_buffer_size,
            device: opened.device,
            queue: opened.queue,
            lost: opened.lost,
            stats,
            sessions: HashMap::new(),
            offloaded: HashMap::new(),
            unsubmitted_writes: false,
        }
    }

    /// Serves batches until `Shutdown` (true) or until every sender is
    /// dropped (false).
    ///
    /// The channel is unbounded so that the engine never blocks on it; in
    /// practice it stays short, because every command carries a reply that a
    /// caller is awaiting before it sends more for that session.
    fn serve(&mut self, commands: &Receiver<Command>, batch_max: usize) -> bool {
        // Blocking for the first command: an idle pool costs nothing.
        while let Ok(first) = commands.recv() {
            let mut pending = Vec::new();
            let mut stop = false;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(command) = next.take() {
                taken += 1;
                // Panic isolation: a command that panics (a driver bug, an
                // injected fault) loses only its own reply; the buffer map,
                // the batch's pending releases and the commands still in the
                // channel are untouched, and nothing is released twice.
                let executed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    match command {
                        Command::Allocate { request, reply } => {
                            // Answered at once: an allocation needs no poll.
                            let _ = reply.send(self.allocate(request));
                        }
                        Command::Release { session, reply } => {
                            pending.push(self.release(session, reply))
                        }
                        Command::ReleaseAllocations {
                            session,
                            ids,
                            reply,
                        } => pending.push(self.release_allocations(session, &ids, reply)),
                        Command::SessionsHoldingMemory { reply } => {
                            // Answered at once, from the map as it stands after every
                            // earlier command: destroyed buffers are already out of it,
                            // even if their release's reply still waits for the poll.
                            let _ = reply.send(self.sessions_holding_memory());
                        }
                        Command::Write {
                            session,
                            id,
                            offset,
                            data,
                            reply,
                        } => {
                            let _ = reply.send(self.write(session, id, offset, &data));
                        }
                        // The three below wait for the device themselves; releases
                        // earlier in the batch (destroyed already) are freed by that
                        // wait too, and still answered after the batch's poll.
                        Command::Read { session, id, reply } => {
                            let _ = reply.send(self.read(session, id));
                        }
                        Command::Offload { session, reply } => {
                            let _ = reply.send(self.offload(session));
                        }
                        Command::Restore { session, reply } => {
                            let _ = reply.send(self.restore(session));
                        }
                        Command::Shutdown => return true,
                        Command::Reopen { reply } => {
                            let _ = reply.send(self.reopen());
                        }
                        #[cfg(feature = "fault-injection")]
                        Command::InjectDeviceLoss => self.device.destroy(),
                        #[cfg(feature = "fault-injection")]
                        Command::InjectHang { until } => {
                            tracing::warn!(
                                "injected hang on the sessionbus-gpu thread (fault-injection)"
                            );
                            let _ = until.recv();
                        }
                        #[cfg(feature = "fault-injection")]
                        Command::InjectPanic => {
                            panic!("injected panic on the sessionbus-gpu thread (fault-injection)")
                        }
                    }
                    false
                }));
                match executed {
                    Ok(true) => {
                        stop = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(_) => {
                        self.stats.worker_panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            target: "sessionbus::supervisor",
                            event = "gpu.worker_panicked",
                            "a GPU command panicked on the sessionbus-gpu thread; its caller gets no answer, the thread goes on"
                        );
                    }
                }
                if taken < batch_max {
                    next = commands.try_recv().ok();
                }
            }
            self.submit_writes();
            self.finish_releases(pending);
            if stop {
                return true;
            }
        }
        false
    }

    fn allocate(&mut self, request: AllocRequest) -> Result<Allocated, GpuError> {
        if self.lost.load(Ordering::Acquire) {
            // wgpu would hand back an invalid buffer without any error.
            return Err(GpuError::Unavailable);
        }
        if request.bytes == 0 {
            return Err(GpuError::Rejected(
                "a buffer must hold at least 1 byte; 0 were requested".into(),
            ));
        }
        let too_big = || {
            GpuError::Rejected(format!(
                "{} bytes is more than this device's largest buffer ({} bytes); split the allocation",
                request.bytes, self.max_buffer_size
            ))
        };
        if request.bytes > self.max_buffer_size {
            return Err(too_big());
        }
        // wgpu requires sizes in whole copy units; the engine is told the real size.
        let size = request
            .bytes
            .checked_next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
            .ok_or_else(too_big)?;

        let buffer = create_buffer(&self.device, request.bytes, size)?;
        self.stats.record_allocated(size);
        self.sessions
            .entry(request.session)
            .or_default()
            .push(LiveBuffer {
                id: request.id,
                buffer,
                bytes: size,
            });
        Ok(Allocated {
            id: request.id,
            bytes: size,
        })
    }

    /// Destroys the session's buffers now; the reply waits for the batch's poll.
    fn release(
        &mut self,
        session: SessionId,
        reply: oneshot::Sender<ReleaseReport>,
    ) -> PendingRelease {
        let started_at = Instant::now();
        let freed = self.destroy_session(session);
        PendingRelease::new(session, reply, freed, started_at)
    }

    /// Destroys the listed buffers of `session` now; the reply waits for the batch's poll.
    fn release_allocations(
        &mut self,
        session: SessionId,
        ids: &[AllocationId],
        reply: oneshot::Sender<ReleaseReport>,
    ) -> PendingRelease {
        let started_at = Instant::now();
        let freed = self.destroy_allocations(session, ids);
        PendingRelease::new(session, reply, freed, started_at)
    }

    /// Only `session`'s own lists are searched, so an id of another session's
    /// buffer (or an unknown or already-destroyed one) matches nothing.
    fn destroy_allocations(&mut self, session: SessionId, ids: &[AllocationId]) -> Freed {
        let listed: HashSet<AllocationId> = ids.iter().copied().collect();
        let doomed = take_listed(&mut self.sessions, session, |buffer| {
            listed.contains(&buffer.id)
        });
        let copies = take_listed(&mut self.offloaded, session, |copy| {
            listed.contains(&copy.id)
        });
        let (buffers, bytes) = self.destroy_buffers(doomed);
        self.free_host_copies(buffers, bytes, copies)
    }

    /// Sorted, so callers and logs see a stable order. A session holding
    /// only host copies is listed too: host memory can leak as well.
    fn sessions_holding_memory(&self) -> Vec<SessionId> {
        let mut holders: Vec<SessionId> = self
            .sessions
            .keys()
            .chain(
                self.offloaded
                    .keys()
                    .filter(|s| !self.sessions.contains_key(s)),
            )
            .copied()
            .collect();
        holders.sort_unstable();
        holders
    }

    fn destroy_session(&mut self, session: SessionId) -> Freed {
        let (buffers, bytes) = match self.sessions.remove(&session) {
            Some(live) => self.destroy_buffers(live),
            None => (0, 0),
        };
        let copies = self.offloaded.remove(&session).unwrap_or_default();
        self.free_host_copies(buffers, bytes, copies)
    }

    /// Drops host copies along with a release that destroyed (`buffers`,
    /// `bytes`) on the device.
    fn free_host_copies(&self, buffers: u64, bytes: u64, copies: Vec<HostCopy>) -> Freed {
        let count = copies.len() as u64;
        let host_bytes: u64 = copies.iter().map(|copy| copy.data.len() as u64).sum();
        self.stats.record_host_released(count, host_bytes);
        Freed {
            buffers: buffers + count,
            bytes,
            host_bytes,
        }
    }

    fn destroy_buffers(&self, live: Vec<LiveBuffer>) -> (u64, u64) {
        let buffers = live.len() as u64;
        let mut bytes = 0;
        for LiveBuffer {
            buffer,
            bytes: size,
            ..
        } in live
        {
            // `destroy` frees the memory now even if a clone of the handle
            // lingers somewhere; dropping alone would wait for the last one.
            buffer.destroy();
            bytes += size;
        }
        self.stats.record_released(buffers, bytes);
        (buffers, bytes)
    }

    /// The device buffer `id` of `session`, or why there is none. Only this
    /// session's lists are searched: another session's buffer is unknown.
    fn live_buffer(&self, session: SessionId, id: AllocationId) -> Result<&LiveBuffer, GpuError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(GpuError::Unavailable);
        }
        let offloaded = self
            .offloaded
            .get(&session)
            .is_some_and(|copies| copies.iter().any(|copy| copy.id == id));
        if offloaded {
            return Err(GpuError::Offloaded { id });
        }
        self.sessions
            .get(&session)
            .and_then(|live| live.iter().find(|buffer| buffer.id == id))
            .ok_or(GpuError::UnknownBuffer { id })
    }

    /// Queues `data` for buffer `id` at `offset`. It reaches the device with
    /// the next submission: a read, offload or restore (whose copies it
    /// precedes) or the end of the batch.
    fn write(
        &mut self,
        session: SessionId,
        id: AllocationId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), GpuError> {
        let buffer = self.live_buffer(session, id)?;
        let len = data.len() as u64;
        sessionbus_actors::check_write(id, offset, len, buffer.bytes, wgpu::COPY_BUFFER_ALIGNMENT)?;
        if data.is_empty() {
            return Ok(());
        }
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.queue.write_buffer(&buffer.buffer, offset, data);
        if let Some(error) = pollster::block_on(validation.pop()) {
            return Err(GpuError::Rejected(error.to_string().trim_end().to_owned()));
        }
        self.unsubmitted_writes = true;
        Ok(())
    }

    /// The whole of buffer `id`, copied back through a staging buffer.
    fn read(&mut self, session: SessionId, id: AllocationId) -> Result<Vec<u8>, GpuError> {
        let buffer = self.live_buffer(session, id)?;
        let mut copies = host_copy::read_back(&self.device, &self.queue, &[&buffer.buffer])?;
        self.unsubmitted_writes = false;
        Ok(copies.pop().unwrap_or_default())
    }

    /// Copies every device buffer of `session` to host memory; only once all
    /// copies are complete are the device buffers destroyed (and the device
    /// polled). A failed copy destroys nothing.
    fn offload(&mut self, session: SessionId) -> Result<OffloadReport, GpuError> {
        let started_at = Instant::now();
        if self.lost.load(Ordering::Acquire) {
            return Err(GpuError::Unavailable);
        }
        let sources: Vec<&wgpu::Buffer> = self
            .sessions
            .get(&session)
            .map(|live| live.iter().map(|buffer| &buffer.buffer).collect())
            .unwrap_or_default();
        let (mut buffers, mut bytes) = (0, 0);
        if !sources.is_empty() {
            let contents = host_copy::read_back(&self.device, &self.queue, &sources)?;
            self.unsubmitted_writes = false;
            let live = self.sessions.remove(&session).unwrap_or_default();
            let copies = self.offloaded.entry(session).or_default();
            for (buffer, data) in live.into_iter().zip(contents) {
                buffer.buffer.destroy();
                buffers += 1;
                bytes += buffer.bytes;
                copies.push(HostCopy {
                    id: buffer.id,
                    data,
                });
            }
            self.stats.record_offloaded(buffers, bytes);
            self.wait_idle();
        }
        Ok(OffloadReport {
            session,
            buffers,
            bytes,
            started_at,
            finished_at: Instant::now(),
        })
    }

    /// Recreates every offloaded buffer of `session` under its old id and
    /// contents, all or nothing: on failure the host copies stay.
    fn restore(&mut self, session: SessionId) -> Result<RestoreReport, GpuError> {
        let started_at = Instant::now();
        if self.lost.load(Ordering::Acquire) {
            return Err(GpuError::Unavailable);
        }
        let contents: Vec<&[u8]> = self
            .offloaded
            .get(&session)
            .map(|copies| copies.iter().map(|copy| copy.data.as_slice()).collect())
            .unwrap_or_default();
        let (mut buffers, mut bytes) = (0, 0);
        if !contents.is_empty() {
            let device = &self.device;
            let created = host_copy::upload(device, &self.queue, &contents, |descriptor| {
                scoped_create(device, descriptor, descriptor.size)
            })?;
            self.unsubmitted_writes = false;
            let copies = self.offloaded.remove(&session).unwrap_or_default();
            let live = self.sessions.entry(session).or_default();
            for (copy, buffer) in copies.into_iter().zip(created) {
                let size = copy.data.len() as u64;
                buffers += 1;
                bytes += size;
                live.push(LiveBuffer {
                    id: copy.id,
                    buffer,
                    bytes: size,
                });
            }
            self.stats.record_restored(buffers, bytes);
        }
        Ok(RestoreReport {
            session,
            buffers,
            bytes,
            started_at,
            finished_at: Instant::now(),
        })
    }

    /// Hands queued writes to the device, so they (and the staging memory
    /// wgpu keeps for them) do not wait for an unrelated submission, and so
    /// a buffer destroyed after a write is freed by the next poll.
    fn submit_writes(&mut self) {
        if std::mem::take(&mut self.unsubmitted_writes) {
            self.queue.submit([]);
        }
    }

    /// One poll for the whole batch, then every release reply.
    fn finish_releases(&mut self, pending: Vec<PendingRelease>) {
        if pending.is_empty() {
            return;
        }
        // Dropping host copies needs no poll; destroying device buffers does.
        if pending.iter().any(|release| release.bytes > 0) {
            self.wait_idle();
        }
        let finished_at = Instant::now();
        let batch_len = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        for release in pending {
            // A caller that stopped waiting is not our problem.
            let _ = release.reply.send(ReleaseReport {
                session: release.session,
                buffers: release.buffers,
                bytes: release.bytes,
                started_at: release.started_at,
                finished_at,
                batch_len,
                host_bytes: release.host_bytes,
            });
        }
    }

    /// Waits until the device has finished with everything submitted, so
    /// destroyed buffers still referenced by in-flight work are really freed.
    fn wait_idle(&self) {
        if let Err(error) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            tracing::error!(%error, "GPU poll failed; freed memory may come back late");
        }
    }

    /// After a device loss: whatever the old device still holds is dropped
    /// (each leftover logged), then a new device takes its place. Host
    /// copies of offloaded buffers survive: they are host memory.
    fn reopen(&mut self) -> Result<(), GpuInitError> {
        let leftovers: Vec<(SessionId, Vec<LiveBuffer>)> = self.sessions.drain().collect();
        for (session, live) in leftovers {
            let (buffers, bytes) = self.destroy_buffers(live);
            tracing::warn!(%session, buffers, bytes, "GPU buffers still held at device reopen; dropped with the old device");
        }
        let opened = open_device(&self.config)?;
        self.view.replace(&opened);
        let adapter = opened.info.adapter.clone();
        self.max_buffer_size = opened.info.max_buffer_size;
        self.device = opened.device;
        self.queue = opened.queue;
        self.lost = opened.lost;
        self.unsubmitted_writes = false;
        tracing::warn!(
            target: "sessionbus::supervisor",
            event = "gpu.reopened",
            %adapter,
            "a new GPU device replaces the lost one"
        );
        Ok(())
    }

    /// Shutdown path: anything still alive is a session that was never
    /// released, i.e. an engine bug worth a warning each.
    fn destroy_everything(&mut self) {
        self.submit_writes();
        let leftovers: Vec<(SessionId, Vec<LiveBuffer>)> = self.sessions.drain().collect();
        let any = !leftovers.is_empty();
        for (session, live) in leftovers {
            let ids: Vec<u64> = live.iter().map(|buffer| buffer.id.0).collect();
            let (buffers, bytes) = self.destroy_buffers(live);
            tracing::warn!(%session, buffers, bytes, ?ids, "GPU buffers still alive at shutdown; destroyed them");
        }
        for (session, copies) in std::mem::take(&mut self.offloaded) {
            let ids: Vec<u64> = copies.iter().map(|copy| copy.id.0).collect();
            let freed = self.free_host_copies(0, 0, copies);
            tracing::warn!(%session, buffers = freed.buffers, host_bytes = freed.host_bytes, ?ids, "offloaded host copies still held at shutdown; dropped them");
        }
        if any {
            self.wait_idle();
        }
    }
}

/// Creates one buffer of `size` bytes (`requested` is for the error message),
/// turning wgpu's errors into the engine's instead of panics.
pub(super) fn create_buffer(
    device: &wgpu::Device,
    requested: u64,
    size: u64,
) -> Result<wgpu::Buffer, GpuError> {
    let descriptor = wgpu::BufferDescriptor {
        label: None,
        size,
        usage: USAGE,
        mapped_at_creation: false,
    };
    scoped_create(device, &descriptor, requested)
}

/// Creates the buffer `descriptor` describes inside error scopes, so that
/// wgpu's refusal (out of memory, validation) comes back as the engine's
/// error rather than a log line; `requested` is for the error message.
pub(super) fn scoped_create(
    device: &wgpu::Device,
    descriptor: &wgpu::BufferDescriptor<'_>,
    requested: u64,
) -> Result<wgpu::Buffer, GpuError> {
    // Scopes instead of the uncaptured handler, so the error reaches this
    // caller rather than a log line. Popped in reverse order, as wgpu requires;
    // on native backends the pop futures are already resolved.
    let oom_scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation_scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let buffer = device.create_buffer(descriptor);
    let validation = pollster::block_on(validation_scope.pop());
    let oom = pollster::block_on(oom_scope.pop());
    match oom.or(validation) {
        None => Ok(buffer),
        // The handle is invalid; dropping it is all there is to do.
        Some(wgpu::Error::OutOfMemory { .. }) => Err(GpuError::OutOfMemory { bytes: requested }),
        Some(other) => Err(GpuError::Rejected(other.to_string().trim_end().to_owned())),
    }
}

/// Commands that arrived after `Shutdown`: allocations, offloads and
/// restores are refused outright (`Unavailable`); the replies of releases
/// (either kind), of `SessionsHoldingMemory` and of reads and writes are
/// dropped unanswered (the engine treats a dropped release reply as an
/// incident, which a release after shutdown is).
fn refuse_the_rest(commands: &Receiver<Command>) {
    while let Ok(command) = commands.try_recv() {
        match command {
            Command::Allocate { reply, .. } => {
                let _ = reply.send(Err(GpuError::Unavailable));
            }
            Command::Offload { reply, .. } => {
                let _ = reply.send(Err(GpuError::Unavailable));
            }
            Command::Restore { reply, .. } => {
                let _ = reply.send(Err(GpuError::Unavailable));
            }
            _ => {}
        }
    }
}

/// Removes the entries of `session` in `map` that `doomed` picks, dropping
/// the session's entry once it is empty (no empty entries: holders are keys).
fn take_listed<T>(
    map: &mut HashMap<SessionId, Vec<T>>,
    session: SessionId,
    doomed: impl Fn(&T) -> bool,
) -> Vec<T> {
    let Some(held) = map.get_mut(&session) else {
        return Vec::new();
    };
    let (taken, kept): (Vec<T>, Vec<T>) = std::mem::take(held).into_iter().partition(doomed);
    if kept.is_empty() {
        map.remove(&session);
    } else {
        *held = kept;
    }
    taken
}
