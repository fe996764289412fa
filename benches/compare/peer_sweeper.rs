//! The usual practice: a map session → deadline behind a mutex, and one thread
//! that wakes every period, takes every expired entry and releases it.
//!
//! A sweeper in production has been running long before any given session, so
//! its phase relative to that session's deadline is uniform over the period.
//! With a period longer than a second (16 s), one phase for a whole run of
//! TTLs drawn in 1–3 s would make every session equally early or late; so the
//! map is split into one shard per second of the period, session by id, and
//! shard k is swept at seconds k, k + P, k + 2P…: each session sees a sweep
//! every P at a phase spread over the period, as in the steady state. With a
//! 1 s period that is a single map swept every second.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sessionbus::SessionId;

use super::direct::Releaser;

type Shards = Arc<Vec<Mutex<HashMap<SessionId, Instant>>>>;

pub struct Sweeper {
    shards: Shards,
    /// Dropping it wakes the thread and stops it.
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// One shard per whole second of the period (at least one).
pub fn shards_for(period: Duration) -> usize {
    (period.as_secs() as usize).max(1)
}

impl Sweeper {
    pub fn start(period: Duration, releaser: Arc<Releaser>) -> Sweeper {
        let count = shards_for(period);
        let shards: Shards = Arc::new((0..count).map(|_| Mutex::new(HashMap::new())).collect());
        let (stop, stopped) = mpsc::channel::<()>();
        let swept = shards.clone();
        let step = period / count as u32;
        let thread = std::thread::Builder::new()
            .name("polling-sweeper".into())
            .spawn(move || {
                let mut tick = Instant::now();
                for k in (0..count).cycle() {
                    tick += step;
                    let wait = tick.saturating_duration_since(Instant::now());
                    if !matches!(
                        stopped.recv_timeout(wait),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                    let now = Instant::now();
                    let mut expired = Vec::new();
                    swept[k].lock().unwrap().retain(|&session, &mut due| {
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
            shards,
            stop,
            thread,
        }
    }

    fn shard(&self, session: SessionId) -> &Mutex<HashMap<SessionId, Instant>> {
        &self.shards[(session.as_u128() % self.shards.len() as u128) as usize]
    }

    pub fn insert(&self, session: SessionId, due: Instant) {
        self.shard(session).lock().unwrap().insert(session, due);
    }

    pub fn contains(&self, session: SessionId) -> bool {
        self.shard(session).lock().unwrap().contains_key(&session)
    }

    pub fn remove(&self, session: SessionId) -> bool {
        self.shard(session)
            .lock()
            .unwrap()
            .remove(&session)
            .is_some()
    }

    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
