//! How the worker thread ends: on `Shutdown` (what is left is destroyed and
//! later commands refused), when every sender is gone, or by a panic; and
//! how whoever waits for it learns that it did.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::Receiver;
use sessionbus_actors::{GpuError, SessionId};

use super::{Command, LiveBuffer, Worker, lock};
use crate::gpu::counters::GpuCounters;

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
    pub(super) fn stopped_at(&self, counters: GpuCounters) {
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
pub(super) struct ExitGuard(pub(super) Arc<WorkerExit>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.exited();
    }
}

/// Logs when the thread unwinds (a driver panic): callers will see dropped
/// replies and `Unavailable`, and the log says why.
pub(super) struct PanicLog;

impl Drop for PanicLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the sessionbus-gpu thread panicked; the GPU pool is gone");
        }
    }
}

impl Worker {
    /// Shutdown path: anything still alive is a session that was never
    /// released, i.e. an engine bug worth a warning each.
    pub(super) fn destroy_everything(&mut self) {
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

/// Commands that arrived after `Shutdown`: allocations, offloads and
/// restores are refused outright (`Unavailable`); the replies of releases
/// (either kind), of `SessionsHoldingMemory` and of reads and writes are
/// dropped unanswered (the engine treats a dropped release reply as an
/// incident, which a release after shutdown is).
pub(super) fn refuse_the_rest(commands: &Receiver<Command>) {
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
