//! A moka cache as the session store: per-entry expiry (`Expiry`), and an
//! eviction listener that releases the session's memory when its entry
//! expires. As moka's docs advise for a cache that must notice expiry without
//! traffic, a thread calls `run_pending_tasks` on a short interval.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use sessionbus::SessionId;

use super::direct::Releaser;

/// How often the maintenance thread runs moka's pending tasks.
pub const MAINTENANCE_EVERY: Duration = Duration::from_millis(10);

/// Each entry's value is its deadline; it lives until then.
struct UntilDue;

impl Expiry<SessionId, Instant> for UntilDue {
    fn expire_after_create(
        &self,
        _: &SessionId,
        due: &Instant,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(due.saturating_duration_since(created_at))
    }
}

pub struct MokaStore {
    cache: Cache<SessionId, Instant>,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl MokaStore {
    pub fn start(releaser: Arc<Releaser>) -> MokaStore {
        let cache: Cache<SessionId, Instant> = Cache::builder()
            .expire_after(UntilDue)
            .eviction_listener(move |session: Arc<SessionId>, due: Instant, cause| {
                // An explicit removal is a close: the closer releases.
                if cause == RemovalCause::Expired {
                    releaser.release(*session, due);
                }
            })
            .build();
        let (stop, stopped) = mpsc::channel::<()>();
        let maintained = cache.clone();
        let thread = std::thread::Builder::new()
            .name("moka-maintenance".into())
            .spawn(move || {
                while matches!(
                    stopped.recv_timeout(MAINTENANCE_EVERY),
                    Err(mpsc::RecvTimeoutError::Timeout)
                ) {
                    maintained.run_pending_tasks();
                }
            })
            .expect("spawn the moka maintenance thread");
        MokaStore {
            cache,
            stop,
            thread,
        }
    }

    pub fn insert(&self, session: SessionId, due: Instant) {
        self.cache.insert(session, due);
    }

    pub fn contains(&self, session: SessionId) -> bool {
        self.cache.get(&session).is_some()
    }

    pub fn remove(&self, session: SessionId) -> bool {
        self.cache.remove(&session).is_some()
    }

    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
