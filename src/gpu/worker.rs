//! The `sessionbus-gpu` thread: the only thread that calls into wgpu (apart
//! from reading counters, which are atomics).
//!
//! Why one thread: the driver's own locking then never meets the engine's
//! threads, the per-session buffer map needs no lock, and requests run in
//! arrival order, which the `GpuPool` ordering contract requires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use sessionbus_actors::{AllocRequest, Allocated, GpuError, PoolInfo, ReleaseReport};
use sessionbus_actors::{AllocationId, SessionId};
use tokio::sync::oneshot;

use super::adapter::{OpenedDevice, open_device};
use super::config::GpuConfig;
use super::counters::{GpuCounters, SharedStats};
use super::error::GpuInitError;

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
    /// Destroy whatever is left, poll, answer with the counters, and exit.
    Shutdown { reply: Sender<GpuCounters> },
}

/// What the worker hands back to `WgpuPool::start` once the device is open.
pub(crate) struct Started {
    /// A clone for reading counters from other threads.
    pub(crate) device: wgpu::Device,
    pub(crate) info: PoolInfo,
    /// Counters right after the device opened: wgpu's own buffers only.
    pub(crate) initial: GpuCounters,
}

/// Every buffer is usable as compute storage and as a copy source/target:
/// what a model's KV cache or activations need, without mapping.
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The thread's body: opens the device, reports on `started`, then serves
/// `commands` until told to stop or until every sender is gone.
pub(crate) fn run(
    config: GpuConfig,
    commands: Receiver<Command>,
    started: Sender<Result<Started, GpuInitError>>,
    stats: Arc<SharedStats>,
) {
    let _guard = PanicLog;
    let opened = match open_device(&config) {
        Ok(opened) => opened,
        Err(error) => {
            // `start` is waiting on the other end; if it is gone there is no one to tell.
            let _ = started.send(Err(error));
            return;
        }
    };
    let report = Started {
        device: opened.device.clone(),
        info: opened.info.clone(),
        initial: GpuCounters::read(&opened.device),
    };
    if started.send(Ok(report)).is_err() {
        return;
    }
    let mut worker = Worker::new(opened, stats);
    let shutdown_reply = worker.serve(&commands, config.batch_max.max(1));
    worker.destroy_everything();
    // Read before the device and queue are dropped: dropping them frees wgpu's
    // own buffers too, and the caller wants a figure comparable to `initial`.
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(GpuCounters::read(&worker.device));
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

/// A release whose buffers are destroyed but whose reply waits for the batch's poll.
struct PendingRelease {
    session: SessionId,
    reply: oneshot::Sender<ReleaseReport>,
    buffers: u64,
    bytes: u64,
    started_at: Instant,
}

impl PendingRelease {
    /// A release whose buffers (`freed`: count, bytes) are destroyed; its reply waits for the poll.
    fn new(
        session: SessionId,
        reply: oneshot::Sender<ReleaseReport>,
        (buffers, bytes): (u64, u64),
        started_at: Instant,
    ) -> Self {
        PendingRelease {
            session,
            reply,
            buffers,
            bytes,
            started_at,
        }
    }
}

struct Worker {
    device: wgpu::Device,
    _queue: wgpu::Queue,
    max_buffer_size: u64,
    lost: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<SharedStats>,
    /// Owned by this thread alone, hence no lock.
    sessions: HashMap<SessionId, Vec<LiveBuffer>>,
}

impl Worker {
    fn new(opened: OpenedDevice, stats: Arc<SharedStats>) -> Self {
        Worker {
            max_buffer_size: opened.info.max_buffer_size,
            device: opened.device,
            _queue: opened.queue,
            lost: opened.lost,
            stats,
            sessions: HashMap::new(),
        }
    }

    /// Serves batches until `Shutdown` (whose reply it returns) or until every
    /// sender is dropped.
    ///
    /// The channel is unbounded so that the engine never blocks on it; in
    /// practice it stays short, because every command carries a reply that a
    /// caller is awaiting before it sends more for that session.
    fn serve(
        &mut self,
        commands: &Receiver<Command>,
        batch_max: usize,
    ) -> Option<Sender<GpuCounters>> {
        // Blocking for the first command: an idle pool costs nothing.
        while let Ok(first) = commands.recv() {
            let mut pending = Vec::new();
            let mut stop = None;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(command) = next.take() {
                taken += 1;
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
                    Command::Shutdown { reply } => {
                        stop = Some(reply);
                        break;
                    }
                }
                if taken < batch_max {
                    next = commands.try_recv().ok();
                }
            }
            self.finish_releases(pending);
            if stop.is_some() {
                return stop;
            }
        }
        None
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

    /// Only `session`'s own list is searched, so an id of another session's
    /// buffer (or an unknown or already-destroyed one) matches nothing.
    fn destroy_allocations(&mut self, session: SessionId, ids: &[AllocationId]) -> (u64, u64) {
        let Some(live) = self.sessions.get_mut(&session) else {
            return (0, 0);
        };
        let listed: HashSet<AllocationId> = ids.iter().copied().collect();
        let (doomed, kept): (Vec<LiveBuffer>, Vec<LiveBuffer>) = std::mem::take(live)
            .into_iter()
            .partition(|buffer| listed.contains(&buffer.id));
        if kept.is_empty() {
            // No empty entries: `sessions_holding_memory` lists the map's keys.
            self.sessions.remove(&session);
        } else {
            *live = kept;
        }
        self.destroy_buffers(doomed)
    }

    /// Sorted, so callers and logs see a stable order.
    fn sessions_holding_memory(&self) -> Vec<SessionId> {
        let mut holders: Vec<SessionId> = self.sessions.keys().copied().collect();
        holders.sort_unstable();
        holders
    }

    fn destroy_session(&mut self, session: SessionId) -> (u64, u64) {
        match self.sessions.remove(&session) {
            Some(live) => self.destroy_buffers(live),
            None => (0, 0),
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

    /// One poll for the whole batch, then every release reply.
    fn finish_releases(&mut self, pending: Vec<PendingRelease>) {
        if pending.is_empty() {
            return;
        }
        if pending.iter().any(|release| release.buffers > 0) {
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
                host_bytes: 0,
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

    /// Shutdown path: anything still alive is a session that was never
    /// released, i.e. an engine bug worth a warning each.
    fn destroy_everything(&mut self) {
        let leftovers: Vec<(SessionId, Vec<LiveBuffer>)> = self.sessions.drain().collect();
        let any = !leftovers.is_empty();
        for (session, live) in leftovers {
            let ids: Vec<u64> = live.iter().map(|buffer| buffer.id.0).collect();
            let (buffers, bytes) = self.destroy_buffers(live);
            tracing::warn!(%session, buffers, bytes, ?ids, "GPU buffers still alive at shutdown; destroyed them");
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
    // Scopes instead of the uncaptured handler, so the error reaches this
    // caller rather than a log line. Popped in reverse order, as wgpu requires;
    // on native backends the pop futures are already resolved.
    let oom_scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation_scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: USAGE,
        mapped_at_creation: false,
    });
    let validation = pollster::block_on(validation_scope.pop());
    let oom = pollster::block_on(oom_scope.pop());
    match oom.or(validation) {
        None => Ok(buffer),
        // The handle is invalid; dropping it is all there is to do.
        Some(wgpu::Error::OutOfMemory { .. }) => Err(GpuError::OutOfMemory { bytes: requested }),
        Some(other) => Err(GpuError::Rejected(other.to_string().trim_end().to_owned())),
    }
}

/// Commands that arrived after `Shutdown`: allocations are refused outright;
/// the replies of releases (either kind) and of `SessionsHoldingMemory` are
/// dropped unanswered (the engine treats a dropped release reply as an
/// incident, which a release after shutdown is).
fn refuse_the_rest(commands: &Receiver<Command>) {
    while let Ok(command) = commands.try_recv() {
        if let Command::Allocate { reply, .. } = command {
            let _ = reply.send(Err(GpuError::Unavailable));
        }
    }
}
