//! What the peers other than sessionbus share: their own `WgpuPool`, a
//! [`Releaser`] that asks it to release a session and records when the memory
//! was back, and [`Peer`], the session store under comparison.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sessionbus::pool::{AllocRequest, GpuPool, ReleaseReport, WgpuPool};
use sessionbus::{AllocationId, SessionId};
use tokio::sync::oneshot;

use super::{peer_moka, peer_redis, peer_sweeper, peer_tokio};

/// A release asked of the pool, waiting for its report.
struct Pending {
    session: SessionId,
    due: Instant,
    answer: oneshot::Receiver<ReleaseReport>,
}

/// What the releaser saw, once every report is in.
#[derive(Default)]
pub struct ReleaseLog {
    /// Per release: the session, due → `ReleaseReport::finished_at`, buffers freed.
    pub released: Vec<(SessionId, Duration, u64)>,
    /// Reports that never came.
    pub lost: usize,
}

/// Releases a session's buffers through the peer's pool when the peer says it
/// expired; a thread takes the reports in order (the pool answers in order).
pub struct Releaser {
    pool: Arc<WgpuPool>,
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    collector: Mutex<Option<JoinHandle<ReleaseLog>>>,
    done: Arc<AtomicUsize>,
}

impl Releaser {
    pub fn start(pool: Arc<WgpuPool>) -> Arc<Releaser> {
        let (queue, inbox) = mpsc::channel::<Pending>();
        let done = Arc::new(AtomicUsize::new(0));
        let counter = done.clone();
        let collector = std::thread::Builder::new()
            .name("peer-releaser".into())
            .spawn(move || {
                let mut log = ReleaseLog::default();
                for pending in inbox {
                    match pending.answer.blocking_recv() {
                        Ok(report) => log.released.push((
                            pending.session,
                            report.finished_at.saturating_duration_since(pending.due),
                            report.buffers,
                        )),
                        Err(_) => log.lost += 1,
                    }
                    counter.fetch_add(1, Ordering::Release);
                }
                log
            })
            .expect("spawn the releaser thread");
        Arc::new(Releaser {
            pool,
            queue: Mutex::new(Some(queue)),
            collector: Mutex::new(Some(collector)),
            done,
        })
    }

    /// The peer found `session` expired (it was due at `due`): give its memory back.
    pub fn release(&self, session: SessionId, due: Instant) {
        let (reply, answer) = oneshot::channel();
        self.pool.release_session(session, reply);
        if let Some(queue) = self.queue.lock().unwrap().as_ref() {
            let _ = queue.send(Pending {
                session,
                due,
                answer,
            });
        }
    }

    /// Releases whose report is in.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Acquire)
    }

    /// Stops taking releases and returns the log once every report is in.
    pub fn finish(&self) -> ReleaseLog {
        drop(self.queue.lock().unwrap().take());
        self.collector
            .lock()
            .unwrap()
            .take()
            .and_then(|c| c.join().ok())
            .unwrap_or_default()
    }
}

/// Allocates one buffer of `bytes` for `session` on `pool`.
pub async fn allocate(pool: &WgpuPool, session: SessionId, bytes: u64) -> Result<(), String> {
    let request = AllocRequest {
        id: AllocationId::next(),
        session,
        bytes,
    };
    let (reply, answer) = oneshot::channel();
    pool.allocate(request, reply);
    match answer.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("allocate: {e}")),
        Err(_) => Err("allocate: no reply".into()),
    }
}

/// Releases everything `session` holds on `pool`, now, and waits for the report.
pub async fn release_now(pool: &WgpuPool, session: SessionId) -> Result<ReleaseReport, String> {
    let (reply, answer) = oneshot::channel();
    pool.release_session(session, reply);
    answer.await.map_err(|_| "release: no report".to_string())
}

/// Which store a direct peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A map behind a mutex and a thread that sweeps it every period.
    Sweeper(Duration),
    /// A moka cache with per-entry expiry and an eviction listener.
    Moka,
    /// One tokio task per session sleeping until its deadline.
    TokioTask,
    /// Redis keys with TTLs and keyspace notifications.
    Redis,
}

impl PeerKind {
    pub fn name(self) -> String {
        match self {
            PeerKind::Sweeper(period) => match peer_sweeper::shards_for(period) {
                1 => format!("polling sweeper ({} s)", period.as_secs()),
                phases => format!("polling sweeper ({} s, {phases} phases)", period.as_secs()),
            },
            PeerKind::Moka => format!(
                "moka cache (tasks every {} ms)",
                peer_moka::MAINTENANCE_EVERY.as_millis()
            ),
            PeerKind::TokioTask => "tokio task per session".into(),
            PeerKind::Redis => "redis TTL + keyspace events".into(),
        }
    }

    pub fn key(self) -> String {
        match self {
            PeerKind::Sweeper(period) => format!("sweeper_{}s", period.as_secs()),
            PeerKind::Moka => "moka".into(),
            PeerKind::TokioTask => "tokio_task".into(),
            PeerKind::Redis => "redis".into(),
        }
    }

