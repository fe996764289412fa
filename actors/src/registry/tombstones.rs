//! Ended sessions, remembered so late requests get "session gone" and a
//! second close gets the first close's receipt.
//!
//! Bounded in count and age. A tombstone whose release is still under way is
//! never forgotten: someone may be waiting on it, and forgetting it early
//! would let a late message look like an unknown id.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::events::ReleaseReceipt;
use crate::ids::{Owner, SessionId};
use crate::lifecycle::EndReason;
use crate::session::SessionShared;

#[derive(Debug)]
pub(crate) struct Tombstone {
    pub(crate) owner: Owner,
    pub(crate) reason: EndReason,
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) receipt: Option<ReleaseReceipt>,
    pub(crate) waiters: Vec<oneshot::Sender<ReleaseReceipt>>,
}

#[derive(Debug)]
pub(crate) struct Tombstones {
    by_id: HashMap<SessionId, Tombstone>,
    order: VecDeque<(SessionId, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl Tombstones {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Tombstones {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    pub(crate) fn contains(&self, id: &SessionId) -> bool {
        self.by_id.contains_key(id)
    }

    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut Tombstone> {
        self.by_id.get_mut(id)
    }

    pub(crate) fn insert(&mut self, id: SessionId, tombstone: Tombstone, now: Instant) {
        self.by_id.insert(id, tombstone);
        self.order.push_back((id, now));
        self.forget_old(now);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.order.front() {
            let over = self.by_id.len() > self.capacity || now.duration_since(at) > self.ttl;
            let released = self.by_id.get(&id).is_none_or(|t| t.receipt.is_some());
            if !(over && released) {
                break;
            }
            self.order.pop_front();
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tombstone(released: bool) -> Tombstone {
        let id = SessionId::random();
        Tombstone {
            owner: Owner::new("o"),
            reason: EndReason::Closed,
            shared: Arc::new(SessionShared::new()),
            receipt: released.then(|| ReleaseReceipt {
                id,
                reason: EndReason::Closed,
                buffers: 0,
                bytes: 0,
                ended_at: Instant::now(),
                released_at: Instant::now(),
                paced_for: Duration::ZERO,
                error: None,
            }),
            waiters: Vec::new(),
        }
    }

    #[test]
    fn oldest_released_tombstones_are_forgotten_past_capacity() {
        let mut stones = Tombstones::new(2, Duration::from_secs(3600));
        let now = Instant::now();
        let ids: Vec<_> = (0..3).map(|_| SessionId::random()).collect();
        for id in &ids {
            stones.insert(*id, tombstone(true), now);
        }
        assert_eq!(stones.len(), 2);
        assert!(!stones.contains(&ids[0]));
        assert!(stones.contains(&ids[2]));
    }

    #[test]
    fn a_tombstone_still_releasing_is_never_forgotten() {
        let mut stones = Tombstones::new(1, Duration::from_secs(1));
        let now = Instant::now();
        let pending = SessionId::random();
        stones.insert(pending, tombstone(false), now);
        stones.insert(
            SessionId::random(),
            tombstone(true),
            now + Duration::from_secs(10),
        );
        assert!(stones.contains(&pending));
    }

    #[test]
    fn tombstones_expire_with_age() {
        let mut stones = Tombstones::new(100, Duration::from_secs(1));
        let now = Instant::now();
        let old = SessionId::random();
        stones.insert(old, tombstone(true), now);
        stones.insert(
            SessionId::random(),
            tombstone(true),
            now + Duration::from_secs(5),
        );
        assert!(!stones.contains(&old));
    }
}
