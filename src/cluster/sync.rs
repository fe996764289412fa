//! Keeping the directory in step with the local engine: the node's single
//! directory writer.
//!
//! Ground rules: this task is the only one that writes this node's session
//! entries, so writes for one session happen in order (register before end).
//! It reads the engine's bus (a reliable subscription: no end is missed),
//! queues updates (bounded) while Redis is unreachable, renews the entries of
//! active sessions in coalesced batches, and runs the resync after Redis
//! comes back.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sessionbus_actors::{Caller, EndReason, LifecycleEvent, SessionError, SessionId};
use tokio::sync::{mpsc, oneshot};

use super::directory::{EntryState, Renewal};
use super::error::ClusterError;
use super::state::{Owned, Shared};

/// Entries per renewal script call (one round trip each).
const RENEW_BATCH: usize = 512;

/// Directory writes sent together (pipelined on the one connection).
const WRITE_BATCH: usize = 256;

/// Events taken from the bus before writing, so a burst of ends goes out as batches.
const EVENTS_PER_WAKE: usize = 1024;

/// A directory update, or a request to the writer.
#[derive(Debug)]
pub(crate) enum Update {
    /// A session this node opened. `done` (from `ClusterNode::open`) hears
    /// when the entry is written, or at once if it had to be queued.
    Register {
        id: SessionId,
        owner: String,
        version: u64,
        done: Option<oneshot::Sender<Result<(), ClusterError>>>,
    },
    /// A session this node owned has ended.
    End {
        id: SessionId,
        reason: EndReason,
        version: u64,
    },
    /// Answer once every update received so far is written (or queued because Redis is down).
    Flush(oneshot::Sender<()>),
}

