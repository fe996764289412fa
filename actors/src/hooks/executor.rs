//! Where hook code runs: on `sessionbus-hook` threads, never on the engine's.
//!
//! Ground rules:
//! - Each hook run is a task: the hook's call and every poll of its future
//!   happen on a hook thread, inside the engine's tokio context (so a hook's
//!   `tokio::time::sleep`, channels and sockets use the engine's drivers).
//!   A hook that blocks its thread holds that thread only: the engine's
//!   thread, every session and the hook's own timeout go on.
//! - The engine waits for a task's outcome under the hook timeout; at the
//!   timeout it abandons the task: the future is dropped at its next chance
//!   (at once if it is waiting, when its poll returns if it is blocking), and
//!   its outcome is no longer wanted.
//! - Threads are started on demand, up to `MAX_THREADS`, and leave after
//!   `KEEP_ALIVE` without work, so an engine without hooks has none. If every
//!   thread is blocked, further tasks wait for one; their timeouts still run
//!   on the engine's thread, so releases still go ahead.
//! - Paused test clocks (`tokio::time::pause`) skip ahead only when the
//!   engine's runtime has nothing to do, which a hook running on another
//!   thread does not show. While any task is queued or being polled, one
//!   blocking-pool task of the engine's runtime is held open, which tells a
//!   paused clock to wait (tokio does not auto-advance while `spawn_blocking`
//!   work runs); it is let go as soon as no hook code is running or due, and
//!   at the latest when its task is abandoned. Outside paused clocks it costs
//!   one idle blocking thread while hooks run.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Most threads running hook code at once.
const MAX_THREADS: usize = 64;
/// How long an idle hook thread waits for work before it leaves.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
const THREAD_NAME: &str = "sessionbus-hook";

/// How one hook run ended, as seen from its thread.
pub(super) enum Finished {
    Returned(Result<(), super::HookError>),
    Panicked,
}

type Call = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), super::HookError>> + Send>;