    /// Parses what [`PeerKind::key`] wrote.
    pub fn from_key(key: &str) -> Option<PeerKind> {
        match key {
            "moka" => Some(PeerKind::Moka),
            "tokio_task" => Some(PeerKind::TokioTask),
            "redis" => Some(PeerKind::Redis),
            _ => key
                .strip_prefix("sweeper_")?
                .strip_suffix('s')?
                .parse()
                .ok()
                .map(|s| PeerKind::Sweeper(Duration::from_secs(s))),
        }
    }
}

/// A running session store that releases through a [`Releaser`] when an entry expires.
pub enum Peer {
    Sweeper(peer_sweeper::Sweeper),
    Moka(peer_moka::MokaStore),
    TokioTask(peer_tokio::TaskStore),
    Redis(peer_redis::RedisStore),
}

impl Peer {
    /// Starts the store; `Err` says why it cannot run here (the peer is skipped).
    pub fn start(kind: PeerKind, releaser: Arc<Releaser>, mailboxes: bool) -> Result<Peer, String> {
        Ok(match kind {
            PeerKind::Sweeper(period) => {
                Peer::Sweeper(peer_sweeper::Sweeper::start(period, releaser))
            }
            PeerKind::Moka => Peer::Moka(peer_moka::MokaStore::start(releaser)),
            PeerKind::TokioTask => {
                Peer::TokioTask(peer_tokio::TaskStore::start(releaser, mailboxes))
            }
            PeerKind::Redis => Peer::Redis(peer_redis::RedisStore::start(releaser)?),
        })
    }

    /// Files `session`, due at `due`.
    pub async fn insert(&self, session: SessionId, due: Instant) -> Result<(), String> {
        match self {
            Peer::Sweeper(p) => p.insert(session, due),
            Peer::Moka(p) => p.insert(session, due),
            Peer::TokioTask(p) => p.insert(session, due),
            Peer::Redis(p) => return p.insert(session, due).await,
        }
        Ok(())
    }

    /// One message about a live session, answered: a lookup in the sweeper's
    /// map, a `get` of moka, a round trip to the session's own task (with
    /// mailboxes), an `EXISTS` to Redis. `false` if it was not there.
    pub async fn message(&self, session: SessionId) -> Result<bool, String> {
        Ok(match self {
            Peer::Sweeper(p) => p.contains(session),
            Peer::Moka(p) => p.contains(session),
            Peer::TokioTask(p) => p.message(session).await,
            Peer::Redis(p) => return p.exists(session).await,
        })
    }

    /// Takes `session` out (an explicit close), so that its expiry will not
    /// release it; the caller releases. `false` if it was not there.
    pub async fn remove(&self, session: SessionId) -> Result<bool, String> {
        Ok(match self {
            Peer::Sweeper(p) => p.remove(session),
            Peer::Moka(p) => p.remove(session),
            Peer::TokioTask(p) => p.remove(session),
            Peer::Redis(p) => return p.remove(session).await,
        })
    }

    /// Stops the store's threads (and server).
    pub fn stop(self) {
        match self {
            Peer::Sweeper(p) => p.stop(),
            Peer::Moka(p) => p.stop(),
            Peer::TokioTask(p) => p.stop(),
            Peer::Redis(p) => p.stop(),
        }
    }
}

/// A direct peer ready to run: its pool, wgpu's counters before anything was
/// allocated, its releaser and the store.
pub struct Started {
    pub pool: Arc<WgpuPool>,
    pub baseline: sessionbus::pool::GpuCounters,
    pub releaser: Arc<Releaser>,
    pub peer: Peer,
}

impl Started {
    pub fn into_parts(
        self,
    ) -> (
        Arc<WgpuPool>,
        sessionbus::pool::GpuCounters,
        Arc<Releaser>,
        Peer,
    ) {
        (self.pool, self.baseline, self.releaser, self.peer)
    }
}

/// Starts a pool and the store of `kind` on it. `None` if it cannot: why goes
/// to `skipped` (the peer cannot run here) or to `errors` (a failure).
pub fn start(
    kind: PeerKind,
    skipped: &mut Option<String>,
    errors: &mut Vec<String>,
) -> Option<Started> {
    start_with(kind, false, skipped, errors)
}

/// [`start`], with a mailbox per session where the store has tasks
/// (`mailboxes`: for workloads that send sessions messages).
pub fn start_with(
    kind: PeerKind,
    mailboxes: bool,
    skipped: &mut Option<String>,
    errors: &mut Vec<String>,
) -> Option<Started> {
    let pool = match WgpuPool::start(&sessionbus::config::GpuConfig::default()) {
        Ok(pool) => Arc::new(pool),
        Err(e) => {
            errors.push(format!("{}: pool did not start: {e}", kind.name()));
            return None;
        }
    };
    let baseline = pool.counters();
    let releaser = Releaser::start(pool.clone());
    match Peer::start(kind, releaser.clone(), mailboxes) {
        Ok(peer) => Some(Started {
            pool,
            baseline,
            releaser,
            peer,
        }),
        Err(why) => {
            releaser.finish();
            *skipped = Some(why);
            None
        }
    }
}

/// Sessions → due times, for stores that keep them next to their own state.
pub type Deadlines = Arc<Mutex<std::collections::HashMap<SessionId, Instant>>>;
