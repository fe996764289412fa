//! What one node knows, shared by its tasks: the sessions it owns, the
//! routes it has cached, the ended ids it has seen, its health and counters.
//!
//! Ground rules: every lock here is a `std::sync::Mutex` held for a map
//! operation, never across an `.await`. Redis I/O happens in the node's tasks
//! (tokio), never on the engine's actor threads.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sessionbus_actors::{Caller, EndReason, EngineHandle, Owner, SessionId};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, oneshot, watch};

use super::config::ClusterConfig;
use super::directory::{Directory, NodeStamp};
use super::signing::{Keyring, Rejection, Sender};
use super::wire::{Invalidation, Reply};

/// Local ends (a fenced node's sessions, a takeover confirmed by the
/// directory) run this many at a time, off the tasks that found them.
const CONCURRENT_LOCAL_ENDS: usize = 64;

/// How the node stands with the cluster.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterHealth {
    /// Redis reachable, directory in sync.
    Healthy,
    /// Redis unreachable (or not yet resynced after it came back): local
    /// sessions are served, directory updates are queued, routing to other
    /// nodes fails with `ClusterError::Redis`.
    Degraded,
    /// Declared lost by the cluster and fenced: its sessions were ended with
    /// `node_lost`; it never acts as owner again. Start a new node to rejoin.
    Fenced,
    /// Left the cluster (or was stopped).
    Stopped,
}

const HEALTH: [ClusterHealth; 4] = [
    ClusterHealth::Healthy,
    ClusterHealth::Degraded,
    ClusterHealth::Fenced,
    ClusterHealth::Stopped,
];

/// A node's counters: its metrics, and what it logs when it changes state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClusterStats {
    /// This node.
    pub node: String,
    /// Its fencing epoch.
    pub epoch: u64,
    /// Healthy, degraded, fenced or stopped.
    pub health: ClusterHealth,
    /// Sessions this node owns in the directory.
    pub local_sessions: usize,
    /// Routes to other nodes' sessions held in the cache.
    pub routes_cached: usize,
    /// Directory updates waiting for Redis.
    pub queued_updates: usize,
    /// Directory updates dropped because the queue was full (resync repaired them).
    pub updates_dropped: u64,
    /// Directory writes refused as stale or already ended (someone else wrote first).
    pub write_conflicts: u64,
    /// Invalidations applied (something dropped for an ended session).
    pub invalidations_applied: u64,
    /// Invalidations ignored: older than a version already seen, or this node's own.
    pub invalidations_ignored: u64,
    /// Lost nodes this node declared and fenced.
    pub takeovers: u64,
    /// Resyncs with the directory after Redis came back.
    pub resyncs: u64,
    /// Times the node went degraded.
    pub degraded_episodes: u64,
    /// Requests this node forwarded to owners.
    pub forwarded: u64,
    /// Requests other nodes forwarded to this one.
    pub served: u64,
    /// Forwarded requests refused because `max_served_requests` were in service.
    pub refused_busy: u64,
    /// Messages from Redis refused, by why: unsigned, forged, replayed, stale
    /// epoch, not permitted… Each is also a WARN (rate-limited).
    pub rejected: HashMap<Rejection, u64>,
    /// Invalidations for a session this node owns that the directory did not
    /// confirm: refused, the session kept.
    pub invalidations_unconfirmed: u64,
    /// Forwarded requests waiting for their answer right now.
    pub pending_forwards: usize,
    /// Nonces of verified messages remembered against replays (bounded by
    /// the verified traffic of two replay windows; forged frames add none).
    pub nonces_remembered: usize,
}

impl ClusterStats {
    /// Messages refused, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) updates_dropped: AtomicU64,
    pub(crate) write_conflicts: AtomicU64,
    pub(crate) invalidations_applied: AtomicU64,
    pub(crate) invalidations_ignored: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) degraded_episodes: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) served: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) refused_busy: AtomicU64,
    pub(crate) invalidations_unconfirmed: AtomicU64,
    pub(crate) rejected: [AtomicU64; Rejection::ALL.len()],
}

/// A session this node owns: the directory version it last wrote.
#[derive(Clone, Debug)]
pub(crate) struct Owned {
    pub(crate) version: u64,
    /// The application's user, kept for re-registration after Redis lost its data.
    pub(crate) owner: String,
}