enum Stage {
    /// Not called yet: the call itself is hook code too, so it runs on a hook thread.
    Call(Call),
    Running(BoxFuture<'static, Result<(), super::HookError>>),
    Done,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The hook threads and the paused-clock hold; one per engine, shared by its tasks.
pub(super) struct Executor {
    threads: Arc<Threads>,
    hold: Arc<ClockHold>,
}

impl Default for Executor {
    fn default() -> Self {
        Executor {
            threads: Arc::new(Threads::default()),
            hold: Arc::new(ClockHold::default()),
        }
    }
}

impl Executor {
    /// Starts `call` (and then its future) on a hook thread, in the engine's
    /// tokio context (`handle`). The outcome arrives on the receiver; the
    /// guard abandons the run when dropped (after an outcome, harmlessly).
    pub(super) fn start(
        &self,
        handle: Handle,
        call: Call,
    ) -> (oneshot::Receiver<Finished>, AbandonOnDrop) {
        let (outcome, finished) = oneshot::channel();
        let task = Arc::new(Task {
            stage: Mutex::new(Stage::Call(call)),
            outcome: Mutex::new(Some(outcome)),
            scheduled: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            done: AtomicBool::new(false),
            holds: Mutex::new(0),
            handle,
            threads: self.threads.clone(),
            hold: self.hold.clone(),
        });
        task.clone().schedule();
        (finished, AbandonOnDrop(task))
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.threads.close();
    }
}

/// Abandons its task when dropped: the engine no longer waits for it.
pub(super) struct AbandonOnDrop(Arc<Task>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

struct Task {
    stage: Mutex<Stage>,
    outcome: Mutex<Option<oneshot::Sender<Finished>>>,
    /// A run of this task is queued or under way on a hook thread.
    scheduled: AtomicBool,
    /// Woken since its current poll began: poll again.
    woken: AtomicBool,
    abandoned: AtomicBool,
    /// The hook returned or panicked, or its future was dropped.
    done: AtomicBool,
    /// How many holds on the clock this task's runs have taken: one per
    /// queued run (briefly two, when a wake queues a run while the last one
    /// is finishing), given back as each run ends, or all at once when the
    /// task is abandoned.
    holds: Mutex<usize>,
    handle: Handle,
    threads: Arc<Threads>,
    hold: Arc<ClockHold>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.schedule();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.clone().schedule();
    }
}

impl Task {
    /// Queues a run unless one is queued or under way (that one polls again).
    fn schedule(self: Arc<Self>) {
        // Raised before `scheduled` is read, so a run that is finishing its
        // poll sees it (see `run`).
        self.woken.store(true, Ordering::SeqCst);
        if self.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        self.hold_clock();
        let threads = self.threads.clone();
        threads.submit(self);
    }

    /// For a run about to be queued.
    fn hold_clock(&self) {
        if self.abandoned.load(Ordering::SeqCst) {
            return; // dropping a future needs no clock held
        }
        *lock(&self.holds) += 1;
        self.hold.acquire(&self.handle);
    }

    /// As a run ends (`all`: the task is abandoned).
    fn let_clock_go(&self, all: bool) {
        let mut holds = lock(&self.holds);
        while *holds > 0 {
            *holds -= 1;
            self.hold.release();
            if !all {
                break;
            }
        }
    }

    fn abandon(self: &Arc<Self>) {
        if self.abandoned.swap(true, Ordering::SeqCst) {
            return;
        }
        // A poll blocked past the timeout must not keep a paused clock still.
        self.let_clock_go(true);
        lock(&self.outcome).take();
        // `stage` is never locked here: a blocked poll holds it. A run drops
        // the future (hook code too, so on a hook thread): a queued run when
        // it comes, a run under way once its poll returns (the wake below
        // makes it look again).
        if !self.done.load(Ordering::SeqCst) {
            self.clone().schedule();
        }
    }

    /// On a hook thread: polls until the task finishes, or waits for a wake
    /// that has not come yet.
    fn run(self: Arc<Self>) {
        loop {
            self.woken.store(false, Ordering::SeqCst);
            if self.step() {
                break;
            }
            self.scheduled.store(false, Ordering::SeqCst);
            // A wake during the poll found `scheduled` raised and left the
            // poll to us (this run goes on, still holding the clock); one
            // after the line above queued a run of its own.
            let again =
                self.woken.load(Ordering::SeqCst) && !self.scheduled.swap(true, Ordering::SeqCst);
            if !again {
                break;
            }
        }
        self.let_clock_go(false);
    }

    /// Calls or polls the hook once; true once it is finished (or abandoned).
    fn step(self: &Arc<Self>) -> bool {
        let _context = self.handle.enter();
        let mut stage = lock(&self.stage);
        if self.abandoned.load(Ordering::SeqCst) {
            *stage = Stage::Done; // drops the call or the future here
            self.done.store(true, Ordering::SeqCst);
            return true;
        }
        if let Stage::Call(_) = &*stage {
            let Stage::Call(call) = std::mem::replace(&mut *stage, Stage::Done) else {
                unreachable!("matched above");
            };
            match std::panic::catch_unwind(AssertUnwindSafe(call)) {
                Ok(future) => *stage = Stage::Running(future),
                Err(_) => {
                    self.finish(Finished::Panicked);
                    return true;
                }
            }
        }
        let Stage::Running(future) = &mut *stage else {
            return true; // done already: a late wake
        };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        let finished = match polled {
            Ok(Poll::Pending) => return false,
            Ok(Poll::Ready(result)) => Finished::Returned(result),
            Err(_) => Finished::Panicked,
        };
        *stage = Stage::Done;
        drop(stage);
        self.finish(finished);
        true
    }

    fn finish(&self, finished: Finished) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(outcome) = lock(&self.outcome).take() {
            let _ = outcome.send(finished);
        }
    }
}

#[derive(Default)]
struct Threads {
    state: Mutex<Pool>,
    work: Condvar,
}

#[derive(Default)]
struct Pool {
    queue: VecDeque<Arc<Task>>,
    threads: usize,
    idle: usize,
    closed: bool,
}

impl Threads {
    fn submit(self: Arc<Self>, task: Arc<Task>) {
        let mut pool = lock(&self.state);
        pool.queue.push_back(task);
        // Every queued task needs a waiting thread; start one if there are too few.
        if pool.queue.len() <= pool.idle {
            self.work.notify_one();
            return;
        }
        if pool.threads >= MAX_THREADS {
            return; // taken by the next thread that comes free
        }
        pool.threads += 1;
        drop(pool);
        let threads = self.clone();
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || threads.serve());
        if let Err(error) = spawned {
            lock(&self.state).threads -= 1;
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "hook.thread_failed",
                %error,
                "could not start a hook thread; hooks wait for a busy one (their timeouts still apply)"
            );
        }
    }

    fn serve(&self) {
        let mut pool = lock(&self.state);
        loop {
            if let Some(task) = pool.queue.pop_front() {
                drop(pool);
                task.run();
                pool = lock(&self.state);
                continue;
            }
            if pool.closed {
                break;
            }
            pool.idle += 1;
            let (next, waited) = self
                .work
                .wait_timeout(pool, KEEP_ALIVE)
                .unwrap_or_else(|p| p.into_inner());
            pool = next;
            pool.idle -= 1;
            if waited.timed_out() && pool.queue.is_empty() {
                break;
            }
        }
        pool.threads -= 1;
    }

    /// The engine is gone: idle threads leave once the queue is empty.
    fn close(&self) {
        lock(&self.state).closed = true;
        self.work.notify_all();
    }
}

/// Keeps one blocking-pool task of the engine's runtime open while any hook
/// task is queued or polled (see the module's ground rules).
#[derive(Default)]
struct ClockHold {
    state: Mutex<HoldState>,
}

#[derive(Default)]
struct HoldState {
    holders: usize,
    /// Dropping it ends the blocking-pool task.
    open: Option<std::sync::mpsc::Sender<()>>,
}

impl ClockHold {
    fn acquire(&self, handle: &Handle) {
        let mut hold = lock(&self.state);
        hold.holders += 1;
        if hold.holders == 1 {
            let (open, closed) = std::sync::mpsc::channel::<()>();
            // Refused once the runtime is shutting down: then there is no clock to hold.
            drop(handle.spawn_blocking(move || {
                let _ = closed.recv();
            }));
            hold.open = Some(open);
        }
    }

    fn release(&self) {
        let mut hold = lock(&self.state);
        hold.holders = hold.holders.saturating_sub(1);
        if hold.holders == 0 {
            hold.open = None;
        }
    }
}
