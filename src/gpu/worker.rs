//! The `sessionbus-gpu` thread: the only thread that calls into wgpu (apart
//! from reading counters, which are atomics).
//!
//! Why one thread: the driver's own locking then never meets the engine's
//! threads, the per-session buffer map needs no lock, and requests run in
//! arrival order, which the `GpuPool` ordering contract requires.
//!
//! This file holds the thread's body (`run`) and the worker's state; each
//! concern is in a file of its own under `worker/`: `command` (what the pool
//! asks), `serve` (the command loop, with per-command panic isolation),
//! `buffers` (allocation, writes, reads), `release` (destroying a session's
//! memory, batched behind one poll), `offload` (to host memory and back),
//! `device` (the device other threads see, and its reopening after a loss)
//! and `exit` (how the thread ends).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::{Receiver, Sender};
use sessionbus_actors::PoolInfo;
use sessionbus_actors::{AllocationId, SessionId};

use super::adapter::{OpenedDevice, adopt_device, open_device};
use super::config::GpuConfig;
use super::counters::{GpuCounters, SharedStats};
use super::error::GpuInitError;
use super::given::WgpuDevice;

mod buffers;
mod command;
mod device;
mod exit;
mod offload;
mod release;
mod serve;

#[cfg(test)]
pub(super) use buffers::create_buffer;
pub(super) use buffers::{USAGE, scoped_create};
pub(crate) use command::Command;
pub(crate) use device::DeviceView;
pub(crate) use exit::WorkerExit;
use exit::{ExitGuard, PanicLog, refuse_the_rest};

/// What the worker hands back to `WgpuPool::start` once the device is open.
pub(crate) struct Started {
    pub(crate) info: PoolInfo,
    /// The current device, for other threads; the worker keeps it current.
    pub(crate) view: Arc<DeviceView>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread's body: opens the device, reports on `started`, then serves
/// `commands` until told to stop or until every sender is gone.
pub(crate) fn run(
    config: GpuConfig,
    given: Option<WgpuDevice>,
    commands: Receiver<Command>,
    started: Sender<Result<Started, GpuInitError>>,
    stats: Arc<SharedStats>,
    exit: Arc<WorkerExit>,
) {
    let _exit = ExitGuard(exit.clone());
    let _guard = PanicLog;
    let is_given = given.is_some();
    let opened = match given.map_or_else(|| open_device(&config), |given| Ok(adopt_device(given))) {
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
    worker.given = is_given;
    let asked_to_stop = worker.serve(&commands, config.batch_max.max(1));
    worker.destroy_everything();
    // Read before the device and queue are dropped: dropping them frees wgpu's
    // own buffers too, and the caller wants a figure comparable to `initial`.
    if asked_to_stop {
        exit.stopped_at(GpuCounters::read(&worker.device));
    }
    refuse_the_rest(&commands);
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

struct Worker {
    device: wgpu::Device,
    queue: wgpu::Queue,
    max_buffer_size: u64,
    lost: Arc<AtomicBool>,
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
    /// The device is the application's: it cannot be reopened here.
    given: bool,
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
            given: false,
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

    /// Hands queued writes to the device, so they (and the staging memory
    /// wgpu keeps for them) do not wait for an unrelated submission, and so
    /// a buffer destroyed after a write is freed by the next poll.
    fn submit_writes(&mut self) {
        if std::mem::take(&mut self.unsubmitted_writes) {
            self.queue.submit([]);
        }
    }

    /// Waits until the device has finished with everything submitted, so
    /// destroyed buffers still referenced by in-flight work are really freed.
    fn wait_idle(&self) {
        if let Err(error) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            tracing::error!(%error, "GPU poll failed; freed memory may come back late");
        }
    }
}