/// Where another node's session lives, as last read from the directory.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) node: String,
    pub(crate) version: u64,
}

/// Ended ids with the last version seen, bounded (oldest forgotten first).
#[derive(Default)]
pub(crate) struct Seen {
    versions: HashMap<SessionId, (u64, Option<EndReason>)>,
    order: VecDeque<SessionId>,
}

impl Seen {
    /// Records `version` for `id`; `false` if a version as new was already seen.
    pub(crate) fn record(
        &mut self,
        id: SessionId,
        version: u64,
        reason: Option<EndReason>,
        bound: usize,
    ) -> bool {
        match self.versions.get_mut(&id) {
            Some(seen) if seen.0 >= version => return false,
            Some(seen) => *seen = (version, reason),
            None => {
                self.versions.insert(id, (version, reason));
                self.order.push_back(id);
                while self.order.len() > bound {
                    if let Some(old) = self.order.pop_front() {
                        self.versions.remove(&old);
                    }
                }
            }
        }
        true
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<u64> {
        self.versions.get(&id).map(|seen| seen.0)
    }

    pub(crate) fn reason(&self, id: SessionId) -> Option<EndReason> {
        self.versions.get(&id).and_then(|seen| seen.1)
    }
}

/// A forwarded request waiting for its answer, and the node that must give it.
pub(crate) struct Pending {
    pub(crate) node: String,
    pub(crate) answer: oneshot::Sender<Reply>,
}

/// What this node last read of another node's epoch from the directory.
struct PeerEpoch {
    token: Option<(u64, u64)>,
    read_at: Instant,
}

pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) keyring: Keyring,
    /// Forwarded requests in service here (`cluster.max_served_requests` permits).
    pub(crate) serving: Arc<Semaphore>,
    /// Senders' epochs as last read from the directory.
    peers: Mutex<HashMap<String, PeerEpoch>>,
    /// Local ends to run (bounded concurrency, never dropped).
    ends: mpsc::UnboundedSender<(SessionId, EndReason)>,
    pub(crate) directory: Directory,
    pub(crate) engine: EngineHandle,
    pub(crate) stamp: NodeStamp,
    pub(crate) owned: Mutex<HashMap<SessionId, Owned>>,
    pub(crate) routes: Mutex<HashMap<SessionId, Route>>,
    /// Remote leases this node took (forwarded) on other nodes' sessions.
    pub(crate) leases: Mutex<HashMap<SessionId, Vec<u64>>>,
    pub(crate) seen: Mutex<Seen>,
    /// Owners of sessions that ended here lately (bounded by `seen_ended`),
    /// so a forwarded call on an ended session is answered as locally
    /// ("gone", with the first close's receipt) rather than "not yours".
    ended_owners: Mutex<(HashMap<SessionId, String>, VecDeque<SessionId>)>,
    health: AtomicU8,
    /// Resyncs asked for (every Redis failure or reconnect asks), and the
    /// last of them a completed resync covered: a failure during a resync
    /// asks again, so the end of that resync cannot clear it.
    resync_wanted: AtomicU64,
    resync_done: AtomicU64,
    pub(crate) resync: Notify,
    pub(crate) counters: Counters,
    pub(crate) invalidations: broadcast::Sender<Invalidation>,
    pub(crate) paused: watch::Sender<bool>,
    /// Forwarded requests waiting for their answer, by (random) request id.
    pub(crate) pending: Mutex<HashMap<u128, Pending>>,
    /// The epoch the directory held when this node found itself fenced.
    pub(crate) fenced_by_epoch: AtomicU64,
}

impl Shared {
    /// The node's shared state, and the receiver of its local ends (for [`run_local_ends`]).
    pub(crate) fn new(
        config: ClusterConfig,
        keyring: Keyring,
        directory: Directory,
        engine: EngineHandle,
        stamp: NodeStamp,
    ) -> (Self, mpsc::UnboundedReceiver<(SessionId, EndReason)>) {
        let (ends, ends_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            serving: Arc::new(Semaphore::new(config.max_served_requests)),
            keyring,
            peers: Mutex::default(),
            ends,
            config,
            directory,
            engine,
            stamp,
            owned: Mutex::default(),
            routes: Mutex::default(),
            leases: Mutex::default(),
            seen: Mutex::default(),
            ended_owners: Mutex::default(),
            health: AtomicU8::new(0),
            resync_wanted: AtomicU64::new(0),
            resync_done: AtomicU64::new(0),
            resync: Notify::new(),
            counters: Counters::default(),
            invalidations: broadcast::channel(4096).0,
            paused: watch::channel(false).0,
            pending: Mutex::default(),
            fenced_by_epoch: AtomicU64::new(0),
        };
        (shared, ends_rx)
    }

