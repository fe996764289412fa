//! The sessions this server opened, as far as admitting new ones needs:
//! how many each owner has live, which still wait for their WebSocket
//! (parked handles), and who to tell when one ends.
//!
//! Ground rules:
//! - An open first *reserves* its place (`reserve`), under both caps, before
//!   it asks the runtime; a reservation dropped without a session gives the
//!   place back. So concurrent opens cannot overshoot a cap.
//! - An entry leaves the table when its end is known: from the runtime's
//!   reliable end events (`follow_ends`), and, whenever a cap would refuse,
//!   from the registry's own list of live sessions (`reconcile`), which no
//!   lost or late event can contradict.
//! - A parked handle nobody attaches to within `attach_timeout` is dropped
//!   (the session ends as `disconnected`).
//! - Handles are dropped outside the table's lock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessionbus::{
    Delivery, EngineHandle, EventKinds, LifecycleEvent, Owner, SessionHandle, SessionId,
};
use tokio::sync::watch;

use super::error::ApiError;

/// The caps (`Settings` holds their values).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Live sessions one owner may have.
    pub per_owner: usize,
    /// Sessions opened and not yet attached to a WebSocket, all owners together.
    pub unattached: usize,
    /// How long an opened session waits for its WebSocket.
    pub attach_timeout: Duration,
}

/// Why a session's socket is told it ended: the end reason, as text.
pub type Ended = watch::Receiver<Option<String>>;

struct Entry {
    owner: Owner,
    parked: Option<SessionHandle>,
    ended: watch::Sender<Option<String>>,
    /// Order of insertion: `reconcile` only judges entries older than its question.
    seq: u64,
}

#[derive(Default)]
struct Table {
    entries: HashMap<SessionId, Entry>,
    per_owner: HashMap<Owner, usize>,
    unattached: usize,
    seq: u64,
}

impl Table {
    fn fits(&self, owner: &Owner, caps: &Caps) -> Result<(), ApiError> {
        if self.per_owner.get(owner).copied().unwrap_or(0) >= caps.per_owner {
            return Err(ApiError::TooManySessions {
                owner_cap: caps.per_owner,
            });
        }
        if self.unattached >= caps.unattached {
            return Err(ApiError::TooManyUnattached {
                cap: caps.unattached,
            });
        }
        Ok(())
    }

    fn unreserve(&mut self, owner: &Owner) {
        if let Some(n) = self.per_owner.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.per_owner.remove(owner);
            }
        }
    }

    /// Forgets an ended session; answers its parked handle, to drop outside the lock.
    fn remove(&mut self, id: SessionId, reason: &str) -> Option<SessionHandle> {
        let entry = self.entries.remove(&id)?;
        self.unreserve(&entry.owner);
        if entry.parked.is_some() {
            self.unattached -= 1;
        }
        entry.ended.send_replace(Some(reason.to_string()));
        entry.parked
    }
}

/// The table.
pub struct Sessions {
    table: Mutex<Table>,
    engine: EngineHandle,
    caps: Caps,
}

/// A place held for a session being opened.
pub struct Reservation {
    sessions: Arc<Sessions>,
    owner: Option<Owner>,
}

impl Sessions {
    pub(super) fn new(engine: EngineHandle, caps: Caps) -> Arc<Self> {
        Arc::new(Sessions {
            table: Mutex::new(Table::default()),
            engine,
            caps,
        })
    }

    /// Holds a place for a new session of `owner`, under both caps. When a
    /// cap is reached, the table is first checked against the registry.
    pub async fn reserve(self: &Arc<Self>, owner: &Owner) -> Result<Reservation, ApiError> {
        if self.table.lock().unwrap().fits(owner, &self.caps).is_err() {
            self.reconcile().await;
        }
        let mut table = self.table.lock().unwrap();
        table.fits(owner, &self.caps)?;
        // The place counts as unattached from now: the session will be parked.
        *table.per_owner.entry(owner.clone()).or_default() += 1;
        table.unattached += 1;
        Ok(Reservation {
            sessions: self.clone(),
            owner: Some(owner.clone()),
        })
    }

    /// The parked handle of `id`, if `owner` owns it; someone else's stays parked.
    pub fn take_parked(&self, id: SessionId, owner: &Owner) -> Option<SessionHandle> {
        let mut table = self.table.lock().unwrap();
        let entry = table.entries.get_mut(&id)?;
        if &entry.owner != owner {
            return None;
        }
        let handle = entry.parked.take()?;
        table.unattached -= 1;
        Some(handle)
    }

