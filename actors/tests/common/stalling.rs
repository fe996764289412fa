//! A pool that can stop answering releases, or offloads and restores: the
//! fault behind a stuck step (a GPU whose answer never comes). Everything
//! else goes to an `InMemoryPool`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sessionbus_actors::*;
use tokio::sync::oneshot;

/// An offload or restore held without an answer, in arrival order.
enum Move {
    Offload(SessionId, oneshot::Sender<Result<OffloadReport, GpuError>>),
    Restore(SessionId, oneshot::Sender<Result<RestoreReport, GpuError>>),
}

pub struct StallingPool {
    pub inner: Arc<InMemoryPool>,
    stall: AtomicBool,
    held: Mutex<Vec<(SessionId, oneshot::Sender<ReleaseReport>)>>,
    stall_moves: AtomicBool,
    held_moves: Mutex<Vec<Move>>,
}

impl StallingPool {
    pub fn new(inner: Arc<InMemoryPool>) -> Self {
        StallingPool {
            inner,
            stall: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            stall_moves: AtomicBool::new(false),
            held_moves: Mutex::new(Vec::new()),
        }
    }

    /// From now on, offloads and restores are held without an answer.
    pub fn stall_moves(&self, on: bool) {
        self.stall_moves.store(on, Ordering::SeqCst);
    }

    /// Carries out the held offloads and restores now, in arrival order (as
    /// a device that comes back would); their callers may have stopped waiting.
    pub fn move_late(&self) {
        for held in self.held_moves.lock().unwrap().drain(..) {
            match held {
                Move::Offload(session, reply) => self.inner.offload_session(session, reply),
                Move::Restore(session, reply) => self.inner.restore_session(session, reply),
            }
        }
    }

    /// From now on, releases are held without an answer (and without freeing).
    pub fn stall(&self, on: bool) {
        self.stall.store(on, Ordering::SeqCst);
    }

    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Performs the held releases now: the late answers.
    pub fn answer_late(&self) {
        for (session, reply) in self.held.lock().unwrap().drain(..) {
            self.inner.release_session(session, reply);
        }
    }
}

impl GpuPool for StallingPool {
    fn info(&self) -> &PoolInfo {
        self.inner.info()
    }

    fn allocate(&self, request: AllocRequest, reply: oneshot::Sender<Result<Allocated, GpuError>>) {
        self.inner.allocate(request, reply)
    }

    fn release_session(&self, session: SessionId, reply: oneshot::Sender<ReleaseReport>) {
        if self.stall.load(Ordering::SeqCst) {
            self.held.lock().unwrap().push((session, reply));
        } else {
            self.inner.release_session(session, reply)
        }
    }

    fn release_allocations(
        &self,
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    ) {
        self.inner.release_allocations(session, ids, reply)
    }

    fn sessions_holding_memory(&self, reply: oneshot::Sender<Vec<SessionId>>) {
        self.inner.sessions_holding_memory(reply)
    }

    fn stats(&self) -> PoolStats {
        self.inner.stats()
    }

    fn offload_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<OffloadReport, GpuError>>,
    ) {
        if self.stall_moves.load(Ordering::SeqCst) {
            self.held_moves
                .lock()
                .unwrap()
                .push(Move::Offload(session, reply));
        } else {
            self.inner.offload_session(session, reply)
        }
    }

    fn restore_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<RestoreReport, GpuError>>,
    ) {
        if self.stall_moves.load(Ordering::SeqCst) {
            self.held_moves
                .lock()
                .unwrap()
                .push(Move::Restore(session, reply));
        } else {
            self.inner.restore_session(session, reply)
        }
    }
}