    /// Asks for a resync (Redis failed, or what was published meanwhile is lost).
    pub(crate) fn request_resync(&self) -> u64 {
        self.resync_wanted.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether a resync was asked for and not yet completed.
    pub(crate) fn resync_pending(&self) -> bool {
        self.resync_wanted.load(Ordering::Acquire) != self.resync_done.load(Ordering::Acquire)
    }

    /// The resync request a resync starting now covers.
    pub(crate) fn resync_generation(&self) -> u64 {
        self.resync_wanted.load(Ordering::Acquire)
    }

    /// A resync that started at `generation` completed; healthy again unless
    /// something failed (and asked for another) meanwhile.
    pub(crate) fn resynced(&self, generation: u64) -> bool {
        self.resync_done.fetch_max(generation, Ordering::AcqRel);
        match self.resync_wanted.load(Ordering::Acquire) == generation {
            true => {
                self.healthy();
                true
            }
            false => false,
        }
    }

    /// This node as it signs its messages.
    pub(crate) fn sender(&self) -> Sender {
        Sender {
            node: self.stamp.node.clone(),
            epoch: self.stamp.epoch,
            incarnation: self.stamp.incarnation,
        }
    }

    /// Counts and logs a refused message (the first of each kind, then every 1024th).
    pub(crate) fn rejected(&self, channel: &str, why: Rejection, from: Option<&str>) {
        let at = Rejection::ALL.iter().position(|r| *r == why).unwrap_or(0);
        let n = self.counters.rejected[at].fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1024) {
            tracing::warn!(
                target: "sessionbus::cluster",
                event = "cluster.message_rejected",
                node = %self.node(),
                channel,
                reason = why.as_str(),
                from = from.unwrap_or("unknown"),
                count = n + 1,
                "refused a message from Redis"
            );
        }
    }

    /// Whether `sender` is its node's current incarnation in the directory.
    /// Read from Redis when unknown, changed, or older than one heartbeat
    /// interval, so a fenced node's messages are refused within that interval.
    pub(crate) async fn check_sender(&self, sender: &Sender) -> Result<(), Rejection> {
        if sender.node == self.node() {
            return match (sender.epoch, sender.incarnation)
                == (self.stamp.epoch, self.stamp.incarnation)
            {
                true => Ok(()),
                false => Err(Rejection::StaleEpoch),
            };
        }
        let fresh = self.config.heartbeat_interval;
        let claimed = Some((sender.epoch, sender.incarnation));
        let cached = self
            .peers
            .lock()
            .unwrap()
            .get(&sender.node)
            .and_then(|p| (p.read_at.elapsed() < fresh).then_some(p.token));
        let current = match cached {
            Some(token) if token == claimed => token,
            _ => {
                let token = self
                    .directory
                    .node_incarnation(&sender.node)
                    .await
                    .map_err(|_| Rejection::StaleEpoch)?;
                let mut peers = self.peers.lock().unwrap();
                // Bounded: only nodes that signed a valid frame get here.
                if peers.len() > 4096 {
                    peers.clear();
                }
                peers.insert(
                    sender.node.clone(),
                    PeerEpoch {
                        token,
                        read_at: Instant::now(),
                    },
                );
                token
            }
        };
        match current == claimed {
            true => Ok(()),
            false => Err(Rejection::StaleEpoch),
        }
    }

    pub(crate) fn node(&self) -> &str {
        &self.stamp.node
    }

    pub(crate) fn health(&self) -> ClusterHealth {
        HEALTH[self.health.load(Ordering::Acquire) as usize]
    }

    fn index(health: ClusterHealth) -> u8 {
        HEALTH.iter().position(|h| *h == health).unwrap_or(0) as u8
    }

