//! `ClusterNode`: one process's membership in the cluster, and the API that
//! answers for any session in it, local or not.

use std::sync::Arc;

use sessionbus_actors::{
    Caller, ContextError, Delivery, EndReason, EngineHandle, Event, EventKinds, LeaseGrant,
    LeaseId, OpenOptions, Owner, ReleaseReceipt, SessionError, SessionHandle, SessionId, State,
    Turn, TurnAck,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::config::ClusterConfig;
use super::directory::{Directory, EntryState, NodeStamp};
use super::error::ClusterError;
use super::routing;
use super::signing::Keyring;
use super::state::{ClusterHealth, ClusterStats, Route, Shared, run_local_ends};
use super::sync::{Update, Writer};
use super::wire::{Done, Invalidation, Op, WireTurn};
use super::{invalidation, liveness};

/// A node of the cluster: this process's engine, registered in the Redis
/// directory, heartbeating, hearing invalidations, and answering requests for
/// its sessions from other nodes.
///
/// Start it inside a tokio runtime (its tasks are spawned there), after the
/// [`Runtime`](crate::Runtime) and before opening sessions. Stop it with
/// [`leave`](ClusterNode::leave) after `Runtime::shutdown`; a node dropped
/// without `leave` stops beating and is declared lost by the others.
pub struct ClusterNode {
    shared: Arc<Shared>,
    updates: mpsc::Sender<Update>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node", &self.shared.stamp)
            .field("health", &self.shared.health())
            .finish()
    }
}

/// Where a session's requests go.
enum Location {
    Local,
    Remote(String),
}

impl Op {
    fn event(&self) -> Event {
        match self {
            Op::Close => Event::End(EndReason::Closed),
            Op::Chat(_) => Event::Message,
            _ => Event::Touch,
        }
    }
}