impl Update {
    fn session(&self) -> Option<SessionId> {
        match self {
            Update::Register { id, .. } | Update::End { id, .. } => Some(*id),
            Update::Flush(_) => None,
        }
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    queue: VecDeque<Update>,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Writer {
            shared,
            queue: VecDeque::new(),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<LifecycleEvent>,
        mut updates: mpsc::Receiver<Update>,
    ) {
        let config = &self.shared.config;
        let mut renew = tokio::time::interval(config.renew_interval);
        let mut retry = tokio::time::interval(config.heartbeat_interval);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.shared.unpaused().await;
            if !self.shared.is_active() {
                // Fenced or stopped: nothing may be written any more.
                self.queue.clear();
                self.publish_queue_len();
                tokio::select! {
                    event = events.recv() => if event.is_none() { return },
                    update = updates.recv() => match update {
                        Some(Update::Flush(done)) => { let _ = done.send(()); }
                        Some(Update::Register { done: Some(done), .. }) => {
                            let _ = done.send(Err(self.shared.refusal()));
                        }
                        Some(_) => {}
                        None => return,
                    },
                }
                continue;
            }
            let mut retry_now = false;
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        self.on_event(event);
                        for _ in 1..EVENTS_PER_WAKE {
                            let Ok(event) = events.try_recv() else { break };
                            self.on_event(event);
                        }
                    }
                    None => return,
                },
                update = updates.recv() => match update {
                    Some(Update::Flush(done)) => {
                        while let Ok(event) = events.try_recv() {
                            self.on_event(event);
                        }
                        self.flush().await;
                        let _ = done.send(());
                        continue;
                    }
                    Some(update) => self.push(update),
                    None => return,
                },
                _ = renew.tick() => self.renew_active().await,
                _ = retry.tick() => retry_now = true,
                _ = self.shared.resync.notified() => self.resync().await,
            }
            // While degraded, writes are retried once per heartbeat interval,
            // not on every update (each try may wait for a timeout).
            if retry_now || self.shared.health() == super::state::ClusterHealth::Healthy {
                self.flush().await;
            }
        }
    }

    fn on_event(&mut self, event: LifecycleEvent) {
        match event {
            LifecycleEvent::Started(started) => self.push(Update::Register {
                id: started.id,
                owner: started.owner.as_str().to_string(),
                version: 1,
                done: None,
            }),
            LifecycleEvent::Ended(ended) => {
                if let Some(owned) = self.shared.disown(ended.id) {
                    self.push(Update::End {
                        id: ended.id,
                        reason: ended.reason,
                        version: owned.version,
                    });
                }
            }
            _ => {}
        }
    }

    fn publish_queue_len(&self) {
        let len = self.queue.len() as u64;
        self.shared.counters.queued.store(len, Ordering::Relaxed);
    }

    fn push(&mut self, update: Update) {
        match update {
            Update::Register {
                id,
                owner,
                version,
                done,
            } => {
                let mut owned = self.shared.owned.lock().unwrap();
                if owned.contains_key(&id) {
                    // Registered already (open path and bus both ask).
                    drop(owned);
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                    return;
                }
                owned.insert(
                    id,
                    Owned {
                        version,
                        owner: owner.clone(),
                    },
                );
                drop(owned);
                self.enqueue(Update::Register {
                    id,
                    owner,
                    version,
                    done,
                });
            }
            Update::End {
                id,
                reason,
                version,
            } => {
                // Registered and ended while Redis was away: no one can know of it.
                let unwritten = self
                    .queue
                    .iter()
                    .position(|u| matches!(u, Update::Register { id: r, .. } if *r == id));
                if let Some(at) = unwritten {
                    self.queue.remove(at);
                    self.publish_queue_len();
                    return;
                }
                self.enqueue(Update::End {
                    id,
                    reason,
                    version,
                });
            }
            Update::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    fn enqueue(&mut self, update: Update) {
        if self.queue.len() >= self.shared.config.queue_bound {
            let dropped = self
                .shared
                .counters
                .updates_dropped
                .fetch_add(1, Ordering::Relaxed);
            self.shared.request_resync();
            if dropped.is_multiple_of(1024) {
                tracing::warn!(
                    target: "sessionbus::cluster",
                    event = "cluster.queue_full",
                    node = %self.shared.node(),
                    bound = self.shared.config.queue_bound,
                    "directory update queue full; dropping updates until Redis is back (the resync repairs them)"
                );
            }
            if let Update::Register {
                done: Some(done), ..
            } = update
            {
                let _ = done.send(Ok(()));
            }
            return;
        }
        self.queue.push_back(update);
        self.publish_queue_len();
        if self.shared.health() != super::state::ClusterHealth::Healthy {
            self.release_waiting_opens();
        }
    }

    /// Opens waiting for their registration go on while Redis is away: the
    /// session is served locally and its registration stays queued.
    fn release_waiting_opens(&mut self) {
        for update in self.queue.iter_mut() {
            if let Update::Register { done, .. } = update {
                if let Some(done) = done.take() {
                    let _ = done.send(Ok(()));
                }
            }
        }
    }

    /// Writes queued updates until one fails for lack of Redis. Consecutive
    /// updates of distinct sessions go out together (the connection pipelines
    /// them); one session's updates stay in order, since a batch stops at the
    /// first id it already holds.
    async fn flush(&mut self) {
        while !self.queue.is_empty() {
            if !self.shared.is_active() {
                self.queue.clear();
                break;
            }
            let mut ids = HashSet::new();
            let n = self
                .queue
                .iter()
                .take(WRITE_BATCH)
                .take_while(|u| u.session().is_some_and(|id| ids.insert(id)))
                .count()
                .max(1);
            let batch: Vec<Update> = self.queue.drain(..n).collect();
            let results = futures::future::join_all(batch.iter().map(|u| self.write(u))).await;
            let mut unwritten = Vec::new();
            let mut unreachable = None;
            let mut fenced = None;
            for (update, result) in batch.into_iter().zip(results) {
                match result {
                    Err(ClusterError::Redis(error)) => {
                        unreachable = Some(error);
                        unwritten.push(update);
                    }
                    Err(ClusterError::Fenced { current, .. }) => fenced = Some(current),
                    result => self.settle(Some(update), result).await,
                }
            }
            if let Some(current) = fenced {
                self.queue.clear();
                self.shared.fenced(current).await;
                break;
            }
            if let Some(error) = unreachable {
                for update in unwritten.into_iter().rev() {
                    self.queue.push_front(update);
                }
                self.shared.degraded("directory write", &error);
                self.release_waiting_opens();
                break;
            }
        }
        self.publish_queue_len();
    }

    async fn write(&self, update: &Update) -> Result<(), ClusterError> {
        let directory = &self.shared.directory;
        let stamp = &self.shared.stamp;
        match update {
            Update::Register {
                id, owner, version, ..
            } => directory
                .register(stamp, *id, &self.shared.owner_pseudonym(owner), *version)
                .await
                .map(drop),
            Update::End {
                id,
                reason,
                version,
            } => {
                let frame = self.shared.signed_end(*id, *version + 1, *reason);
                directory
                    .end(stamp, *id, *version, *reason, &frame)
                    .await
                    .map(drop)
            }
            Update::Flush(_) => Ok(()),
        }
    }

    /// What to do after a write that Redis answered.
    async fn settle(&self, update: Option<Update>, result: Result<(), ClusterError>) {
        let Some(update) = update else { return };
        if let Err(error) = &result {
            self.shared
                .counters
                .write_conflicts
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "sessionbus::cluster",
                event = "cluster.write_refused",
                node = %self.shared.node(),
                %error,
                "directory refused a write"
            );
        }
        if let Update::Register { id, done, .. } = update {
            let not_ours = match &result {
                Err(ClusterError::Ended { reason, .. }) => Some(*reason),
                Err(ClusterError::NotOwner { .. }) => Some(EndReason::NodeLost),
                _ => None,
            };
            if let Some(reason) = not_ours {
                // The directory says this id is not ours to keep.
                self.shared.disown(id);
                self.shared.end_soon(id, reason);
            }
            if let Some(done) = done {
                let _ = done.send(result);
            }
        }
    }

    /// Coalesced renewal: one batch per interval for the sessions active in it.
    async fn renew_active(&mut self) {
        let window = self.shared.config.renew_interval * 2;
        let Ok(active) = self.shared.engine.live_sessions(Some(window)).await else {
            return; // the engine stopped: nothing is live to renew
        };
        self.renew(active).await;
    }

    async fn renew(&mut self, ids: Vec<SessionId>) {
        let batch: Vec<(SessionId, u64)> = {
            let owned = self.shared.owned.lock().unwrap();
            ids.iter()
                .filter_map(|id| owned.get(id).map(|o| (*id, o.version)))
                .collect()
        };
        for chunk in batch.chunks(RENEW_BATCH) {
            let stamp = &self.shared.stamp;
            match self.shared.directory.renew(stamp, chunk).await {
                Ok(results) => {
                    for ((id, version), result) in chunk.iter().zip(results) {
                        match result {
                            Renewal::Renewed => {}
                            // Lapsed or lost with Redis's data: write it again, same version.
                            Renewal::Missing => self.reregister(*id, *version).await,
                            Renewal::Lost => {
                                self.shared.disown(*id);
                                self.shared.end_soon(*id, EndReason::NodeLost);
                            }
                            Renewal::Stale { current } => {
                                self.shared
                                    .counters
                                    .write_conflicts
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    target: "sessionbus::cluster",
                                    event = "cluster.renew_stale",
                                    %id, version, current,
                                    "directory entry changed under its owner"
                                );
                            }
                        }
                    }
                }
                Err(ClusterError::Redis(error)) => {
                    self.shared.degraded("renewal", &error);
                    return;
                }
                Err(ClusterError::Fenced { current, .. }) => {
                    self.shared.fenced(current).await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    async fn reregister(&mut self, id: SessionId, version: u64) {
        let owner = match self.shared.owned.lock().unwrap().get(&id) {
            Some(owned) => owned.owner.clone(),
            None => return, // ended meanwhile: its end is on the bus
        };
        let result = self
            .shared
            .directory
            .register(
                &self.shared.stamp,
                id,
                &self.shared.owner_pseudonym(&owner),
                version,
            )
            .await;
        if let Err(ClusterError::Redis(error)) = &result {
            self.shared.degraded("re-registration", error);
        }
    }

    /// After Redis came back: write what was queued, then make the directory
    /// agree with the engine for every session this node owns.
    async fn resync(&mut self) {
        if !self.shared.resync_pending() {
            return;
        }
        let generation = self.shared.resync_generation();
        self.flush().await;
        if !self.queue.is_empty() || !self.shared.is_active() {
            return; // still unreachable (or fenced); the next notification retries
        }
        let Ok(live) = self.shared.engine.live_sessions(None).await else {
            return; // the engine stopped: its sessions' ends are being published
        };
        let live_set: HashSet<SessionId> = live.iter().copied().collect();
        self.shared
            .owned
            .lock()
            .unwrap()
            .retain(|id, _| live_set.contains(id));
        self.renew(live).await;
        if let Err(error) = self.end_forgotten(&live_set).await {
            if let ClusterError::Redis(error) = &error {
                self.shared.degraded("resync", error);
            }
            return;
        }
        self.shared.routes.lock().unwrap().clear();
        if self.shared.is_active() && self.queue.is_empty() && self.shared.resynced(generation) {
            self.shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                target: "sessionbus::cluster",
                event = "cluster.resynced",
                node = %self.shared.node(),
                sessions = live_set.len(),
                "directory resynced with the local engine"
            );
        }
    }

    /// Entries the directory lists as live on this node whose session has
    /// ended here (their end update was dropped): end them now, with the
    /// reason the engine remembers.
    async fn end_forgotten(&self, live: &HashSet<SessionId>) -> Result<(), ClusterError> {
        let directory = &self.shared.directory;
        let stamp = &self.shared.stamp;
        for id in directory.node_sessions(stamp.node.as_str()).await? {
            if live.contains(&id) {
                continue;
            }
            let Some(entry) = directory.entry(id).await? else {
                continue;
            };
            if entry.state != EntryState::Live || entry.node != stamp.node {
                continue;
            }
            let reason = match self.shared.engine.attach(id, operator()).await {
                Err(SessionError::NotEstablished {
                    reason: Some(reason),
                    ..
                }) => reason,
                _ => EndReason::NodeLost,
            };
            let frame = self.shared.signed_end(id, entry.version + 1, reason);
            match directory
                .end(stamp, id, entry.version, reason, &frame)
                .await
            {
                Ok(_) | Err(ClusterError::StaleVersion { .. } | ClusterError::Ended { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn operator() -> Caller {
    Caller::Operator("sessionbus-cluster".into())
}