    /// Whether `owner` opened `id` here and it has not ended, as far as known.
    pub fn owns(&self, id: SessionId, owner: &Owner) -> bool {
        let table = self.table.lock().unwrap();
        table.entries.get(&id).is_some_and(|e| &e.owner == owner)
    }

    /// Tells when `id` ends (`None`: not a session of this table any more).
    pub fn ended(&self, id: SessionId) -> Option<Ended> {
        let table = self.table.lock().unwrap();
        table.entries.get(&id).map(|e| e.ended.subscribe())
    }

    /// `id` ended (the registry answered so: a close's receipt, an end event).
    pub fn forget(&self, id: SessionId, reason: &str) {
        let parked = self.table.lock().unwrap().remove(id, reason);
        drop(parked);
    }

    /// Drops every entry whose session the registry no longer lists as live.
    pub async fn reconcile(&self) {
        let asked_at = self.table.lock().unwrap().seq;
        let live: HashSet<SessionId> = match self.engine.live_sessions(None).await {
            Ok(live) => live.into_iter().collect(),
            Err(_) => return, // the runtime stopped; shutdown ends what is left
        };
        let mut dropped = Vec::new();
        {
            let mut table = self.table.lock().unwrap();
            let gone: Vec<SessionId> = table
                .entries
                .iter()
                .filter(|(id, e)| e.seq <= asked_at && !live.contains(id))
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                dropped.extend(table.remove(id, "ended"));
            }
        }
        if !dropped.is_empty() {
            tracing::info!(
                target: "chat_server",
                handles = dropped.len(),
                "parked handles of ended sessions dropped on the registry's answer"
            );
        }
    }

    /// Parked sessions and live sessions known, for `/status`.
    pub fn counts(&self) -> (usize, usize) {
        let table = self.table.lock().unwrap();
        (table.unattached, table.entries.len())
    }

    /// Drops every parked handle (at shutdown, after the runtime ended them).
    pub fn clear(&self) {
        let parked: Vec<_> = {
            let mut table = self.table.lock().unwrap();
            let ids: Vec<_> = table.entries.keys().copied().collect();
            ids.into_iter()
                .filter_map(|id| table.remove(id, "shutdown"))
                .collect()
        };
        drop(parked);
    }

    /// Follows the runtime's end events (reliable delivery: none is dropped).
    pub async fn follow_ends(self: &Arc<Self>) {
        let Ok(mut ends) = self
            .engine
            .subscribe_channel(EventKinds::ENDED, Delivery::Reliable)
            .await
        else {
            return;
        };
        let sessions = self.clone();
        actix_web::rt::spawn(async move {
            while let Some(event) = ends.recv().await {
                if let LifecycleEvent::Ended(end) = event {
                    sessions.forget(end.id, &end.reason.to_string());
                }
            }
        });
    }

    /// After `attach_timeout`, drops `id`'s handle if it is still parked.
    fn expire_parked_later(self: &Arc<Self>, id: SessionId) {
        let sessions = self.clone();
        actix_web::rt::spawn(async move {
            tokio::time::sleep(sessions.caps.attach_timeout).await;
            let handle = {
                let mut table = sessions.table.lock().unwrap();
                let handle = table.entries.get_mut(&id).and_then(|e| e.parked.take());
                if handle.is_some() {
                    table.unattached -= 1;
                }
                handle
            };
            if handle.is_some() {
                tracing::info!(
                    target: "chat_server",
                    "session.unattached: nobody attached within the attach timeout; ending it"
                );
            }
            drop(handle); // the last handle: the session ends as disconnected
        });
    }
}

impl Reservation {
    /// The session was opened: park its handle until its WebSocket takes it.
    pub fn park(mut self, handle: SessionHandle) {
        let owner = self.owner.take().expect("a reservation parks once");
        let id = handle.id();
        {
            let mut table = self.sessions.table.lock().unwrap();
            table.seq += 1;
            let seq = table.seq;
            table.entries.insert(
                id,
                Entry {
                    owner,
                    parked: Some(handle),
                    ended: watch::channel(None).0,
                    seq,
                },
            );
        }
        self.sessions.expire_parked_later(id);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            let mut table = self.sessions.table.lock().unwrap();
            table.unreserve(&owner);
            table.unattached -= 1;
        }
    }
}