    /// Moves from `from` to `to` only if the node is still in `from`: a
    /// degraded/healthy flip racing with a fence can never revive the node.
    fn swap_health(&self, from: ClusterHealth, to: ClusterHealth) -> bool {
        self.health
            .compare_exchange(
                Self::index(from),
                Self::index(to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Whether the node may still write as owner.
    pub(crate) fn is_active(&self) -> bool {
        matches!(
            self.health(),
            ClusterHealth::Healthy | ClusterHealth::Degraded
        )
    }

    /// Redis failed: serve locally, queue updates, resync when it is back.
    pub(crate) fn degraded(&self, what: &str, error: &dyn std::fmt::Display) {
        self.request_resync();
        if self.swap_health(ClusterHealth::Healthy, ClusterHealth::Degraded) {
            self.counters
                .degraded_episodes
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "sessionbus::cluster",
                event = "cluster.degraded",
                node = %self.node(),
                during = what,
                error = %error,
                "Redis unreachable: serving local sessions, queueing directory updates"
            );
        }
    }

    /// A resync completed: back to healthy (unless fenced or stopped meanwhile).
    fn healthy(&self) {
        if self.swap_health(ClusterHealth::Degraded, ClusterHealth::Healthy) {
            tracing::info!(
                target: "sessionbus::cluster",
                event = "cluster.recovered",
                node = %self.node(),
                "Redis reachable again; directory resynced"
            );
        }
    }

    pub(crate) fn stopped(&self) {
        self.health
            .store(Self::index(ClusterHealth::Stopped), Ordering::Release);
    }

    /// The directory refused this node's epoch: it was declared lost while it
    /// was away. It ends every local session with `node_lost` (their memory is
    /// released as for any end) and never writes as owner again.
    pub(crate) async fn fenced(&self, current: u64) {
        self.fenced_by_epoch.store(current, Ordering::Release);
        let was_active = self.swap_health(ClusterHealth::Healthy, ClusterHealth::Fenced)
            || self.swap_health(ClusterHealth::Degraded, ClusterHealth::Fenced);
        if !was_active {
            return;
        }
        tracing::error!(
            target: "sessionbus::cluster",
            event = "cluster.fenced",
            node = %self.node(),
            epoch = self.stamp.epoch,
            current,
            "this node was declared lost and fenced; ending its sessions with node_lost"
        );
        self.owned.lock().unwrap().clear();
        self.routes.lock().unwrap().clear();
        self.leases.lock().unwrap().clear();
        // A stopped engine has ended every session already.
        for id in self.engine.live_sessions(None).await.unwrap_or_default() {
            self.end_soon(id, EndReason::NodeLost);
        }
    }

    /// Ends a local session soon, off the calling task (a writer or listener
    /// must never wait for a drain): at most `CONCURRENT_LOCAL_ENDS` at once.
    pub(crate) fn end_soon(&self, id: SessionId, reason: EndReason) {
        if self.ends.send((id, reason)).is_err() {
            tracing::debug!(target: "sessionbus::cluster", %id, "node stopped; the runtime's shutdown ends it");
        }
    }

    /// The error for a write attempted after the node was fenced or stopped.
    pub(crate) fn refusal(&self) -> super::error::ClusterError {
        match self.health() {
            ClusterHealth::Stopped => super::error::ClusterError::Stopped,
            _ => super::error::ClusterError::Fenced {
                node: self.node().to_string(),
                epoch: self.stamp.epoch,
                current: self.fenced_by_epoch.load(Ordering::Acquire),
            },
        }
    }

    /// Ends a local session because the directory says it has ended elsewhere.
    async fn end_locally(&self, id: SessionId, reason: EndReason) {
        let caller = Caller::Operator("sessionbus-cluster".into());
        if let Err(error) = self.engine.end(id, caller, reason).await {
            tracing::debug!(target: "sessionbus::cluster", %id, %error, "local end refused");
        }
    }

    /// The caller a verified request names by `pseudonym`: the session's
    /// owner if the pseudonym is theirs (under the frame's key), else a user
    /// that owns nothing here (the engine refuses it as for any stranger).
    pub(crate) fn user_for(&self, id: SessionId, key_id: &str, pseudonym: &str) -> Caller {
        let owner = self
            .owned
            .lock()
            .unwrap()
            .get(&id)
            .map(|o| o.owner.clone())
            .or_else(|| self.ended_owners.lock().unwrap().0.get(&id).cloned());
        if let Some(owner) = owner.filter(|o| !o.is_empty()) {
            let owner = Owner::new(owner);
            if self.keyring.names_owner(key_id, pseudonym, &owner) {
                return Caller::User(owner);
            }
        }
        Caller::User(Owner::new(pseudonym))
    }

    /// The directory's name for an owner: its pseudonym under the signing key.
    pub(crate) fn owner_pseudonym(&self, owner: &str) -> String {
        self.keyring.owner_pseudonym(&Owner::new(owner))
    }

    /// The signed invalidation of this node's own end of `id` at `version`.
    pub(crate) fn signed_end(&self, id: SessionId, version: u64, reason: EndReason) -> String {
        let invalidation = Invalidation {
            id,
            version,
            reason,
            node: self.node().to_string(),
            by: self.node().to_string(),
        };
        let channel = self.directory.keys().invalidations();
        self.keyring.seal(&self.sender(), &channel, &invalidation)
    }

    /// Stops owning `id` (it ended here), remembering its owner for late calls.
    pub(crate) fn disown(&self, id: SessionId) -> Option<Owned> {
        let owned = self.owned.lock().unwrap().remove(&id)?;
        let mut ended = self.ended_owners.lock().unwrap();
        let (owners, order) = &mut *ended;
        if owners.insert(id, owned.owner.clone()).is_none() {
            order.push_back(id);
            while order.len() > self.config.seen_ended {
                if let Some(old) = order.pop_front() {
                    owners.remove(&old);
                }
            }
        }
        Some(owned)
    }

    /// Drops every cached route to `node` (it was declared lost, or nobody listens for it).
    pub(crate) fn forget_routes_to(&self, node: &str) {
        self.routes
            .lock()
            .unwrap()
            .retain(|_, route| route.node != node);
    }

    /// Why `id` ended, if this node has seen its end.
    pub(crate) fn seen_reason(&self, id: SessionId) -> Option<EndReason> {
        self.seen.lock().unwrap().reason(id)
    }

    /// Waits while the node is paused (fault injection; otherwise returns at once).
    pub(crate) async fn unpaused(&self) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
    }

    pub(crate) fn stats(&self) -> ClusterStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rejected = Rejection::ALL
            .iter()
            .zip(&c.rejected)
            .map(|(why, n)| (*why, load(n)))
            .filter(|(_, n)| *n > 0)
            .collect();
        ClusterStats {
            node: self.node().to_string(),
            epoch: self.stamp.epoch,
            health: self.health(),
            local_sessions: self.owned.lock().unwrap().len(),
            routes_cached: self.routes.lock().unwrap().len(),
            queued_updates: load(&c.queued) as usize,
            updates_dropped: load(&c.updates_dropped),
            write_conflicts: load(&c.write_conflicts),
            invalidations_applied: load(&c.invalidations_applied),
            invalidations_ignored: load(&c.invalidations_ignored),
            takeovers: load(&c.takeovers),
            resyncs: load(&c.resyncs),
            degraded_episodes: load(&c.degraded_episodes),
            forwarded: load(&c.forwarded),
            served: load(&c.served),
            refused_busy: load(&c.refused_busy),
            rejected,
            invalidations_unconfirmed: load(&c.invalidations_unconfirmed),
            pending_forwards: self.pending.lock().unwrap().len(),
            nonces_remembered: self.keyring.nonces_held(),
        }
    }
}

/// Runs the node's local ends, `CONCURRENT_LOCAL_ENDS` at a time.
pub(crate) async fn run_local_ends(
    shared: Arc<Shared>,
    ends: mpsc::UnboundedReceiver<(SessionId, EndReason)>,
) {
    use futures::StreamExt;
    tokio_stream_from(ends)
        .for_each_concurrent(CONCURRENT_LOCAL_ENDS, |(id, reason)| {
            let shared = shared.clone();
            async move { shared.end_locally(id, reason).await }
        })
        .await;
}

fn tokio_stream_from<T>(mut rx: mpsc::UnboundedReceiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
