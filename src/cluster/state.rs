//! What one node knows, shared by its tasks: the sessions it owns, the
//! routes it has cached, the ended ids it has seen, its health and counters.
//!
//! Ground rules: every lock here is a `std::sync::Mutex` held for a map
//! operation, never across an `.await`. Redis I/O happens in the node's tasks
//! (tokio), never on the engine's actor threads.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use sessionbus_actors::{Caller, EndReason, EngineHandle, SessionId};
use tokio::sync::{Notify, broadcast, oneshot, watch};

use super::config::ClusterConfig;
use super::directory::{Directory, NodeStamp};
use super::wire::{Invalidation, Reply};

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

pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) directory: Directory,
    pub(crate) engine: EngineHandle,
    pub(crate) stamp: NodeStamp,
    pub(crate) owned: Mutex<HashMap<SessionId, Owned>>,
    pub(crate) routes: Mutex<HashMap<SessionId, Route>>,
    /// Remote leases this node took (forwarded) on other nodes' sessions.
    pub(crate) leases: Mutex<HashMap<SessionId, Vec<u64>>>,
    pub(crate) seen: Mutex<Seen>,
    health: AtomicU8,
    /// Set when Redis failed; cleared by a completed resync.
    pub(crate) resync_pending: AtomicBool,
    pub(crate) resync: Notify,
    pub(crate) counters: Counters,
    pub(crate) invalidations: broadcast::Sender<Invalidation>,
    pub(crate) paused: watch::Sender<bool>,
    /// Forwarded requests waiting for their answer, by request id.
    pub(crate) pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    pub(crate) next_request: AtomicU64,
    /// The epoch the directory held when this node found itself fenced.
    pub(crate) fenced_by_epoch: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        config: ClusterConfig,
        directory: Directory,
        engine: EngineHandle,
        stamp: NodeStamp,
    ) -> Self {
        Shared {
            config,
            directory,
            engine,
            stamp,
            owned: Mutex::default(),
            routes: Mutex::default(),
            leases: Mutex::default(),
            seen: Mutex::default(),
            health: AtomicU8::new(0),
            resync_pending: AtomicBool::new(false),
            resync: Notify::new(),
            counters: Counters::default(),
            invalidations: broadcast::channel(4096).0,
            paused: watch::channel(false).0,
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            fenced_by_epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn node(&self) -> &str {
        &self.stamp.node
    }

    pub(crate) fn health(&self) -> ClusterHealth {
        HEALTH[self.health.load(Ordering::Acquire) as usize]
    }

    fn set_health(&self, health: ClusterHealth) {
        let index = HEALTH.iter().position(|h| *h == health).unwrap_or(0);
        self.health.store(index as u8, Ordering::Release);
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
        self.resync_pending.store(true, Ordering::Release);
        if self.health() == ClusterHealth::Healthy {
            self.set_health(ClusterHealth::Degraded);
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
    pub(crate) fn healthy(&self) {
        if self.health() == ClusterHealth::Degraded {
            self.set_health(ClusterHealth::Healthy);
            tracing::info!(
                target: "sessionbus::cluster",
                event = "cluster.recovered",
                node = %self.node(),
                "Redis reachable again; directory resynced"
            );
        }
    }

    pub(crate) fn stopped(&self) {
        self.set_health(ClusterHealth::Stopped);
    }

    /// The directory refused this node's epoch: it was declared lost while it
    /// was away. It ends every local session with `node_lost` (their memory is
    /// released as for any end) and never writes as owner again.
    pub(crate) async fn fenced(&self, current: u64) {
        if matches!(
            self.health(),
            ClusterHealth::Fenced | ClusterHealth::Stopped
        ) {
            return;
        }
        self.fenced_by_epoch.store(current, Ordering::Release);
        self.set_health(ClusterHealth::Fenced);
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
        let live = self.engine.live_sessions(None).await;
        let ends = live
            .into_iter()
            .map(|id| self.end_locally(id, EndReason::NodeLost));
        futures::future::join_all(ends).await;
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
    pub(crate) async fn end_locally(&self, id: SessionId, reason: EndReason) {
        let caller = Caller::Operator("sessionbus-cluster".into());
        if let Err(error) = self.engine.end(id, caller, reason).await {
            tracing::debug!(target: "sessionbus::cluster", %id, %error, "local end refused");
        }
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
        }
    }
}
