//! The usual practice: a map session → deadline behind a mutex, and one thread
//! that wakes every period, takes every expired entry and releases it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sessionbus::SessionId;

use super::direct::{Deadlines, Releaser};

pub struct Sweeper {
    entries: Deadlines,
    /// Dropping it wakes the thread and stops it.
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Sweeper {
    pub fn start(period: Duration, releaser: Arc<Releaser>) -> Sweeper {
        let entries: Deadlines = Arc::new(Mutex::new(Default::default()));
        let (stop, stopped) = mpsc::channel::<()>();
        let map = entries.clone();
        let thread = std::thread::Builder::new()
            .name("polling-sweeper".into())
            .spawn(move || {
                let mut tick = Instant::now();
                loop {
                    tick += period;
                    let wait = tick.saturating_duration_since(Instant::now());
                    if !matches!(stopped.recv_timeout(wait), Err(mpsc::RecvTimeoutError::Timeout)) {
                        return;
                    }
                    let now = Instant::now();
                    let mut expired = Vec::new();
                    map.lock().unwrap().retain(|&session, &mut due| {
                        let is_due = due <= now;
                        if is_due {
                            expired.push((session, due));
                        }
                        !is_due
                    });
                    for (session, due) in expired {
                        releaser.release(session, due);
                    }
                }
            })
            .expect("spawn the sweeper thread");
        Sweeper {
            entries,
            stop,
            thread,
        }
    }

    pub fn insert(&self, session: SessionId, due: Instant) {
        self.entries.lock().unwrap().insert(session, due);
    }

    pub fn remove(&self, session: SessionId) -> bool {
        self.entries.lock().unwrap().remove(&session).is_some()
    }

    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
