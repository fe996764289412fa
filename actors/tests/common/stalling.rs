//! A pool that can stop answering releases, or offloads and restores: the
//! fault behind a stuck step (a GPU whose answer never comes); per session,
//! it can also hold a release, drop its reply, or panic on it. Everything
//! else goes to an `InMemoryPool`.

use std::collections::HashSet;
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
    /// Sessions whose release is held (as `stall`, for them alone), whose
    /// reply is dropped (a pool whose worker is gone), or on which
    /// `release_session` panics once.
    hold: Mutex<HashSet<SessionId>>,
    drop_reply: Mutex<HashSet<SessionId>>,
    panic_on: Mutex<HashSet<SessionId>>,
    /// Every release asked for, in the order it reached the pool.
    order: Mutex<Vec<SessionId>>,
    held: Mutex<Vec<(SessionId, oneshot::Sender<ReleaseReport>)>>,
    stall_moves: AtomicBool,
    held_moves: Mutex<Vec<Move>>,
}

/// A `StallingPool` over a fresh `InMemoryPool` (256 MiB), and that pool.
pub fn stalling_pool() -> (Arc<InMemoryPool>, Arc<StallingPool>) {
    let inner = Arc::new(InMemoryPool::new(256 << 20, 16 << 20));
    let pool = Arc::new(StallingPool::new(inner.clone()));
    (inner, pool)
}

impl StallingPool {
    pub fn new(inner: Arc<InMemoryPool>) -> Self {
        StallingPool {
            inner,
            stall: AtomicBool::new(false),
            hold: Mutex::default(),
            drop_reply: Mutex::default(),
            panic_on: Mutex::default(),
            order: Mutex::default(),
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

    /// From now on, `session`'s release is held without an answer.
    pub fn hold(&self, session: SessionId) {
        self.hold.lock().unwrap().insert(session);
    }

    /// From now on, `session`'s release reply is dropped unanswered.
    pub fn drop_reply(&self, session: SessionId) {
        self.drop_reply.lock().unwrap().insert(session);
    }

    /// `release_session` panics once, when asked to release `session`.
    pub fn panic_on(&self, session: SessionId) {
        self.panic_on.lock().unwrap().insert(session);
    }

    /// Every release asked for so far, in the order it reached the pool.
    pub fn order(&self) -> Vec<SessionId> {
        self.order.lock().unwrap().clone()
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
        self.order.lock().unwrap().push(session);
        if self.panic_on.lock().unwrap().remove(&session) {
            panic!("attack: the pool panics while a batch is handed over");
        }
        if self.drop_reply.lock().unwrap().contains(&session) {
            return; // the reply is dropped: a pool whose worker is gone
        }
        if self.stall.load(Ordering::SeqCst) || self.hold.lock().unwrap().contains(&session) {
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