impl ClusterNode {
    /// Validates `config`, connects to Redis, joins with a fresh fencing epoch
    /// and incarnation (sessions a previous run of this node id left behind
    /// are ended with `node_lost`), and starts heartbeating, listening and
    /// mirroring the engine's sessions into the directory.
    ///
    /// Refuses to start on a bad configuration or URL, no cluster key
    /// (`cluster.keys` or `SESSIONBUS_CLUSTER_KEYS`), an unreachable Redis or
    /// bad credentials (`ClusterError::Unreachable`), or a node id another
    /// process is heartbeating under. Once started, losing Redis only degrades the node.
    pub async fn start(engine: &EngineHandle, config: ClusterConfig) -> Result<Self, ClusterError> {
        config.validate()?;
        let keys = config.resolved_keys()?;
        let window = config.replay_window;
        let keyring = Keyring::new(&keys, window).map_err(|reason| {
            ClusterError::Config(super::config::ClusterConfigError {
                field: "cluster.keys",
                reason,
            })
        })?;
        let directory = Directory::connect(&config).await?;
        let joined = directory.join(&config.node_id).await.map_err(|e| match e {
            ClusterError::Redis(source) => ClusterError::Unreachable {
                url: config.redacted_url(),
                source,
            },
            other => other,
        })?;
        let events = engine
            .subscribe_channel(EventKinds::STARTED | EventKinds::ENDED, Delivery::Reliable)
            .await
            .map_err(|_| ClusterError::Stopped)?;
        let stamp = joined.stamp;
        let (shared, local_ends) = Shared::new(config, keyring, directory, engine.clone(), stamp);
        let shared = Arc::new(shared);
        let orphans = joined.orphans.len();
        if let Err(error) = liveness::publish_ends(&shared, shared.node(), &joined.orphans).await {
            shared.degraded("orphan invalidations", &error);
        }
        let epoch = shared.stamp.epoch;
        // Sessions the engine had before the node started: owned from now on
        // (their owner is not known here, so only operators reach them from other nodes).
        for id in engine.live_sessions(None).await.unwrap_or_default() {
            let owned = super::state::Owned {
                version: 1,
                owner: String::new(),
            };
            shared.owned.lock().unwrap().entry(id).or_insert(owned);
        }
        tracing::info!(
            target: "sessionbus::cluster",
            event = "cluster.joined",
            node = %shared.node(),
            epoch,
            orphans_ended = orphans,
            redis = %shared.config.redacted_url(),
            "joined the cluster"
        );
        let (updates, updates_rx) = mpsc::channel(1024);
        let (subscribed_tx, subscribed) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(run_local_ends(shared.clone(), local_ends)),
            tokio::spawn(Writer::new(shared.clone()).run(events, updates_rx)),
            tokio::spawn(liveness::run(shared.clone())),
            tokio::spawn(invalidation::listen(shared.clone(), subscribed_tx)),
        ];
        let node = ClusterNode {
            shared,
            updates,
            tasks,
        };
        // Invalidations published before the subscription would be lost to this node.
        let wait = node.shared.config.forward_timeout;
        let _ = tokio::time::timeout(wait, subscribed).await;
        // The first resync writes the sessions the engine had before the node started.
        node.shared.request_resync();
        node.shared.resync.notify_one();
        Ok(node)
    }

    /// This node's id and fencing epoch.
    pub fn stamp(&self) -> &NodeStamp {
        &self.shared.stamp
    }

    /// The directory, for inspection by tests (`testing` builds only): its
    /// writes belong to this node's single writer, so an application never
    /// holds it.
    #[cfg(feature = "testing")]
    pub fn directory(&self) -> &Directory {
        &self.shared.directory
    }

    /// Healthy, degraded (Redis away), fenced, or stopped.
    pub fn health(&self) -> ClusterHealth {
        self.shared.health()
    }

    /// The node's counters (its metrics).
    pub fn stats(&self) -> ClusterStats {
        self.shared.stats()
    }

    /// Invalidations this node applied: a session ended elsewhere and this
    /// node dropped what it held for it. For the application's own caches.
    pub fn invalidations(&self) -> broadcast::Receiver<Invalidation> {
        self.shared.invalidations.subscribe()
    }

    /// Whether this node holds anything for `id`: ownership, a cached route,
    /// or remote leases it took.
    pub fn holds(&self, id: SessionId) -> bool {
        self.shared.owned.lock().unwrap().contains_key(&id)
            || self.shared.routes.lock().unwrap().contains_key(&id)
            || self.shared.leases.lock().unwrap().contains_key(&id)
    }

    /// Whether this node owns `id` (it runs the session and its directory entry names this node).
    pub fn owns(&self, id: SessionId) -> bool {
        self.shared.owned.lock().unwrap().contains_key(&id)
    }

    /// Opens a session on this node and registers it in the directory before
    /// returning, so every node can route to it at once. With Redis away the
    /// session is served locally and its registration queued.
    pub async fn open(&self, owner: impl Into<Owner>) -> Result<SessionHandle, ClusterError> {
        self.open_with(OpenOptions::new(owner)).await
    }

    /// Opens a session with options; see [`open`](ClusterNode::open).
    pub async fn open_with(&self, options: OpenOptions) -> Result<SessionHandle, ClusterError> {
        self.refuse_if_fenced()?;
        let owner = options.owner.as_str().to_string();
        let handle = self.shared.engine.open_with(options).await?;
        let (done, registered) = oneshot::channel();
        let update = Update::Register {
            id: handle.id(),
            owner,
            version: 1,
            done: Some(done),
        };
        if self.updates.send(update).await.is_ok() {
            match registered.await {
                Ok(Err(e @ ClusterError::Fenced { .. })) => return Err(e),
                Ok(Err(ClusterError::Ended { .. } | ClusterError::NotOwner { .. })) => {
                    return Err(ClusterError::Session(SessionError::Unknown {
                        id: handle.id(),
                    }));
                }
                _ => {}
            }
        }
        Ok(handle)
    }

    fn refuse_if_fenced(&self) -> Result<(), ClusterError> {
        match self.shared.is_active() {
            true => Ok(()),
            false => Err(self.shared.refusal()),
        }
    }

    /// Closes a session wherever it lives; resolves with its release receipt
    /// (for a remote session, rebuilt on this node's clock).
    pub async fn close(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
    ) -> Result<ReleaseReceipt, ClusterError> {
        match self.call(id, caller.into(), Op::Close).await? {
            Done::Receipt(receipt) => Ok(receipt.into_receipt(id)),
            other => Err(unexpected(id, other)),
        }
    }

    /// Sends a chat turn to a session wherever it lives.
    pub async fn chat(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
        turn: Turn,
    ) -> Result<TurnAck, ClusterError> {
        // JSON has no NaN or infinity: refuse them here, as the owner would,
        // rather than send a turn that cannot cross.
        if let Some(source) = not_finite(&turn) {
            return Err(ClusterError::Session(SessionError::Context { id, source }));
        }
        match self
            .call(id, caller.into(), Op::Chat(WireTurn::from(&turn)))
            .await?
        {
            Done::Ack(ack) => Ok(ack.into()),
            other => Err(unexpected(id, other)),
        }
    }

    /// Marks a session active wherever it lives.
    pub async fn touch(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
    ) -> Result<(), ClusterError> {
        self.call(id, caller.into(), Op::Touch).await.map(drop)
    }

    /// Takes a remote lease (heartbeat-kept) on a session wherever it lives.
    pub async fn lease_remote(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
    ) -> Result<LeaseGrant, ClusterError> {
        let caller = caller.into();
        let remote = matches!(
            self.locate(id, &Op::LeaseRemote).await?,
            Location::Remote(_)
        );
        match self.call(id, caller, Op::LeaseRemote).await? {
            Done::Lease {
                id: lease,
                heartbeat_interval_us,
                revoked_after_us,
            } => {
                if remote {
                    self.shared
                        .leases
                        .lock()
                        .unwrap()
                        .entry(id)
                        .or_default()
                        .push(lease);
                }
                Ok(Done::to_grant(
                    lease,
                    heartbeat_interval_us,
                    revoked_after_us,
                ))
            }
            other => Err(unexpected(id, other)),
        }
    }

    /// Heartbeats a remote lease.
    pub async fn heartbeat_lease(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
        lease: LeaseId,
    ) -> Result<(), ClusterError> {
        self.call(id, caller.into(), Op::LeaseHeartbeat(lease.0))
            .await
            .map(drop)
    }

    /// Returns a remote lease.
    pub async fn release_lease(
        &self,
        id: SessionId,
        caller: impl Into<Caller>,
        lease: LeaseId,
    ) -> Result<(), ClusterError> {
        self.call(id, caller.into(), Op::LeaseRelease(lease.0))
            .await?;
        let mut leases = self.shared.leases.lock().unwrap();
        if let Some(held) = leases.get_mut(&id) {
            held.retain(|l| *l != lease.0);
            if held.is_empty() {
                leases.remove(&id);
            }
        }
        Ok(())
    }

    /// The node that owns `id` according to this node's view (its own
    /// sessions, its route cache, then the directory); `None` if unknown.
    pub async fn owner_of(&self, id: SessionId) -> Result<Option<String>, ClusterError> {
        match self.locate(id, &Op::Touch).await {
            Ok(Location::Local) => Ok(Some(self.shared.node().to_string())),
            Ok(Location::Remote(node)) => Ok(Some(node)),
            Err(ClusterError::Session(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn call(&self, id: SessionId, caller: Caller, op: Op) -> Result<Done, ClusterError> {
        match self.locate(id, &op).await? {
            Location::Local => Ok(routing::execute(&self.shared, id, caller, op).await?),
            Location::Remote(node) => {
                let event = op.event();
                match routing::forward(&self.shared, &node, id, &caller, op).await {
                    // Its owner is gone and so is the session: answer as for an ended one.
                    Err(ClusterError::OwnerUnreachable { .. }) if self.ended_in_directory(id) => {
                        Err(gone(id, event, self.shared.seen_reason(id)))
                    }
                    other => other,
                }
            }
        }
    }

    fn ended_in_directory(&self, id: SessionId) -> bool {
        self.shared.seen.lock().unwrap().get(id).is_some()
    }

    async fn locate(&self, id: SessionId, op: &Op) -> Result<Location, ClusterError> {
        if self.shared.owned.lock().unwrap().contains_key(&id) {
            return Ok(Location::Local);
        }
        if let Some(route) = self.shared.routes.lock().unwrap().get(&id) {
            return Ok(Location::Remote(route.node.clone()));
        }
        let Some(entry) = self.shared.directory.entry(id).await? else {
            // Not in the directory: only the local engine can know it (a
            // tombstone, or never opened: it answers "unknown").
            return Ok(Location::Local);
        };
        if entry.node == self.shared.node() {
            return Ok(Location::Local);
        }
        if entry.state == EntryState::Ended {
            let reason = entry.reason.unwrap_or(EndReason::NodeLost);
            self.shared.seen.lock().unwrap().record(
                id,
                entry.version,
                Some(reason),
                self.shared.config.seen_ended,
            );
            if reason == EndReason::NodeLost {
                return Err(gone(id, op.event(), Some(reason)));
            }
            // Its owner keeps the tombstone (and the receipt of a close).
            return Ok(Location::Remote(entry.node));
        }
        // A live entry read now is the truth, whatever invalidation this node
        // heard: every end is written before its invalidation is published, so
        // a heard end would show here. (So a signed but false invalidation
        // cannot make a live session look gone.)
        self.shared.routes.lock().unwrap().insert(
            id,
            Route {
                node: entry.node.clone(),
                version: entry.version,
            },
        );
        Ok(Location::Remote(entry.node))
    }

    /// Waits until every directory update this node has made so far is
    /// written (or queued, if Redis is away).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.updates.send(Update::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }

    /// Leaves the cluster cleanly: writes what is pending, deletes the
    /// heartbeat, stops the node's tasks. Call it after `Runtime::shutdown`
    /// (whose ends it writes to the directory first).
    pub async fn leave(mut self) -> Result<(), ClusterError> {
        self.flush().await;
        let result = match self.shared.health() {
            ClusterHealth::Fenced => Ok(()),
            _ => match self.shared.directory.leave(&self.shared.stamp).await {
                Ok(ended) => {
                    let me = self.shared.node();
                    liveness::publish_ends(&self.shared, me, &ended).await
                }
                Err(error) => Err(error),
            },
        };
        self.stop();
        tracing::info!(
            target: "sessionbus::cluster",
            event = "cluster.left",
            node = %self.shared.node(),
            "left the cluster"
        );
        result
    }

    fn stop(&mut self) {
        self.shared.stopped();
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    /// Freezes every task of the node, as a SIGSTOP would: no heartbeat, no
    /// directory writes, no answers; messages wait in the connection. The
    /// engine keeps running (`testing` builds only).
    #[cfg(feature = "testing")]
    pub fn inject_pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Resumes a paused node; it finds out on its next step whether it was fenced meanwhile.
    #[cfg(feature = "testing")]
    pub fn inject_resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Stops the node's cluster layer abruptly, as a crash would: no goodbye,
    /// no final writes; the others find its heartbeat expired (`testing` builds only).
    #[cfg(feature = "testing")]
    pub fn inject_kill(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.shared.stopped();
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            tracing::warn!(
                target: "sessionbus::cluster",
                event = "cluster.dropped",
                node = %self.shared.node(),
                "ClusterNode dropped without leave(): the others will declare it lost"
            );
            self.stop();
        }
    }
}

fn not_finite(turn: &Turn) -> Option<ContextError> {
    let embedding = turn.signal.embedding.as_deref().unwrap_or(&[]);
    if let Some((index, &value)) = embedding.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Some(ContextError::NotFinite { index, value });
    }
    let confidence = turn.signal.intent.as_ref().map(|i| i.confidence);
    confidence
        .filter(|c| !c.is_finite())
        .map(|value| ContextError::ConfidenceOutOfRange { value })
}

fn gone(id: SessionId, event: Event, reason: Option<EndReason>) -> ClusterError {
    ClusterError::Session(SessionError::NotEstablished {
        id,
        state: State::Closed,
        event,
        reason,
    })
}

fn unexpected(id: SessionId, done: Done) -> ClusterError {
    ClusterError::Remote {
        id,
        node: String::new(),
        message: format!("unexpected answer {done:?}"),
    }
}
